"""The monitor as the systemd unit runs it: a non-root user whose ONLY capability is CAP_NET_ADMIN.

A throwaway netns gets a pair of XFRM policies (reqid 7, documentation addresses; the host kernel has no ESP,
so no SA can exist and the tunnel is configured-but-down). The monitor is started inside that netns through
``ip netns exec NS setpriv --reuid=65534 ... --bounding-set=-all,+net_admin`` (what systemd's
``NetworkNamespacePath=`` + ``User=`` + ``AmbientCapabilities=CAP_NET_ADMIN`` + ``CapabilityBoundingSet=``
amount to, minus the seccomp/mount sandbox, which needs systemd as PID 1). With the capability it sees the
tunnel; without it, it fails with the documented message naming CAP_NET_ADMIN.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.hostkernel,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv"),
]

MONITOR = str(Path(sys.executable).parent / "monitor")
NOBODY = ["--reuid=65534", "--regid=65534", "--clear-groups"]
ONLY_NET_ADMIN = [*NOBODY, "--inh-caps=-all,+net_admin", "--ambient-caps=-all,+net_admin",
                  "--bounding-set=-all,+net_admin"]
NO_CAPS = [*NOBODY, "--inh-caps=-all", "--bounding-set=-all"]
CAP_NET_ADMIN = 12


def sh(*args: str) -> None:
    """Run a command; fail with its stderr if it fails."""
    r = subprocess.run(args, capture_output=True, text=True, check=False)
    assert r.returncode == 0, f"{' '.join(args)}: {r.stderr}"


@pytest.fixture
def netns_with_policy() -> Iterator[str]:
    """A netns with an in/out policy pair for reqid 7 (192.0.2.1 <-> 198.51.100.1), loopback up."""
    ns = f"xmcap-{os.getpid()}"
    try:
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", ns, "xfrm", "policy", "add", "src", "10.10.1.0/24", "dst", "10.20.1.0/24", "dir", "out",
           "tmpl", "src", "192.0.2.1", "dst", "198.51.100.1", "proto", "esp", "reqid", "7", "mode", "tunnel")
        sh("ip", "-n", ns, "xfrm", "policy", "add", "src", "10.20.1.0/24", "dst", "10.10.1.0/24", "dir", "in",
           "tmpl", "src", "198.51.100.1", "dst", "192.0.2.1", "proto", "esp", "reqid", "7", "mode", "tunnel")
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def as_user(ns: str, caps: list[str], *argv: str) -> list[str]:
    """The command line: enter ``ns`` as root, drop to uid 65534 with ``caps``, run ``monitor argv``."""
    return ["ip", "netns", "exec", ns, "setpriv", *caps, MONITOR, *argv]


def test_check_with_only_cap_net_admin_reports_the_tunnel(netns_with_policy: str) -> None:
    """uid 65534 + CAP_NET_ADMIN only: `monitor check --json` exits 2 (CRITICAL) reporting the reqid-7 tunnel
    as down with reason no_sa (policies, no SA), exactly what the kernel holds."""
    r = subprocess.run(as_user(netns_with_policy, ONLY_NET_ADMIN, "check", "--json", "--timeout", "10"),
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2, (r.stdout, r.stderr)
    doc = json.loads(r.stdout)
    [t] = doc["tunnels"]
    assert (t["reqid"], t["local"], t["remote"], t["state"]) == (7, "192.0.2.1", "198.51.100.1", "down")
    assert [x["code"] for x in t["reasons"]] == ["no_sa"]


def test_check_without_the_capability_fails_with_the_documented_message(netns_with_policy: str) -> None:
    """uid 65534 with no capability: exit 3 (UNKNOWN), one line naming CAP_NET_ADMIN and how to grant it,
    and no Python traceback."""
    r = subprocess.run(as_user(netns_with_policy, NO_CAPS, "check", "--timeout", "10"),
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 3, (r.stdout, r.stderr)
    assert r.stdout.startswith("IPSEC UNKNOWN - ")
    assert "CAP_NET_ADMIN" in r.stdout
    assert "AmbientCapabilities=CAP_NET_ADMIN" in r.stdout
    assert "Traceback" not in r.stderr


def _fetch(ns: str, url: str) -> tuple[int, str]:
    """GET ``url`` from inside ``ns`` (the server listens on the netns's loopback)."""
    code = ("import sys, urllib.request as u, urllib.error as e\n"
            "try:\n r = u.urlopen(sys.argv[1], timeout=3); print(r.status); print(r.read().decode())\n"
            "except e.HTTPError as x:\n print(x.code); print(x.read().decode())\n"
            "except OSError as x:\n print(0); print(x)\n")
    r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code, url],
                       capture_output=True, text=True, timeout=30, check=False)
    status, _, body = r.stdout.partition("\n")
    return int(status or 0), body


def test_serve_runs_with_only_cap_net_admin(netns_with_policy: str) -> None:
    """`monitor serve` as uid 65534 with CAP_NET_ADMIN only: the process holds exactly that capability,
    /healthz is ok and /api/v1/tunnels shows the reqid-7 tunnel."""
    ns = netns_with_policy
    proc = subprocess.Popen(as_user(ns, ONLY_NET_ADMIN, "serve", "--host", "127.0.0.1", "--port", "8787",
                                    "--interval", "1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        seen: tuple[int, str] = (0, "")
        while time.monotonic() < deadline and proc.poll() is None:
            seen = _fetch(ns, "http://127.0.0.1:8787/api/v1/tunnels")
            if seen[0] == 200 and '"reqid":7' in seen[1].replace(" ", ""):
                break
            time.sleep(0.3)  # polling a subprocess-started server; the deadline bounds the wait
        assert proc.poll() is None, proc.communicate(timeout=10)
        assert seen[0] == 200, seen
        tunnels = json.loads(seen[1])["tunnels"]
        assert [(t["reqid"], t["remote"]) for t in tunnels] == [(7, "198.51.100.1")]
        h_status, h_body = _fetch(ns, "http://127.0.0.1:8787/healthz")
        assert h_status == 200, h_body
        # the server answered, so ip and setpriv have exec'ed into it: this pid is the monitor itself
        status = Path(f"/proc/{proc.pid}/status").read_text()
        uid = re.search(r"^Uid:\s+(\d+)", status, re.M)
        eff = re.search(r"^CapEff:\s+([0-9a-f]+)$", status, re.M)
        assert uid
        assert eff
        assert (int(uid.group(1)), int(eff.group(1), 16)) == (65534, 1 << CAP_NET_ADMIN)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()
