"""Session fixture: boot the VM once and run the whole strongSwan scenario; tests read its artifacts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vm.vm import PROJECT_DIR, SCENARIO, run_in_vm, vm_available

# boot (~12 s) + scenario (~70 s) under TCG on this project's machines; generous for slower CI hosts
VM_TIMEOUT = float(os.environ.get("MONITOR_VM_TIMEOUT", "600"))


def _tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError as e:
        return f"<{path.name}: {e}>"


@pytest.fixture(scope="session")
def vm_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder with every artifact of one scenario run (see tests/vm/README.md).

    Skips when the harness is not set up, except in CI (env CI set), where that is an error.
    Set MONITOR_VM_OUT to keep the artifacts in a known folder (it is emptied first).
    """
    reuse = os.environ.get("MONITOR_VM_REUSE")
    if reuse:  # judge the artifacts of an earlier run again (development, or a CI run's kept folder)
        rw = Path(reuse).resolve()
        if not (rw / "scenario.log").is_file():
            pytest.fail(f"MONITOR_VM_REUSE={reuse}: no scenario.log there")
        print(f"VM artifacts reused from {rw}")
        return rw
    reason = vm_available()
    if reason:
        pytest.skip(reason)
    # The guest sees the checkout read-only: stale or missing bytecode would be compiled in every guest
    # Python start (seconds each under TCG). Compile it here, on the host, in well under a second.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(PROJECT_DIR / "monitor")],
                   check=False, capture_output=True)
    out = os.environ.get("MONITOR_VM_OUT")
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
        pytest.fail(
            f"VM did not finish within {VM_TIMEOUT:.0f} s; artifacts in {rw}\n"
            f"--- scenario.log\n{_tail(rw / 'scenario.log')}\n--- console\n{_tail(rw / 'console.log')}"
        )
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
