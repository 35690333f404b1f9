"""Per-netns correlator state, ``/proc/net/xfrm_stat`` hints and policy lint wiring (pure).

``NetnsState`` holds the SA and policy indexes of one network namespace plus its dump bookkeeping.
``apply_xfrm_stat`` turns counter increases into hints on the netns and, where the evidence points
at specific tunnels, on those tunnels. ``run_lint`` attaches ``selector_overlap`` hints to tunnels
and ``uncovered_remote_range`` hints to the netns (see ``monitor.health.lint``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from monitor.health.lint import (
    SelectorEntry,
    find_overlaps,
    local_ranges_per_peer,
    reserved_overlaps,
    uncovered_ranges,
)
from monitor.health.model import HealthConfig, Reason, hint
from monitor.health.sastate import PolicyInfo, SAState
from monitor.health.tunnel import Tunnel, TunnelState

__all__ = ["Held", "NetnsState", "apply_xfrm_stat", "run_lint"]

_INF = float("inf")


class Held(NamedTuple):
    """A tunnel direction lost between an overrun and its resync dump's end; judged at that end."""

    cause: str  #: the removal's reason (``sa_deleted``, ``hard_expired``, ``missing_from_dump``, ``flushed``)
    spi: int  #: the SA whose removal left the direction empty
    fail: bool  #: a rekey was in progress (or a hard expiry hit a working tunnel): a failure unless a successor shows
    out_spi: int  #: the outbound SA lost (0: none, or a new outbound SA has come since)


class NetnsState:
    """Indexes and dump bookkeeping of one network namespace."""

    __slots__ = (
        "by_pair", "changed", "gen", "held", "hints", "last_removed", "last_sa_dump_end", "lint_at", "lint_dirty",
        "loading", "locals", "name", "pending", "pgen", "ploading", "pol_dump_begin", "pol_dumped", "policies",
        "pseen", "rated", "resync", "resyncs", "sa_dump_begin", "sa_dumped", "sas", "seen", "split_pairs",
        "stat_prev", "tombstones", "tunnels", "unknown",
    )

    def __init__(self, name: str, local_addresses: Iterable[str] = ()) -> None:
        self.name = name
        self.sas: dict[tuple[int, str, int], SAState] = {}
        self.policies: dict[int, PolicyInfo] = {}
        self.tunnels: dict[tuple[int, int, int, str, str], Tunnel] = {}
        #: ``(reqid, lo, hi)`` -> the first tunnel with it; when more tunnels share it (other if_id/mark: maybe
        #: the other direction of the same connection, ``monitor.health.halves``) all are in ``split_pairs``.
        #: A lone tunnel with if_id and mark 0 is not entered (``pair``): most tunnels, ~120 bytes each.
        self.by_pair: dict[tuple[int, str, str], Tunnel] = {}
        self.split_pairs: dict[tuple[int, str, str], list[Tunnel]] = {}
        self.locals: set[str] = set(local_addresses)
        self.unknown: set[Tunnel] = set()  # tunnels whose local end is still a guess
        self.tombstones: dict[tuple[int, str, int], float] = {}
        self.pending: set[Tunnel] = set()  # to evaluate at the end of the batch / dump
        self.changed: set[Tunnel] = set()  # counters moved since the last SA dump ended
        self.rated: set[Tunnel] = set()  # tunnels with a non-zero rate
        self.gen = self.pgen = 0
        self.seen = self.pseen = 0
        self.sa_dump_begin: float | None = None
        self.pol_dump_begin: float | None = None
        self.sa_dumped = self.pol_dumped = False
        self.loading = self.ploading = False
        self.resync = False
        self.resyncs = 0
        #: tunnels that lost a direction after an overrun, until the resync dump's end (``Lifecycle._judge_held``)
        self.held: dict[Tunnel, Held] = {}
        self.last_removed = 0
        self.last_sa_dump_end: float | None = None
        self.stat_prev: dict[str, int] | None = None
        self.hints: dict[str, tuple[Reason, float]] = {}
        self.lint_at = _INF
        self.lint_dirty = False

    @property
    def quiet(self) -> bool:
        """True during the first (initial-load) dump: no per-SA or up/down events."""
        return self.loading or self.ploading

    @property
    def deferring(self) -> bool:
        """True while state evaluation waits for the end of a loading or resync dump: from an overrun
        (``on_resync``) on, not only while the resync dump runs, since the events read meanwhile are an
        incomplete view (a DELSA whose replacement's notification was lost must not take a tunnel down)."""
        return self.loading or self.ploading or self.resync

    def pair(self, t: Tunnel, pk: tuple[int, str, str]) -> None:
        """Put the new tunnel ``t`` into the ``(reqid, lo, hi)`` indexes (``by_pair``, ``split_pairs``).

        ``by_pair`` is the oldest tunnel with ``pk``, but a tunnel with if_id and mark 0 is only entered
        there once another tunnel with ``pk`` comes: alone, it is ``tunnels[(reqid, 0, 0, lo, hi)]`` (two
        tunnels with one ``pk`` differ in if_id or mark, so at least one of them is non-zero there).
        """
        first = self.by_pair.get(pk)
        if first is None:
            if not t.if_id and not t.mark:
                return
            reqid, lo, hi = pk
            zero = self.tunnels.get((reqid, 0, 0, lo, hi))
            first = self.by_pair[pk] = zero if zero is not None else t
        if first is not t:
            self.split_pairs.setdefault(pk, [first]).append(t)

    def unpair(self, t: Tunnel) -> None:
        """Take ``t`` out of the ``(reqid, lo, hi)`` indexes."""
        pk = (t.reqid, t.lo, t.hi)
        peers = self.split_pairs.get(pk)
        if peers is not None:
            peers[:] = [u for u in peers if u is not t]
            if len(peers) < 2:
                del self.split_pairs[pk]
        if self.by_pair.get(pk) is t:
            if peers:
                self.by_pair[pk] = peers[0]
            else:
                del self.by_pair[pk]

    def to_json(self, now: float) -> dict[str, Any]:
        """Netns-level view: counts, hints and dump bookkeeping."""
        return {
            "netns": self.name,
            "tunnels": len(self.tunnels),
            "sas": len(self.sas),
            "policies": len(self.policies),
            "hints": [h.to_json() for h, until in self.hints.values() if until > now],
            "resyncs": self.resyncs,
            "last_sa_dump_end": self.last_sa_dump_end,
            "xfrm_stat": dict(self.stat_prev) if self.stat_prev else None,
        }


