"""Keepalive prober, real sender: ICMP and UDP probes between two throwaway netns joined by a veth pair.

Addresses are documentation ones (192.0.2.1 <-> 192.0.2.2); nothing leaves the two namespaces. The
host kernel has no ESP, so there is no real tunnel here: the "tunnel" is a public-JSON dict whose
selectors cover the veth addresses. The VM scenario covers a real strongSwan tunnel.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from monitor.probe.prober import Probe, Prober
from monitor.probe.runner import ProberRunner
from monitor.probe.sender import ProbeSender, _open_icmp, in_netns, local_addresses
from monitor.probe.targets import ProberConfig

pytestmark = [
    pytest.mark.hostkernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create network namespaces"),
]

ip = ipaddress.ip_address


def sh(*args: str) -> None:
    """Run a command; fail the test with its stderr if it fails."""
    r = subprocess.run(args, capture_output=True, text=True, check=False)
    assert r.returncode == 0, f"{' '.join(args)}: {r.stderr}"


@pytest.fixture
def veth_pair() -> Iterator[tuple[str, str]]:
    """Two netns a/b, veth 192.0.2.1/24 <-> 192.0.2.2/24, loopback up. Removed afterwards."""
    a, b = f"xmonp-a-{os.getpid()}", f"xmonp-b-{os.getpid()}"
    try:
        sh("ip", "netns", "add", a)
        sh("ip", "netns", "add", b)
        for ns in (a, b):  # no IPv6 autoconf chatter (DAD, RS, MLD): rx counters must only see probes
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")
        sh("ip", "-n", a, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", b)
        sh("ip", "-n", a, "addr", "add", "192.0.2.1/24", "dev", "va")
        sh("ip", "-n", b, "addr", "add", "192.0.2.2/24", "dev", "vb")
        for ns, dev in ((a, "va"), (b, "vb")):
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield a, b
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def probe(netns: str, target: str, kind: str = "icmp", seq: int = 1, port: int = 33434) -> Probe:
    """A probe from 192.0.2.1 in ``netns``."""
    return Probe("t1", netns, ip("192.0.2.1"), ip(target), kind, port, seq, 0.0, 16)  # type: ignore[arg-type]


def own_netns() -> int:
    """Inode of this thread's network namespace."""
    return os.stat("/proc/thread-self/ns/net").st_ino


async def test_icmp_probe_answered_via_raw_socket(veth_pair: tuple[str, str]) -> None:
    """With ping sockets disallowed (the netns default), root falls back to a raw socket and gets a reply."""
    a, _ = veth_pair
    before = own_netns()
    with in_netns(a):
        sock, raw = _open_icmp(False)
        sock.close()
    assert raw is True, "ping_group_range '1 0' should have refused the ping socket"
    kind, _t = await ProbeSender().send(probe(a, "192.0.2.2"), timeout=3.0)
    assert kind == "answer"
    assert own_netns() == before, "in_netns must switch back"


async def test_icmp_probe_answered_via_ping_socket(veth_pair: tuple[str, str]) -> None:
    """With net.ipv4.ping_group_range open in the netns, the unprivileged ping socket is used and answered."""
    a, _ = veth_pair
    sh("ip", "netns", "exec", a, "sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647")
    with in_netns(a):
        sock, raw = _open_icmp(False)
        sock.close()
    assert raw is False
    kind, _t = await ProbeSender().send(probe(a, "192.0.2.2", seq=7), timeout=3.0)
    assert kind == "answer"


def test_icmp_probe_answered_under_uvloop(veth_pair: tuple[str, str]) -> None:
    """``monitor serve`` runs on uvloop, which lacks loop.sock_sendto/sock_recvfrom: the ICMP probe must work there."""
    import uvloop

    a, _ = veth_pair
    kind, _t = uvloop.run(ProbeSender().send(probe(a, "192.0.2.2", seq=9), timeout=3.0))
    assert kind == "answer"


