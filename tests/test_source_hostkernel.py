"""KernelSource against the host kernel, in throwaway namespaces (marker ``hostkernel``).

This kernel has XFRM netlink but no ESP, so SAs are larval (ALLOCSPI) and policies are real.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from monitor.errors import NetnsNotFound
from monitor.sources import netns as N
from monitor.sources.items import Datagram
from monitor.sources.kernel import KernelSource
from monitor.wire import xfrm as X
from monitor.wire.events import PolicyAdded, PolicyDeleted, SAAdded
from monitor.wire.pcap import read_pcap
from tests.conftest import netns_exists
from tests.source_helpers import Collector, RawXfrm

pytestmark = pytest.mark.hostkernel


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, timeout=30, capture_output=True)


async def test_policy_events_and_larval_sa_dump(netns: str) -> None:
    """A larval SA shows up in the first dump; policy add and delete arrive as events, tagged with the netns."""
    _ip("-n", netns, "xfrm", "state", "allocspi", "src", "192.0.2.1", "dst", "192.0.2.2", "proto", "esp",
        "mode", "tunnel", "reqid", "9", "min", "0x1234", "max", "0x1234")
    async with Collector(KernelSource([netns], interval=0.2)) as c:
        await c.wait("first SA dump", lambda: any(isinstance(e, SAAdded) for e in c.events(netns)))
        sa = next(e for e in c.events(netns) if isinstance(e, SAAdded))
        assert (sa.sa.spi, sa.sa.reqid, sa.sa.larval) == (0x1234, 9, True)
        assert sa.nl.flags & X.NLM_F_MULTI
        _ip("-n", netns, "xfrm", "policy", "add", "src", "198.51.100.0/24", "dst", "203.0.113.0/24", "dir", "out")
        _ip("-n", netns, "xfrm", "policy", "del", "src", "198.51.100.0/24", "dst", "203.0.113.0/24", "dir", "out")

        def notified(kind: type) -> list[object]:
            return [e for e in c.events(netns) if isinstance(e, kind) and not e.nl.flags & X.NLM_F_MULTI]

        await c.wait("policy add/delete events", lambda: bool(notified(PolicyAdded) and notified(PolicyDeleted)))
        added = notified(PolicyAdded)[0]
        assert isinstance(added, PolicyAdded)
        assert (added.policy.sel.daddr, added.policy.sel.prefixlen_d) == ("203.0.113.0", 24)
        assert all(i.netns == netns for i in c.items)


async def test_follows_namespaces_appearing_and_disappearing(make_netns: Callable[[], str]) -> None:
    """With netns='all', a namespace created later is announced and dumped; deleting it is announced too."""
    async with Collector(KernelSource("all", interval=0.2)) as c:
        await c.wait("default netns watched", lambda: bool(c.controls("xfrm_stat", "default")))
        name = make_netns()
        await c.wait(f"{name} added", lambda: bool(c.controls("netns_added", name)))
        await c.wait(f"{name} dumped", lambda: any(isinstance(i, Datagram) and i.netns == name and not i.outgoing
                                                   for i in c.items))
        _ip("netns", "del", name)
        await c.wait(f"{name} removed", lambda: bool(c.controls("netns_removed", name)))
        n = len(c.items)
        await c.wait("two more dump cycles", lambda: len(c.controls("xfrm_stat", "default")) >= 3 and len(c.items) > n)
        assert not [i for i in c.items[n:] if i.netns == name]


async def test_xfrm_stat_is_per_namespace(make_netns: Callable[[], str]) -> None:
    """A blocked packet in one namespace raises XfrmOutPolBlock there and not in a sibling namespace."""
    a, b = make_netns(), make_netns()
    _ip("-n", a, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
    _ip("-n", a, "addr", "add", "192.0.2.1/24", "dev", "v0")
    _ip("-n", a, "link", "set", "v0", "up")
    _ip("-n", a, "link", "set", "v1", "up")
    _ip("-n", a, "xfrm", "policy", "add", "src", "192.0.2.1/32", "dst", "192.0.2.2/32", "dir", "out", "action", "block")
    # ping's connect() is refused by the block policy: no packet leaves the namespace
    subprocess.run(["ip", "netns", "exec", a, "ping", "-c1", "-W1", "192.0.2.2"], capture_output=True, timeout=30,
                   check=False)
    async with Collector(KernelSource([a, b], interval=0.2)) as c:
        await c.wait("xfrm_stat from both", lambda: bool(c.controls("xfrm_stat", a) and c.controls("xfrm_stat", b)))
        ca, cb = c.controls("xfrm_stat", a)[-1].counters, c.controls("xfrm_stat", b)[-1].counters
    assert ca is not None
    assert cb is not None
    assert ca["XfrmOutPolBlock"] >= 1, ca
    assert cb["XfrmOutPolBlock"] == 0, cb


def test_pyroute2_path_does_not_create_a_missing_netns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Even without our existence check, the pyroute2 call (flags=0) fails instead of creating the netns."""
    name = f"mon-test-missing-{secrets.token_hex(4)}"
    monkeypatch.setattr(N, "_path", lambda name, netns_dir: os.path.join(netns_dir, name))
    with pytest.raises(NetnsNotFound, match=name):
        N.open_xfrm_socket(name, 0, 1 << 20)
    assert not netns_exists(name)


