"""Session fixture: boot the VM once and run the whole strongSwan scenario; tests read its artifacts."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from monitor.errors import CaptureFormatError
from monitor.wire.pcap import scrub_capture
from vm.references import redact_keys
from vm.vm import PROJECT_DIR, SCENARIO, run_in_vm, vm_available

# boot (~12 s) + scenario (~70 s) under TCG on this project's machines; generous for slower CI hosts
VM_TIMEOUT = float(os.environ.get("MONITOR_VM_TIMEOUT", "600"))


def _tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError as e:
        return f"<{path.name}: {e}>"


KEYED_TEXT = ("xfrm-state-a.txt", "after-peer-death-a.txt")
# what our own code wrote in the guest: none of it may contain a key byte
MONITOR_OUTPUTS = ("monitor-a.pcap", "monitor-a.log", "serve-a.log", "prober-tunnels.json", "prober-events.json")
KEY_CHECK = "keys-check.txt"


def _check_keys(rw: Path) -> None:
    """Look for the dump point SAs' keys (from ``ip -s xfrm state``) in the monitor's own outputs.

    Writes only counts and file names to KEY_CHECK (never a key). Skipped when the keys were already
    redacted (a reused folder keeps its earlier result).
    """
    text = (rw / "xfrm-state-a.txt").read_text(errors="replace") if (rw / "xfrm-state-a.txt").exists() else ""
    keys = [bytes.fromhex(h) for h in re.findall(r"0x([0-9a-f]{32,})", text)]
    if not keys:
        return
    found = []
    for name in MONITOR_OUTPUTS:
        f = rw / name
        if f.exists():
            data = f.read_bytes()
            hits = sum(1 for k in keys if k in data or k.hex().encode() in data.lower())
            if hits:
                found.append(f"{name}: {hits} of {len(keys)} keys")
    present = [n for n in MONITOR_OUTPUTS if (rw / n).exists()]
    (rw / KEY_CHECK).write_text(f"keys {len(keys)}\nchecked {' '.join(present)}\nfound {len(found)}\n"
                                + "".join(f"  {line}\n" for line in found))


def _sanitize(rw: Path) -> None:
    """Remove the SA keys from the artifacts, so the folder can be kept and shared (CI uploads it).

    ``tcpdump -i nlmon0`` and ``ip -s xfrm state`` show the keys; the tests need neither (the decoder and
    the parsers never read key bytes). nlmon-a.pcap keeps its NETLINK_XFRM records, key-scrubbed.
    """
    _check_keys(rw)
    raw = rw / "nlmon-a.pcap"
    if raw.exists():
        tmp = rw / "nlmon-a.pcap.scrubbing"
        try:
            scrub_capture(raw, tmp)
            tmp.replace(raw)
        except (CaptureFormatError, OSError) as exc:  # never keep an unscrubbed capture
            raw.unlink()
            tmp.unlink(missing_ok=True)
            (rw / "nlmon-a.scrub-error.txt").write_text(f"nlmon-a.pcap deleted, scrubbing failed: {exc}\n")
    for name in KEYED_TEXT:
        f = rw / name
        if f.exists():
            f.write_text(redact_keys(f.read_text(errors="replace")))


@pytest.fixture(scope="session")
def vm_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder with every artifact of one scenario run (see tests/vm/README.md).

    Skips when the harness is not set up, except in CI (env CI set), where that is an error.
    Set MONITOR_VM_OUT to keep the artifacts in a known folder (it is emptied first); in CI the default is
    artifacts/vm. Key material is removed from the artifacts right after the run (``_sanitize``).
    """
    reuse = os.environ.get("MONITOR_VM_REUSE")
    if reuse:  # judge the artifacts of an earlier run again (development, or a CI run's kept folder)
        rw = Path(reuse).resolve()
        if not (rw / "scenario.log").is_file():
            pytest.fail(f"MONITOR_VM_REUSE={reuse}: no scenario.log there")
        _sanitize(rw)
        print(f"VM artifacts reused from {rw}")
        return rw
    reason = vm_available()
    if reason:
        pytest.skip(reason)
    # The guest sees the checkout read-only: stale or missing bytecode would be compiled in every guest
    # Python start (seconds each under TCG). Compile it here, on the host, in well under a second.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(PROJECT_DIR / "monitor")],
                   check=False, capture_output=True)
    out = os.environ.get("MONITOR_VM_OUT") or (str(PROJECT_DIR / "artifacts" / "vm") if os.environ.get("CI") else "")
    if out:
        rw = Path(out).resolve()
        rw.mkdir(parents=True, exist_ok=True)
        for f in rw.iterdir():
            if f.is_file():
                f.unlink()
    else:
        rw = tmp_path_factory.mktemp("vm")
    print(f"VM artifacts in {rw}")
    # bash reads a script as it runs: run a copy, so editing scenario.sh meanwhile cannot break this run
    script = rw / "scenario.sh"
    shutil.copyfile(SCENARIO, script)
    t0 = time.monotonic()
    try:
        run_in_vm(script, rw, timeout=VM_TIMEOUT, args=[rw, PROJECT_DIR, sys.executable])
    except subprocess.TimeoutExpired:
        _sanitize(rw)
        pytest.fail(
            f"VM did not finish within {VM_TIMEOUT:.0f} s; artifacts in {rw}\n"
            f"--- scenario.log\n{_tail(rw / 'scenario.log')}\n--- console\n{_tail(rw / 'console.log')}"
        )
    _sanitize(rw)
    print(f"VM run took {time.monotonic() - t0:.1f} s (boot + scenario); artifacts in {rw}")
    return rw


@pytest.fixture(scope="session")
def vm_ok(vm_run: Path) -> Path:
    """Like vm_run, but fails unless the scenario finished with "ok"."""
    done = vm_run / "done"
    verdict = done.read_text().strip() if done.exists() else "<no done file: the guest script never finished>"
    if verdict != "ok":
        pytest.fail(
            f"VM scenario failed: {verdict}; artifacts in {vm_run}\n"
            f"--- scenario.log\n{_tail(vm_run / 'scenario.log')}\n"
            f"--- charon-a.log\n{_tail(vm_run / 'charon-a.log', 20)}\n"
            f"--- console\n{_tail(vm_run / 'console.log', 30)}"
        )
    return vm_run
