"""Policy lint (pure): overlapping selectors between tunnels, and expected remote ranges left uncovered.

Both checks follow the operator problems of the CloudConnect FAQ: AWS Transit Gateway refuses
overlapping CIDRs ("CIDR not valid ... is not available"), overlapping selectors misroute traffic
between tunnels, and traffic from the device ranges (``10.192.0.0/12``, ``100.64.0.0/10`` ...) only
reaches the server if some policy covers them.

Overlaps only count between tunnels in the same netns with the same ``(if_id, mark)``: route-based
VPNs (xfrm interfaces, VTI marks) legitimately use ``0.0.0.0/0`` selectors on every tunnel.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from socket import AF_INET, AF_INET6, inet_pton  # address text conversion only (pure)
from typing import NamedTuple

__all__ = [
    "Overlap", "SelectorEntry", "find_overlaps", "local_ranges_per_peer", "reserved_overlaps", "uncovered_ranges",
]

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


def _range(text: str) -> tuple[int, int, int] | None:
    """``"10.1.0.0/16"`` -> ``(family, first, last)`` as integers (fast: no ``ipaddress`` objects)."""
    addr, _, plen = text.partition("/")
    try:
        if ":" in addr:
            family, bits, raw = 6, 128, inet_pton(AF_INET6, addr)
        else:
            family, bits, raw = 4, 32, inet_pton(AF_INET, addr)
        n = int(plen) if plen else bits
    except (OSError, ValueError):
        return None
    if not 0 <= n <= bits:
        return None
    host = (1 << (bits - n)) - 1
    first = int.from_bytes(raw, "big") & ~host
    return family, first, first | host


def find_overlaps(entries: Iterable[SelectorEntry], limit: int = 1000) -> list[Overlap]:
    """Pairs of different tunnels whose (src, dst) selectors both overlap.

    A sweep over the remote ranges sorted by start keeps this near O(n log n) for the usual case of
    disjoint ranges; at most ``limit`` pairs are reported.
    """
    groups: dict[tuple[tuple[int, int], int], list[tuple[int, int, int, int, SelectorEntry]]] = {}
    seen: set[SelectorEntry] = set()
    for e in entries:
        if e in seen:
            continue
        seen.add(e)
        src, dst = _range(e.src), _range(e.dst)
        if src is None or dst is None or src[0] != dst[0]:
            continue
        groups.setdefault((e.group, dst[0]), []).append((dst[1], dst[2], src[1], src[2], e))
    found: dict[tuple[str, str], Overlap] = {}
    for items in groups.values():
        items.sort(key=lambda x: x[0])
        active: list[tuple[int, int, int, SelectorEntry]] = []
        for lo, hi, slo, shi, e in items:
            if active:
                active = [a for a in active if a[0] >= lo]
            for _, oslo, oshi, oe in active:
                if oe.tunnel != e.tunnel and oslo <= shi and slo <= oshi:
                    a, b = sorted((oe, e), key=lambda x: x.tunnel)
                    key = (a.tunnel, b.tunnel)
                    if key not in found:
                        found[key] = Overlap(a.tunnel, b.tunnel, f"{a.src} -> {a.dst}", f"{b.src} -> {b.dst}")
                        if len(found) >= limit:
                            return sorted(found.values())
            active.append((hi, slo, shi, e))
    return sorted(found.values())


def uncovered_ranges(expected: Sequence[str], remote_selectors: Iterable[str]) -> list[str]:
    """The ``expected`` remote ranges that no remote-side selector (alone or merged with adjacent or
    overlapping ones) contains. Interval arithmetic on integers, so 100k selectors take milliseconds."""
    spans: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
    for text in set(remote_selectors):
        r = _range(text)
        if r is not None:
            spans[r[0]].append((r[1], r[2]))
    merged: dict[int, tuple[list[int], list[int]]] = {}
    for family, items in spans.items():
        items.sort()
        starts: list[int] = []
        ends: list[int] = []
        for lo, hi in items:
            if ends and lo <= ends[-1] + 1:
                ends[-1] = max(ends[-1], hi)
            else:
                starts.append(lo)
                ends.append(hi)
        merged[family] = (starts, ends)
    out = []
    for text in expected:
        want = _range(text)
        if want is None:
            continue
        starts, ends = merged[want[0]]
        i = bisect.bisect_right(starts, want[1]) - 1
        if i < 0 or ends[i] < want[2]:
            out.append(text)
    return out


def reserved_overlaps(reserved: Sequence[str], local_selectors: Iterable[str]) -> list[tuple[str, str]]:
    """``(selector, reserved range)`` for each local selector that overlaps a reserved range.

    ``0.0.0.0/0`` and ``::/0`` (route-based tunnels) are not ranges anyone chose: they are skipped."""
    spans = [(text, r) for text in reserved if (r := _range(text)) is not None]
    out = []
    for sel in sorted(set(local_selectors)):
        r = _range(sel)
        if r is None or (r[1] == 0 and r[2] == (1 << (32 if r[0] == 4 else 128)) - 1):
            continue
        for text, (family, lo, hi) in spans:
            if family == r[0] and lo <= r[2] and r[1] <= hi:
                out.append((sel, text))
    return out


def local_ranges_per_peer(pairs: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """``remote gateway -> sorted distinct local selector ranges`` from ``(remote, local range)`` pairs."""
    out: dict[str, set[str]] = {}
    for peer, rng in pairs:
        out.setdefault(peer, set()).add(rng)
    return {peer: sorted(r) for peer, r in out.items()}
