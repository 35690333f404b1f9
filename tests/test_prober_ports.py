"""The prober's safety rule honours the selector's *local* port too (source port, ICMP type).

The kernel matches an outgoing packet against both ports of a selector (``__xfrm4_selector_match``);
for ICMP, ``xfrm_flowi_sport()`` is the type and ``xfrm_flowi_dport()`` the code. A probe that a
selector's local-port restriction excludes matches no IPsec policy and would leave in the clear.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from monitor.probe.safety import check_probe, tunnel_view

ip = ipaddress.ip_address


def view_of(sel: dict[str, Any]) -> Any:
    """A tunnel view with one 10.10.1.0/24 -> 10.20.1.0/24 selector, extended by ``sel``."""
    raw = {"src": "10.10.1.0/24", "dst": "10.20.1.0/24", **sel}
    return tunnel_view({"id": "t1", "netns": "a", "reqid": 1, "selectors": [raw]})


@pytest.mark.parametrize(
    ("sel", "kind", "port", "allowed"),
    [
        ({"proto": 17, "sport": 500}, "udp", 33434, False),  # local port fixed: the ephemeral one is outside
        ({"proto": 17, "sport": 500, "sport_mask": 0xFFFF, "dport": 53}, "udp", 53, False),
        ({"proto": 17, "dport": 53}, "udp", 53, True),
        ({"proto": 1, "sport": 0, "sport_mask": 0xFFFF}, "icmp", 0, False),  # echo replies only
        ({"proto": 1, "sport": 3}, "icmp", 0, False),  # destination-unreachable only
        ({"proto": 1, "sport": 8}, "icmp", 0, True),  # echo requests: the probe
        ({"proto": 1, "dport": 1}, "icmp", 0, False),  # code 1 only; an echo request has code 0
    ],
)
def test_local_port_restriction_is_honoured(sel: dict[str, Any], kind: str, port: int, allowed: bool) -> None:
    """A selector restricting the local port (or ICMP type) admits only probes that really match it."""
    reason = check_probe(view_of(sel), ip("10.10.1.1"), ip("10.20.1.1"), kind, port)  # type: ignore[arg-type]
    assert (reason is None) == allowed, reason


def test_inbound_selector_local_port_is_its_dport() -> None:
    """For a dir=in selector the local side is dst, so its local port is dport (swapped like the addresses)."""
    raw = {"src": "10.20.1.0/24", "dst": "10.10.1.0/24", "proto": 17, "dir": "in", "dport": 500}
    v = tunnel_view({"id": "t1", "netns": "a", "reqid": 1, "selectors": [raw]})
    assert check_probe(v, ip("10.10.1.1"), ip("10.20.1.1"), "udp", 33434) is not None
    raw2 = {**raw, "dport": 0, "sport": 33434}
    v2 = tunnel_view({"id": "t1", "netns": "a", "reqid": 1, "selectors": [raw2]})
    assert check_probe(v2, ip("10.10.1.1"), ip("10.20.1.1"), "udp", 33434) is None


def test_icmpv6_echo_type_is_128() -> None:
    """An ICMPv6 selector restricted to type 128 (echo request) admits the v6 probe; type 8 does not."""
    def v6(sport: int) -> Any:
        raw = {"src": "2001:db8:1::/64", "dst": "2001:db8:2::/64", "proto": 58, "sport": sport}
        return tunnel_view({"id": "t1", "netns": "a", "reqid": 1, "selectors": [raw]})
    assert check_probe(v6(128), ip("2001:db8:1::1"), ip("2001:db8:2::1"), "icmp", 0) is None
    assert check_probe(v6(8), ip("2001:db8:1::1"), ip("2001:db8:2::1"), "icmp", 0) is not None
