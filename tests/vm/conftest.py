"""Session fixture: boot the VM once and run the whole strongSwan scenario; tests read its artifacts."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from monitor.errors import CaptureFormatError
from monitor.wire.pcap import read_pcap, scrub_capture
from vm.keys import hand_keys, key_patterns
from vm.references import redact_keys
from vm.vm import LIB, PROJECT_DIR, SCENARIO, SCENARIOS_DIR, SUITE, run_in_vm, scenario_names, vm_available

# One boot runs every scenario in turn (tests/vm/suite.sh). main: boot (~12 s) + scenario (~70-150 s) under TCG;
# each extra scenario is bounded in the guest by MONITOR_VM_SCENARIO_TIMEOUT (default 480 s).
SCENARIO_TIMEOUT = float(os.environ.get("MONITOR_VM_SCENARIO_TIMEOUT", "480"))
def _own_bound(name: str) -> float:
    """A scenario's "# vm-timeout: SECONDS" line (tests/vm/suite.sh), if larger than the default bound."""
    m = re.search(r"^# vm-timeout: (\d+)$", (SCENARIOS_DIR / f"{name}.sh").read_text(), re.M)
    return max(SCENARIO_TIMEOUT, float(m[1])) if m else SCENARIO_TIMEOUT


VM_TIMEOUT = float(os.environ.get("MONITOR_VM_TIMEOUT", "0")) or 600 + sum(
    _own_bound(n) + 20 for n in scenario_names() if n != "main"
)


def _tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError as e:
        return f"<{path.name}: {e}>"


KEYED_TEXT = ("xfrm-state-a.txt", "after-peer-death-a.txt")
# what our own code wrote in the guest: none of it may contain a key byte
MONITOR_OUTPUTS = ("monitor-a.pcap", "monitor-a.log", "serve-a.log", "prober-tunnels.json", "prober-events.json")
KEY_CHECK = "keys-check.txt"


def _run_keys(rw: Path) -> list[bytes]:
    """Every key the run showed: ``ip -s xfrm state`` text (hex) and every SA message of the raw nlmon
    capture (walked by hand, ``vm.keys.hand_keys``), i.e. the keys of each SA created while it ran."""
    keys: set[bytes] = set()
    for name in KEYED_TEXT:
        f = rw / name
        if f.exists():
            keys.update(bytes.fromhex(h) for h in re.findall(r"0x([0-9a-f]{32,})", f.read_text(errors="replace")))
    raw = rw / "nlmon-a.pcap"
    if raw.exists():
        try:
            for rec in read_pcap(raw):
                keys.update(hand_keys(rec.data))
        except CaptureFormatError:
            pass  # a truncated capture: the records before the cut were read
    return sorted(k for k in keys if len(k) >= 16 and any(k))  # zeroed (scrubbed) fields are no keys


def _check_keys(rw: Path) -> None:
    """Look for every key of the run (``_run_keys``) in every other file of the folder: the monitor's own
    outputs, raw, as hex in either case and as base64 (``vm.keys.key_patterns``).

    Writes only counts and file names to KEY_CHECK (never a key). Skipped when the keys were already
    redacted (a reused folder keeps its earlier result).
    """
    keys = _run_keys(rw)
    if not keys:
        return
    patterns = [key_patterns(k) for k in keys]
    sources = {*KEYED_TEXT, "nlmon-a.pcap", KEY_CHECK}
    present = sorted(f.name for f in rw.iterdir() if f.is_file() and f.name not in sources)
    found = []
    for name in present:
        data = (rw / name).read_bytes()
        hits = sum(1 for pats in patterns if any(p in data for p in pats))
        if hits:
            found.append(f"{name}: {hits} of {len(keys)} keys")
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


