"""Session fixture: boot the VM once and run the whole strongSwan scenario; tests read its artifacts."""

from __future__ import annotations

import os
import subprocess
import sys
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
    reason = vm_available()
    if reason:
        pytest.skip(reason)
    out = os.environ.get("MONITOR_VM_OUT")
    if out:
        rw = Path(out).resolve()
        rw.mkdir(parents=True, exist_ok=True)
        for f in rw.iterdir():
            if f.is_file():
                f.unlink()
    else:
        rw = tmp_path_factory.mktemp("vm")
    try:
        run_in_vm(SCENARIO, rw, timeout=VM_TIMEOUT, args=[rw, PROJECT_DIR, sys.executable])
    except subprocess.TimeoutExpired:
        pytest.fail(
            f"VM did not finish within {VM_TIMEOUT:.0f} s; artifacts in {rw}\n"
            f"--- scenario.log\n{_tail(rw / 'scenario.log')}\n--- console\n{_tail(rw / 'console.log')}"
        )
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