async def test_udp_probe_to_closed_port_counts_as_answered(veth_pair: tuple[str, str]) -> None:
    """A UDP probe to a closed port comes back as ICMP port unreachable: the path works, it is answered."""
    a, _ = veth_pair
    kind, _t = await ProbeSender().send(probe(a, "192.0.2.2", kind="udp", port=33434), timeout=3.0)
    assert kind == "answer"


async def test_probe_to_absent_host_is_lost(veth_pair: tuple[str, str]) -> None:
    """A probe to an address nobody holds (192.0.2.3) is reported lost after the timeout."""
    a, _ = veth_pair
    kind, detail = await ProbeSender().send(probe(a, "192.0.2.3"), timeout=0.5)
    # lost, not an error: neighbour resolution gives up after seconds, the probe's timeout is 0.5 s
    assert kind == "lost", (kind, detail)


def test_local_addresses_reads_the_netns(veth_pair: tuple[str, str]) -> None:
    """local_addresses() lists the netns's own addresses (and not the host's)."""
    a, b = veth_pair
    assert ip("192.0.2.1") in local_addresses(a)
    assert ip("192.0.2.1") not in local_addresses(b)


async def test_runner_probes_idle_tunnel_and_reports_answer(veth_pair: tuple[str, str]) -> None:
    """End to end: the runner picks the source from the netns, probes the idle tunnel, records the answer."""
    a, _ = veth_pair
    tunnel: dict[str, Any] = {
        "id": "t1",
        "netns": a,
        "reqid": 1,
        "state": "idle",
        "bytes_in": 0,
        "bytes_out": 0,
        "selectors": [{"src": "192.0.2.1/32", "dst": "192.0.2.2/32", "proto": 0}],
    }
    cfg = ProberConfig.from_mapping(
        {"enabled": True, "interval": 1, "timeout": 1, "targets": [{"tunnel": "t1", "target": "192.0.2.2"}]}
    )
    prober = Prober(cfg)
    runner = ProberRunner(prober, lambda: ["t1"], lambda tid: tunnel if tid == "t1" else None)
    started = runner.step()
    assert [str(p.source) for p in started] == ["192.0.2.1"]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5.0
    while loop.time() < deadline:
        j = prober.probe_json("t1")
        if j and j["answered"]:
            break
        await asyncio.sleep(0.05)
    j = prober.probe_json("t1")
    assert j is not None
    assert j["answered"] == 1, j
    assert j["last_rtt_ms"] is not None
    assert j["last_rtt_ms"] >= 0


async def test_runner_never_sends_outside_selectors(veth_pair: tuple[str, str]) -> None:
    """A target outside the remote selectors is refused by the runner too: no packet reaches netns b."""
    a, b = veth_pair
    tunnel: dict[str, Any] = {
        "id": "t1",
        "netns": a,
        "reqid": 1,
        "state": "idle",
        "bytes_in": 0,
        "bytes_out": 0,
        "selectors": [{"src": "192.0.2.1/32", "dst": "192.0.2.99/32"}],
    }
    cfg = ProberConfig.from_mapping(
        {"enabled": True, "interval": 1, "timeout": 1,
         "targets": [{"tunnel": "t1", "target": "192.0.2.2", "source": "192.0.2.1"}]}
    )
    prober = Prober(cfg)
    before = _rx_packets(b)
    runner = ProberRunner(prober, lambda: ["t1"], lambda tid: tunnel)
    assert runner.step() == []
    await asyncio.sleep(0)
    j = prober.probe_json("t1")
    assert j is not None
    assert (j["sent"], j["refused"]) == (0, 1)
    assert _rx_packets(b) == before


def _rx_packets(ns: str) -> int:
    """Packets received on vb in netns ``ns``."""
    out = subprocess.run(
        ["ip", "netns", "exec", ns, "cat", "/sys/class/net/vb/statistics/rx_packets"],
        capture_output=True, text=True, check=True,
    ).stdout
    return int(out)
