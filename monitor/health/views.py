"""The correlator's outputs (pure, read-only but for the two hand-over calls): events, changed tunnels, the
tunnels' and namespaces' JSON, and the compact rows the websocket counters frame and ``/metrics`` read.
"""

from __future__ import annotations

from typing import Any

from monitor.health.engine import Engine
from monitor.health.model import HealthEvent

__all__ = ["Views"]


class Views(Engine):
    """What the I/O shells read from a ``Correlator`` (see ARCHITECTURE.md "Correlator (pure)")."""

    def drain_events(self) -> list[HealthEvent]:
        """The health events emitted since the last call, ``seq`` strictly increasing."""
        out, self._events = self._events, []
        return out

    def take_dirty(self) -> set[str]:
        """Ids of tunnels changed (or removed: ``tunnel_json`` then returns None) since the last call."""
        out, self._dirty = self._dirty, set()
        return out

    def tunnel_ids(self) -> list[str]:
        """Every tunnel id, sorted."""
        return sorted(self._tunnels)

    def tunnel_json(self, tid: str, now: float) -> dict[str, Any] | None:
        """The public JSON of one tunnel, or None if there is no such tunnel (any more)."""
        t = self._tunnels.get(tid)
        if t is None:
            return None
        return t.to_json(now, self._derived_hints(t), self.wall_skew)

    def counters_row(self, tid: str) -> list[Any] | None:
        """Compact per-tunnel counters for periodic websocket frames:
        ``[id, bytes_in, bytes_out, packets_in, packets_out, rate_in_bps, rate_out_bps, state]``
        (rates in bytes per second). None if there is no such tunnel.
        """
        t = self._tunnels.get(tid)
        return None if t is None else t.counters_row()

    def metrics_row(self, tid: str, now: float) -> tuple[Any, ...] | None:
        """The values ``/metrics`` exports of one tunnel (``Tunnel.metrics_row``; the same as its JSON shows,
        cheaper), or None if there is no such tunnel."""
        t = self._tunnels.get(tid)
        return None if t is None else t.metrics_row(now)

    def snapshot(self, now: float) -> list[dict[str, Any]]:
        """Every tunnel's JSON, sorted by id."""
        return [self._tunnels[tid].to_json(now, self._derived_hints(self._tunnels[tid]), self.wall_skew)
                for tid in sorted(self._tunnels)]

    def netns_names(self) -> list[str]:
        """Every netns the correlator has state for, sorted."""
        return sorted(self._ns)

    def netns_json(self, netns: str, now: float) -> dict[str, Any] | None:
        """Netns-level view: ``{netns, tunnels, sas, policies, hints[{code,text}], resyncs, last_dump}``."""
        ns = self._ns.get(netns)
        if ns is None:
            return None
        doc = ns.to_json(now)
        if doc["last_sa_dump_end"] is not None:
            doc["last_sa_dump_end"] += self.wall_skew  # an instant: shown in wall time
        return doc