async def test_missing_netns_raises_from_items() -> None:
    """The error comes straight out of items() (what `monitor record --netns typo` reports)."""
    name = f"mon-test-missing-{secrets.token_hex(4)}"
    with pytest.raises(NetnsNotFound, match="does not exist"):
        await anext(KernelSource([name]).items())
    assert not netns_exists(name)


def test_without_cap_net_admin_permission_is_denied() -> None:
    """As uid 65534 with no capabilities, starting the source fails with PermissionDenied naming CAP_NET_ADMIN."""
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to uid 65534")
    code = (
        "import asyncio\n"
        "from monitor.sources.kernel import KernelSource\n"
        "from monitor.errors import PermissionDenied\n"
        "async def main():\n"
        "    try:\n"
        "        await anext(KernelSource(interval=0.2).items())\n"
        "    except PermissionDenied as e:\n"
        "        print('DENIED', e)\n"
        "asyncio.run(main())\n"
    )
    proc = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", sys.executable, "-c", code],
        capture_output=True, text=True, timeout=60, check=False, cwd=os.path.dirname(os.path.dirname(__file__)),
    )
    assert proc.stdout.startswith("DENIED"), (proc.stdout, proc.stderr)
    assert "CAP_NET_ADMIN" in proc.stdout


def test_cap_net_admin_alone_is_enough() -> None:
    """The advice in the PermissionDenied message works: uid 65534 with only ambient CAP_NET_ADMIN can record."""
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to uid 65534")
    with tempfile.TemporaryDirectory(prefix="mon-caps-") as d:  # pytest's tmp_path is private to root
        os.chmod(d, 0o777)
        _record_as_nobody(Path(d) / "caps.pcap")


def _record_as_nobody(out: Path) -> None:
    proc = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=+net_admin",
         "--ambient-caps=+net_admin", sys.executable, "-m", "monitor", "record", "--out", str(out),
         "--duration", "0.6", "--interval", "0.2"],
        capture_output=True, text=True, timeout=60, check=False, cwd=os.path.dirname(os.path.dirname(__file__)),
    )
    assert proc.returncode == 0, proc.stderr
    assert "recorded" in proc.stdout
    assert any(not r.outgoing for r in read_pcap(out))


async def test_raw_helper_sees_its_own_sas(netns: str) -> None:
    """The test driver itself works: ALLOCSPI'd SPIs come back in a separate dump."""
    raw = RawXfrm(netns)
    try:
        replies = raw.allocspi([0x500, 0x501])
        assert [e.sa.spi for e in replies if isinstance(e, SAAdded)] == [0x500, 0x501]
        assert {0x500, 0x501} == raw.dump_spis()
    finally:
        raw.close()
