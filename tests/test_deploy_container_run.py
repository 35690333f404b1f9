"""deploy/container/Containerfile really built and run (issue 16 item 4): podman from Debian's packages, on a
base image made from Debian's packages by mmdebstrap (scripts/container-setup.sh), nothing pulled from an
image registry.

The image is built in a private podman store under the test's tmp dir, then started the way the
Containerfile's header says (``--cap-drop ALL --cap-add NET_ADMIN``), in a throwaway netns instead of the host
network (``--network ns:/run/netns/NAME``) that holds a policy pair for reqid 7: the containerised monitor
serves, sees that tunnel (``down``, ``no_sa``: the host kernel has no ESP), and runs as uid 10001 holding
exactly CAP_NET_ADMIN. Without NET_ADMIN the same image refuses to start (the file capability on its
python cannot be granted), which is what the Containerfile promises.

Engine settings for this machine kind, passed through ``CONTAINERS_CONF`` (the machine's own configuration is
left alone): ``runc``, because crun 1.8 refuses the host's hybrid cgroup v1 + v2 layout ("cgroups in hybrid
mode not supported"); explicit ``nofile``/``nproc`` ulimits, because podman's root default (nofile 1048576)
is above the hard limit here and root lacks CAP_SYS_RESOURCE (runc: "error setting rlimit type 7: operation
not permitted"). The build stage's pip reaches PyPI with the host's CA bundle mounted for the build only
(``podman build -v``, not committed to the image).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.external, pytest.mark.hostkernel]

ROOT = Path(__file__).resolve().parent.parent
CONTAINERFILE = ROOT / "deploy" / "container" / "Containerfile"
BASE = Path(os.environ.get("MONITOR_VM_CACHE", "/opt/monitor-vm")) / "container" / "base-bookworm.tar"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
CAP_NET_ADMIN = 12
IMAGE = "localhost/ipsec-monitor:test"


class Podman:
    """podman with a private store and this machine kind's engine settings."""

    def __init__(self, d: Path) -> None:
        conf = d / "containers.conf"
        conf.write_text('[containers]\ndefault_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]\n'
                        '[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\n')
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf)}
        self.store = ["--root", str(d / "root"), "--runroot", str(d / "run")]

    def __call__(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(["podman", *self.store, *args], capture_output=True, text=True, env=self.env,
                           timeout=timeout, check=False)
        if check:
            assert r.returncode == 0, f"podman {' '.join(args)}: {r.stdout[-2000:]}{r.stderr[-3000:]}"
        return r


@pytest.fixture
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    """A private podman store (removed at teardown) holding the Debian base image."""
    if os.geteuid() != 0:
        pytest.skip("needs root (podman with host netns access)")
    for tool in ("podman", "runc"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (bash scripts/container-setup.sh)")
    if not BASE.is_file():
        pytest.skip(f"no Debian base image {BASE} (bash scripts/container-setup.sh)")
    d = tmp_path_factory.mktemp("podman")
    p = Podman(d)
    p("import", str(BASE), "localhost/ipsec-monitor-base:bookworm", timeout=300)
    yield p
    p("rm", "-a", "-f", check=False)
    p("rmi", "-a", "-f", check=False)
    p("system", "reset", "-f", check=False, timeout=300)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def netns_with_policy() -> Iterator[str]:
    """A netns with an in/out policy pair for reqid 7 (192.0.2.1 <-> 198.51.100.1), loopback up."""
    ns = f"mon-ct-{os.getpid()}"
    try:
        for args in (["netns", "add", ns], ["-n", ns, "link", "set", "lo", "up"],
                     ["-n", ns, "xfrm", "policy", "add", "src", "203.0.113.0/25", "dst", "203.0.113.128/25",
                      "dir", "out", "tmpl", "src", "192.0.2.1", "dst", "198.51.100.1", "proto", "esp", "reqid", "7",
                      "mode", "tunnel"],
                     ["-n", ns, "xfrm", "policy", "add", "src", "203.0.113.128/25", "dst", "203.0.113.0/25",
                      "dir", "in", "tmpl", "src", "198.51.100.1", "dst", "192.0.2.1", "proto", "esp", "reqid", "7",
                      "mode", "tunnel"]):
            subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False, timeout=30)


def _fetch(ns: str, url: str) -> tuple[int, str]:
    """GET ``url`` from inside ``ns`` (the containerised monitor listens on the netns's loopback)."""
    code = ("import sys, urllib.request as u, urllib.error as e\n"
            "try:\n r = u.urlopen(sys.argv[1], timeout=3); print(r.status); print(r.read().decode())\n"
            "except e.HTTPError as x:\n print(x.code); print(x.read().decode())\n"
            "except OSError as x:\n print(0); print(x)\n")
    r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code, url],
                       capture_output=True, text=True, timeout=30, check=False)
    status, _, body = r.stdout.partition("\n")
    return int(status or 0), body


