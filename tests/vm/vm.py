"""Boot Debian's stock kernel under QEMU (TCG) with virtme-ng and run a script inside it.

The host kernel of the CI/dev machines has no ESP support, so everything that needs real SAs runs in a
guest set up by ``scripts/vm-setup.sh`` (kernel + modules unpacked under ``$MONITOR_VM_CACHE``, default
``/opt/monitor-vm``, and a virtme-ng venv beside it).

Tests under tests/vm normally just use the session fixtures ``vm_run`` / ``vm_ok`` from conftest.py
(one boot for the whole session). Direct use (tests/ is on sys.path under pytest; else ``tests.vm.vm``)::

    from vm.vm import PROJECT_DIR, SCENARIO, run_in_vm, vm_available

    reason = vm_available()
    if reason:
        pytest.skip(reason)          # vm_available() raises instead when env CI is set
    proc = run_in_vm(SCENARIO, tmp_path, timeout=480, args=[tmp_path, PROJECT_DIR, sys.executable])
    assert (tmp_path / "done").read_text().strip() == "ok"

The guest sees the host's root filesystem read-only (so the project and its venv are usable there) and
``rwdir`` read-write at the same path; results must be written into ``rwdir``.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJECT_DIR = HERE.parent.parent
SCENARIO = HERE / "scenario.sh"
SUITE = HERE / "suite.sh"
LIB = HERE / "lib.sh"
SCENARIOS_DIR = HERE / "scenarios"


def scenario_names() -> list[str]:
    """Scenarios one boot runs: ``main`` (scenario.sh) then tests/vm/scenarios/*.sh, or env MONITOR_VM_ONLY."""
    only = os.environ.get("MONITOR_VM_ONLY", "").strip()
    if only:
        return [n.strip() for n in only.split(",") if n.strip()]
    return ["main", *sorted(p.stem for p in SCENARIOS_DIR.glob("*.sh"))]
SETUP_SCRIPT = PROJECT_DIR / "scripts" / "vm-setup.sh"
HIDDEN_IN_GUEST = ("/var/tmp", "/var/cache", "/var/log")


class VMHarnessMissing(RuntimeError):
    """The harness is not set up, and we are in CI where that is a failure, not a skip."""


def cache_dir() -> Path:
    return Path(os.environ.get("MONITOR_VM_CACHE", "/opt/monitor-vm"))


def vng_path() -> Path:
    return cache_dir() / "vng" / "bin" / "vng"


def kernel_path() -> Path | None:
    """The kernel image that vm-setup.sh unpacked (env MONITOR_VM_KERNEL overrides)."""
    env = os.environ.get("MONITOR_VM_KERNEL")
    if env:
        return Path(env)
    marker = cache_dir() / "kernel"
    if marker.is_file():
        p = Path(marker.read_text().strip())
        if p.is_file():
            return p
    found = sorted((cache_dir() / "kroot" / "boot").glob("vmlinuz-*"))
    return found[-1] if found else None


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "VM tests need root (network namespaces and qemu as in CI)"
    if not shutil.which("qemu-system-x86_64"):
        return "qemu-system-x86_64 not installed (run scripts/vm-setup.sh as root)"
    if not vng_path().is_file():
        return f"virtme-ng not found at {vng_path()} (run scripts/vm-setup.sh as root)"
    k = kernel_path()
    if k is None or not k.is_file():
        return f"no kernel under {cache_dir()}/kroot (run scripts/vm-setup.sh as root)"
    ver = k.name.removeprefix("vmlinuz-")
    if not (k.parent.parent / "lib" / "modules" / ver / "modules.dep").is_file():
        return f"modules for {ver} not depmod'ed (run scripts/vm-setup.sh as root)"
    for tool in ("/usr/lib/ipsec/charon", "/usr/sbin/swanctl", "/usr/bin/tcpdump"):
        if not Path(tool).exists():
            return f"{tool} not installed (run scripts/vm-setup.sh as root)"
    if str(cache_dir()).startswith(HIDDEN_IN_GUEST):
        return f"MONITOR_VM_CACHE={cache_dir()} is an empty tmpfs inside the guest; use /opt/..."
    return None


def vm_available() -> str | None:
    """None when VM tests can run, else the reason to skip.

    When env CI is set, a missing harness is an error (CI always runs scripts/vm-setup.sh first, so a
    skip there would hide a broken setup): this raises VMHarnessMissing instead of returning a reason.
    """
    reason = _missing()
    if reason and os.environ.get("CI"):
        raise VMHarnessMissing(f"VM harness missing in CI: {reason}")
    return reason


def vng_command(
    script: Path,
    rwdir: Path,
    *,
    args: Sequence[str | os.PathLike[str]] = (),
    memory: str = "2G",
    cpus: int = 2,
) -> list[str]:
    kernel = kernel_path()
    if kernel is None:
        raise VMHarnessMissing("no kernel image; run scripts/vm-setup.sh")
    inner = " ".join(shlex.quote(str(a)) for a in ("bash", script, *args))
    return [
        str(vng_path()),
        "--disable-kvm",
        "--verbose",
        "--memory",
        memory,
        "--cpus",
        str(cpus),
        "--rwdir",
        str(rwdir),
        "--run",
        str(kernel),
        "--exec",
        inner,
    ]


def run_in_vm(
    script: Path,
    rwdir: Path,
    timeout: float,
    memory: str = "2G",
    *,
    args: Sequence[str | os.PathLike[str]] = (),
    cpus: int = 2,
) -> subprocess.CompletedProcess[str]:
    """Boot the harness kernel and run ``bash script *args`` inside it; return when the guest powers off.

    The console (kernel messages + the script's stdout/stderr, merged) is returned as ``stdout`` and
    saved to ``rwdir/console.log``. ``returncode`` is vng's, which is not reliably the script's: have the
    script write its verdict into ``rwdir`` (scenario.sh writes ``rwdir/done``). On timeout the VM is
    killed, console.log is still written, and subprocess.TimeoutExpired is raised.
    """
    rwdir = Path(rwdir).resolve()
    rwdir.mkdir(parents=True, exist_ok=True)
    if str(rwdir).startswith(HIDDEN_IN_GUEST):
        raise ValueError(f"rwdir {rwdir} would be hidden inside the guest")
    cmd = vng_command(Path(script).resolve(), rwdir, args=args, memory=memory, cpus=cpus)
    env = dict(os.environ)
    env["PATH"] = f"{vng_path().parent}:{env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
    console = rwdir / "console.log"
    # own session so a timeout can kill qemu and every helper vng started, and nothing else
    with subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        env=env,
        cwd=str(rwdir),
        start_new_session=True,
    ) as proc:
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            out, _ = proc.communicate()
            console.write_text(out + f"\n[run_in_vm: killed after {timeout:.0f} s timeout]\n")
            raise subprocess.TimeoutExpired(cmd, timeout, output=out) from None
    console.write_text(out)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, "")
