"""Split directions (pure): one connection whose inbound and outbound carry different if_ids or marks.

strongSwan's ``mark_in``/``mark_out`` and ``if_id_in``/``if_id_out`` (swanctl.conf(5)) install the inbound
SA and policies with one ``(if_id, mark)`` and the outbound ones with another, under the same reqid and
outer address pair. A tunnel's key includes ``(if_id, mark)`` (two route-based tunnels may differ only
there), so each direction first becomes a tunnel of its own, and each looks half-dead: ``missing_out``
on one, ``missing_in`` on the other.

Rule: two tunnels of one netns with the same reqid (non-zero) and outer pair, different ``(if_id,
mark)``, the same known local end, and *disjoint, non-empty* directions (one holds only inbound SAs and
in/fwd policies, the other only outbound ones) are the two halves of one connection. The later one is
joined into the first: its SAs, policies and totals move over, its keys point at the first tunnel, and it
leaves the view (``tunnel_removed``; its last event ``tunnel_joined`` names the tunnel it joined). Two
real tunnels that differ only in if_id or mark each carry both directions, so they are never joined.
Checked at every dump end, only for the pairs ``Engine._tunnel`` listed in ``NetnsState.split_pairs``.
"""

from __future__ import annotations

from monitor.health.engine import Engine
from monitor.health.model import TUNNEL_JOINED
from monitor.health.nsstate import NetnsState
from monitor.health.sastate import DIR_IN
from monitor.health.tunnel import Tunnel

__all__ = ["Halves", "directions"]

IN, OUT = "in", "out"


def directions(t: Tunnel) -> set[str] | None:
    """The directions a tunnel's SAs and policies carry; None while its local end is unknown."""
    if not t.local_known:
        return None
    dirs = {IN if sa.dir == DIR_IN else OUT for sa in t.sas if sa.dir}
    dirs.update(OUT if p.dir == 1 else IN for p in t.policies)  # XFRM_POLICY_OUT 1; IN 0 and FWD 2
    return dirs


class Halves(Engine):
    """Joins the two halves of a split-direction connection (see the module docstring)."""

    def _join_halves(self, ns: NetnsState, now: float, announce: bool = True) -> None:
        for pk, peers in list(ns.split_pairs.items()):
            first = ns.by_pair.get(pk, peers[0])
            for other in list(peers):
                if other is not first and self._halves_of_one(first, other):
                    self._join(ns, first, other, now, announce)

    @staticmethod
    def _halves_of_one(a: Tunnel, b: Tunnel) -> bool:
        if a.halves is not None and len(a.halves) >= 2:
            return False  # already whole
        if (a.if_id, a.mark) == (b.if_id, b.mark) or a.local != b.local:
            return False
        da, db = directions(a), directions(b)
        return bool(da) and bool(db) and da is not None and db is not None and not (da & db)

    def _join(self, ns: NetnsState, a: Tunnel, b: Tunnel, now: float, announce: bool) -> None:
        da, db = directions(a) or set(), directions(b) or set()
        a.halves = ((a.if_id, a.mark, next(iter(da))), (b.if_id, b.mark, next(iter(db))))
        for sa in b.sas:
            sa.tunnel = a
        for p in b.policies:
            p.tunnel = a
        a.sas.extend(b.sas)
        a.policies.extend(b.policies)
        b.sas.clear()
        b.policies.clear()
        a.bytes_in += b.bytes_in
        a.bytes_out += b.bytes_out
        a.packets_in += b.packets_in
        a.packets_out += b.packets_out
        a.rekeys += b.rekeys
        a.rekey_failures += b.rekey_failures
        a.replay_errors += b.replay_errors
        a.integrity_errors += b.integrity_errors
        a.had_sa = a.had_sa or b.had_sa
        a.last_in_ts = max(a.last_in_ts, b.last_in_ts)
        a.last_out_ts = max(a.last_out_ts, b.last_out_ts)
        if announce:  # not at the end of an initial load: nobody was told about either half
            self._emit(now, TUNNEL_JOINED, b, {"into": a.id, "if_id": b.if_id, "mark": b.mark,
                                                  "direction": next(iter(db))})
        ns.tunnels[(b.reqid, b.if_id, b.mark, b.lo, b.hi)] = a
        ns.unknown.discard(b)
        ns.pending.discard(b)
        ns.changed.discard(b)
        ns.rated.discard(b)
        ns.unpair(b)
        self._tunnels.pop(b.id, None)
        self._dirty.add(b.id)
        self._touch(ns, a)