def _attach(t: Tunnel, h: Reason, until: float) -> None:
    if t.hints is None:
        t.hints = {}
    t.hints[h.code] = (h, until)


def apply_xfrm_stat(ns: NetnsState, counters: Mapping[str, int], now: float, cfg: HealthConfig) -> list[Tunnel]:
    """Record a reading; return the tunnels that got a hint. The first reading is only a baseline."""
    prev, ns.stat_prev = ns.stat_prev, dict(counters)
    if prev is None:
        return []
    until = now + cfg.hint_ttl
    touched: dict[str, Tunnel] = {}
    tunnels = list(ns.tunnels.values())
    for name, value in counters.items():
        delta = value - prev.get(name, 0)
        if delta <= 0:
            continue
        try:
            h = hint(name)
        except KeyError:
            continue
        ns.hints[name] = (Reason(h.code, f"{h.text} (+{delta})"), until)
        if name == "XfrmOutNoStates":
            blamed = [t for t in tunnels if t.policies and t.state is TunnelState.DOWN]
        elif name == "XfrmInNoStates":
            blamed = [t for t in tunnels if t.last_rekey is not None and now - t.last_rekey["ts"] < cfg.recent_rekey]
            blamed = blamed or [t for t in tunnels if t.policies and t.state is TunnelState.DOWN]
        else:
            blamed = tunnels if len(tunnels) == 1 else []
        for t in blamed:
            _attach(t, h, until)
            touched[t.id] = t
    for code in [c for c, (_, u) in ns.hints.items() if u <= now]:
        del ns.hints[code]
    return list(touched.values())


def run_lint(ns: NetnsState, cfg: HealthConfig, now: float) -> list[Tunnel]:
    """Recompute overlap and coverage hints of the netns; return tunnels whose hints changed."""
    entries = []
    remote: list[str] = []
    local: list[tuple[str, str]] = []  # (remote gateway, local selector range)
    for info in ns.policies.values():
        t = info.tunnel
        # as seen from the local side: an out policy's (src, dst); in/fwd policies mirror it
        src, dst = (info.src, info.dst) if info.dir == 1 else (info.dst, info.src)
        entries.append(SelectorEntry(t.id, (t.if_id, t.mark), src, dst))
        remote.append(dst)
        local.append((t.remote, src))
    overlaps = find_overlaps(entries)
    new: dict[str, list[str]] = {}
    for o in overlaps:
        new.setdefault(o.a, []).append(f"{o.b} [{o.b_sel}] vs [{o.a_sel}]")
        new.setdefault(o.b, []).append(f"{o.a} [{o.a_sel}] vs [{o.b_sel}]")
    changed = []
    for t in ns.tunnels.values():
        had = t.hints is not None and "selector_overlap" in t.hints
        if t.id in new:
            others = new[t.id]
            h = hint("selector_overlap", other=", ".join(o.split(" ", 1)[0] for o in others[:5]),
                     ranges="; ".join(o.split(" ", 1)[1] for o in others[:5]))
            old = t.hints.get("selector_overlap") if t.hints else None
            if old is None or old[0] != h:
                _attach(t, h, _INF)
                changed.append(t)
        elif had and t.hints is not None:
            del t.hints["selector_overlap"]
            changed.append(t)
    for code in [c for c in ns.hints if c.startswith("uncovered_remote_range")]:
        del ns.hints[code]
    if cfg.expected_remote_ranges and ns.policies:
        for rng in uncovered_ranges(cfg.expected_remote_ranges, remote):
            ns.hints[f"uncovered_remote_range:{rng}"] = (hint("uncovered_remote_range", range=rng), _INF)
    for code in [c for c in ns.hints if c.startswith(("reserved_range:", "too_many_local_ranges:"))]:
        del ns.hints[code]
    if cfg.reserved_local_ranges:
        for sel, reserved in reserved_overlaps(cfg.reserved_local_ranges, (rng for _, rng in local)):
            ns.hints[f"reserved_range:{sel}"] = (hint("reserved_range", selector=sel, reserved=reserved), _INF)
    if cfg.max_local_ranges:
        for peer, ranges in local_ranges_per_peer(local).items():
            if len(ranges) > cfg.max_local_ranges:
                ns.hints[f"too_many_local_ranges:{peer}"] = (hint(
                    "too_many_local_ranges", count=len(ranges), peer=peer, ranges=", ".join(ranges[:8]),
                    limit=cfg.max_local_ranges), _INF)
    return changed