@pytest.mark.timeout(900)
def test_image_builds_from_debian_packages_and_runs_with_only_net_admin(
        podman: Podman, netns_with_policy: str, tmp_path: Path) -> None:
    """Build on the mmdebstrap base; run with NET_ADMIN only in a netns: serves, sees reqid 7, uid 10001 with
    exactly CAP_NET_ADMIN; without NET_ADMIN it does not start."""
    ns = netns_with_policy
    pip_conf = tmp_path / "pip.conf"
    pip_conf.write_text(f"[global]\ncert = {HOST_CA}\n")
    mounts = ["-v", f"{HOST_CA}:{HOST_CA}:ro", "-v", f"{pip_conf}:/etc/pip.conf:ro"] if HOST_CA.is_file() else []
    t0 = time.monotonic()
    podman("build", "--network", "host", "--pull=never", *mounts,
           "--build-arg", "PYTHON_IMAGE=localhost/ipsec-monitor-base:bookworm",
           "-f", str(CONTAINERFILE), "-t", IMAGE, str(ROOT), timeout=600)
    build_s = time.monotonic() - t0
    (cfg,) = json.loads(podman("image", "inspect", IMAGE).stdout)
    assert cfg["Config"]["User"] == "10001:10001"
    assert cfg["Config"]["Entrypoint"] == ["/opt/ipsec-monitor/bin/python3", "-m", "monitor"]
    # the build-time mounts left nothing in the image (an empty mount point at most)
    leak = podman("run", "--rm", "--network", "none", "--entrypoint", "/bin/sh", IMAGE, "-c",
                  "test -s /etc/pip.conf && echo leaked || echo clean")
    assert leak.stdout.strip() == "clean"

    cid = podman("run", "-d", "--network", f"ns:/run/netns/{ns}", "--cap-drop", "ALL", "--cap-add", "NET_ADMIN",
                 IMAGE, "serve", "--interval", "1", "--no-vici").stdout.strip()
    try:
        deadline = time.monotonic() + 60
        seen: tuple[int, str] = (0, "")
        while time.monotonic() < deadline:
            seen = _fetch(ns, "http://127.0.0.1:8787/api/v1/tunnels")
            if seen[0] == 200 and json.loads(seen[1])["tunnels"]:
                break
            time.sleep(0.3)  # polling a container's server; the deadline bounds the wait
        logs = podman("logs", cid, check=False)
        assert seen[0] == 200, (seen, logs.stdout, logs.stderr)
        (t,) = json.loads(seen[1])["tunnels"]
        assert (t["reqid"], t["local"], t["remote"], t["state"]) == (7, "192.0.2.1", "198.51.100.1", "down")
        assert [r["code"] for r in t["reasons"]] == ["no_sa"]
        assert _fetch(ns, "http://127.0.0.1:8787/healthz")[0] == 200
        pid = podman("inspect", cid, "--format", "{{.State.Pid}}").stdout.strip()
        status = Path(f"/proc/{pid}/status").read_text()
        fields = {k: re.search(rf"^{k}:\s+(\S+)", status, re.M) for k in ("Uid", "CapEff", "CapBnd", "NoNewPrivs")}
        got = {k: m.group(1) if m else None for k, m in fields.items()}
        assert got == {"Uid": "10001", "CapEff": f"{1 << CAP_NET_ADMIN:016x}", "CapBnd": f"{1 << CAP_NET_ADMIN:016x}",
                       "NoNewPrivs": "0"}, got
    finally:
        podman("rm", "-f", cid, check=False)
    # no NET_ADMIN for the container: the kernel refuses to exec the capability-carrying python
    refused = podman("run", "--rm", "--network", f"ns:/run/netns/{ns}", "--cap-drop", "ALL", IMAGE, "check",
                     check=False, timeout=120)
    assert refused.returncode != 0
    assert "exec /opt/ipsec-monitor/bin/python3: operation not permitted" in refused.stderr, refused.stderr
    print(f"image build took {build_s:.0f} s")