def _sanitize_scenario(rw: Path) -> None:
    """An extra scenario's folder: its own key check first (``scenarios/NAME.py: before_sanitize(rw)``), then
    every ``nlmon*.pcap`` scrubbed (deleted if that fails) and every ``*.txt`` key-redacted."""
    hook = SCENARIOS_DIR / f"{rw.name}.py"
    if hook.exists():
        spec = importlib.util.spec_from_file_location(f"vm_scenario_{rw.name}", hook)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if hasattr(module, "before_sanitize"):
            module.before_sanitize(rw)
    for raw in rw.glob("nlmon*.pcap"):
        tmp = raw.with_suffix(".scrubbing")
        try:
            scrub_capture(raw, tmp)
            tmp.replace(raw)
        except (CaptureFormatError, OSError) as exc:
            raw.unlink()
            tmp.unlink(missing_ok=True)
            (rw / f"{raw.stem}.scrub-error.txt").write_text(f"{raw.name} deleted, scrubbing failed: {exc}\n")
    for f in rw.glob("*.txt"):
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
        if not (rw / "scenario.log").is_file() and not (rw / "suite.log").is_file():
            pytest.fail(f"MONITOR_VM_REUSE={reuse}: no scenario.log or suite.log there")
        _sanitize_all(rw, scenario_names())
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
    # bash reads a script as it runs: run copies, so editing a scenario meanwhile cannot break this run
    names = scenario_names()
    shutil.copyfile(SUITE, rw / "suite.sh")
    shutil.copyfile(SCENARIO, rw / "scenario.sh")
    for name in names:
        if name != "main":
            folder = rw / name
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            shutil.copyfile(SCENARIOS_DIR / f"{name}.sh", folder / "scenario.sh")
            shutil.copyfile(LIB, folder / "lib.sh")
    t0 = time.monotonic()
    env_args = [rw, PROJECT_DIR, sys.executable, *names]
    try:
        run_in_vm(rw / "suite.sh", rw, timeout=VM_TIMEOUT, args=env_args)
    except subprocess.TimeoutExpired:
        _sanitize_all(rw, names)
        pytest.fail(
            f"VM did not finish within {VM_TIMEOUT:.0f} s; artifacts in {rw}\n"
            f"--- scenario.log\n{_tail(rw / 'scenario.log')}\n--- console\n{_tail(rw / 'console.log')}"
        )
    _sanitize_all(rw, names)
    print(f"VM run took {time.monotonic() - t0:.1f} s (boot + {', '.join(names)}); artifacts in {rw}")
    return rw


def _sanitize_all(rw: Path, names: list[str]) -> None:
    if "main" in names:
        _sanitize(rw)
    for name in names:
        if name != "main" and (rw / name).is_dir():
            _sanitize_scenario(rw / name)


@pytest.fixture(scope="session")
def vm_scenario(vm_run: Path) -> Callable[[str], Path]:
    """``vm_scenario("NAME")``: the folder of tests/vm/scenarios/NAME.sh's run; fails unless it said "ok".

    A scenario left out by MONITOR_VM_ONLY is skipped (never in CI, where every scenario runs).
    """

    def get(name: str) -> Path:
        if name not in scenario_names():
            pytest.skip(f"VM scenario {name} not selected (MONITOR_VM_ONLY)")
        rw = vm_run / name
        done = rw / "done"
        verdict = done.read_text().strip() if done.exists() else "<no done file: the scenario never ran>"
        if verdict != "ok":
            pytest.fail(
                f"VM scenario {name} failed: {verdict}; artifacts in {rw}\n"
                f"--- scenario.log\n{_tail(rw / 'scenario.log')}\n"
                f"--- suite.log\n{_tail(vm_run / 'suite.log')}\n"
                f"--- console\n{_tail(vm_run / 'console.log', 30)}"
            )
        return rw

    return get


@pytest.fixture(scope="session")
def vm_ok(vm_run: Path) -> Path:
    """Like vm_run, but fails unless the main scenario finished with "ok"."""
    if "main" not in scenario_names():
        pytest.skip("VM scenario main not selected (MONITOR_VM_ONLY)")
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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Whichever VM test runs first boots the VM for all selected scenarios: give every VM test the whole boot's
    bound (its module's own timeout mark is only a floor for re-judging)."""
    for item in items:
        if item.get_closest_marker("vm") is not None:
            item.add_marker(pytest.mark.timeout(VM_TIMEOUT + 300))
