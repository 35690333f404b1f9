"""Policy lint (pure): overlapping selectors between tunnels, and expected remote ranges left uncovered.

Both checks follow the operator problems of the CloudConnect FAQ: AWS Transit Gateway refuses
overlapping CIDRs ("CIDR not valid ... is not available"), overlapping selectors misroute traffic
between tunnels, and traffic from the device ranges (``10.192.0.0/12``, ``100.64.0.0/10`` ...) only
reaches the server if some policy covers them.

Overlaps only count between tunnels in the same netns with the same ``(if_id, mark)``: route-based
VPNs (xfrm interfaces, VTI marks) legitimately use ``0.0.0.0/0`` selectors on every tunnel.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import NamedTuple

__all__ = ["Overlap", "SelectorEntry", "find_overlaps", "uncovered_ranges"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class SelectorEntry(NamedTuple):
    """One tunnel selector as seen from the local side: ``src`` local range, ``dst`` remote range."""

    tunnel: str
    group: tuple[int, int]  # (if_id, mark): only entries of the same group can conflict
    src: str
    dst: str


class Overlap(NamedTuple):
    """Two tunnels whose selectors overlap (``a < b``)."""

    a: str
    b: str
    a_sel: str
    b_sel: str


def _net(text: str) -> Network | None:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def find_overlaps(entries: Iterable[SelectorEntry], limit: int = 1000) -> list[Overlap]:
    """Pairs of different tunnels whose (src, dst) selectors both overlap.

    A sweep over the remote ranges sorted by start keeps this near O(n log n) for the usual case of
    disjoint ranges; at most ``limit`` pairs are reported.
    """
    groups: dict[tuple[tuple[int, int], int], list[tuple[int, int, Network, SelectorEntry]]] = {}
    for e in entries:
        src, dst = _net(e.src), _net(e.dst)
        if src is None or dst is None or src.version != dst.version:
            continue
        lo = int(dst.network_address)
        groups.setdefault((e.group, dst.version), []).append((lo, lo + dst.num_addresses - 1, src, e))
    found: dict[tuple[str, str], Overlap] = {}
    for items in groups.values():
        items.sort(key=lambda x: x[0])
        active: list[tuple[int, Network, SelectorEntry]] = []
        for lo, hi, src, e in items:
            active = [a for a in active if a[0] >= lo]
            for _, osrc, oe in active:
                if oe.tunnel != e.tunnel and osrc.overlaps(src):
                    a, b = sorted((oe, e), key=lambda x: x.tunnel)
                    key = (a.tunnel, b.tunnel)
                    if key not in found:
                        found[key] = Overlap(a.tunnel, b.tunnel, f"{a.src} -> {a.dst}", f"{b.src} -> {b.dst}")
                        if len(found) >= limit:
                            return sorted(found.values())
            active.append((hi, src, e))
    return sorted(found.values())


def uncovered_ranges(expected: Sequence[str], remote_selectors: Iterable[str]) -> list[str]:
    """The ``expected`` remote ranges that no remote-side selector (alone or merged) contains."""
    nets: dict[int, list[Network]] = {4: [], 6: []}
    for text in remote_selectors:
        n = _net(text)
        if n is not None:
            nets[n.version].append(n)
    merged: dict[int, list[Network]] = {v: list(ipaddress.collapse_addresses(ns)) for v, ns in nets.items()}  # type: ignore[type-var]
    out = []
    for text in expected:
        want = _net(text)
        if want is None:
            continue
        if not any(want.subnet_of(have) for have in merged[want.version]):  # type: ignore[arg-type]
            out.append(text)
    return out
