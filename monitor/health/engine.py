"""The correlator's engine (pure): shared state, health events, tunnels, and state evaluation.

``Engine`` holds what every part of the correlator shares (the tunnel and netns tables, the event
list with its global ``seq``, the dirty set, the deadline heap) and the health evaluation: evidence
-> ``Trigger`` -> ``monitor.health.tunnel.TRANSITIONS`` -> state, reasons and events. ``monitor.health.lifecycle``
adds the SA and policy event handlers on top, and ``monitor.health.correlate.Correlator`` the public API.
See ``monitor.health.correlate`` for the rules.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from typing import Any, Literal

from monitor.health.model import (
    REASONS,
    STATE_CHANGED,
    TUNNEL_DOWN,
    TUNNEL_SUPERSEDED,
    TUNNEL_UP,
    HealthConfig,
    HealthEvent,
    Reason,
    hint,
    reason,
)
from monitor.health.nsstate import NetnsState
from monitor.health.sastate import DIR_IN, DIR_OUT, SAState, expiry_margin
from monitor.health.tunnel import TRANSITIONS, Trigger, Tunnel, TunnelState, tunnel_id
from monitor.wire import xfrm as X

__all__ = ["ANY_PROTO", "INF", "NLM_MULTI", "ZERO_ADDRESSES", "DumpKind", "Engine", "intern_str", "spi_list"]

DumpKind = Literal["sa", "policy"]
ZERO_ADDRESSES = frozenset({"0.0.0.0", "::", ""})  # noqa: S104 (unspecified template addresses)
ANY_PROTO = frozenset({0, 255})  # IPSEC_PROTO_ANY
NLM_MULTI = X.NLM_F_MULTI
INF = float("inf")
Pair = tuple[SAState | None, SAState | None]  # (newest inbound, newest outbound)
_STR: dict[str, str] = {}
# the one state every trigger but LOST leads ``down`` to (None if the table ever says otherwise)
_DOWN_EXITS = {nxt for trig, nxt in TRANSITIONS[TunnelState.DOWN].items() if trig is not Trigger.LOST}
_DOWN_EXIT = next(iter(_DOWN_EXITS)) if len(_DOWN_EXITS) == 1 and TunnelState.DOWN not in _DOWN_EXITS else None


def intern_str(s: str | None) -> str | None:
    """Share equal strings (algorithm names, common selectors); the cache is bounded."""
    if s is None:
        return None
    got = _STR.get(s)
    if got is not None:
        return got
    if len(_STR) < 65536:
        _STR[s] = s
    return s


def spi_list(sas: Iterable[SAState | None]) -> list[str]:
    """SPIs as ``0x%08x`` strings, skipping None."""
    return [f"0x{sa.spi:08x}" for sa in sas if sa is not None]



class Engine:
    """Shared state, plumbing, tunnel table and health evaluation of the correlator."""

    def __init__(self, config: HealthConfig | None = None) -> None:
        """Args:
        config: thresholds; the defaults of ``HealthConfig`` when omitted.
        """
        self.config = config if config is not None else HealthConfig()
        #: Wall-clock time minus core time, set by the I/O shell before each call. Every ``now`` the core
        #: gets, and every instant it keeps, is core time: monotonic for a live kernel (a wall-clock step
        #: can then neither fire nor delay a timer), the capture's own clock for a replay. Kernel
        #: timestamps (``curlft.add_time``, ``XFRMA_LASTUSED``: wall-clock seconds) are converted to core
        #: time as they come in (``- wall_skew``); instants go out as wall time (``+ wall_skew``).
        self.wall_skew = 0.0
        self._tunnels: dict[str, Tunnel] = {}
        #: ``(netns, lo, hi)`` -> ids of tunnels that had SAs and have nothing left (Policies._take_over)
        self._orphans: dict[tuple[str, str, str], set[str]] = {}
        self._ns: dict[str, NetnsState] = {}
        self._events: list[HealthEvent] = []
        self._seq = 0
        self._order = 0
        self._dirty: set[str] = set()
        self._heap: list[tuple[float, int, str]] = []  # (when, 0 tunnel / 1 netns lint, key)
        # every reason's text depends only on the config: build each once
        self._reasons = {code: reason(code, self.config) for code in REASONS}
        self._one = {code: (r,) for code, r in self._reasons.items()}

    # ------------------------------------------------------------------ plumbing

    def _netns(self, name: str, now: float) -> NetnsState:
        ns = self._ns.get(name)
        if ns is None:
            ns = self._ns[name] = NetnsState(name, self.config.local_addresses)
        return ns

    def _reason(self, code: str) -> Reason:
        return self._reasons[code]

    def _emit(self, now: float, etype: str, t: Tunnel | None, detail: dict[str, Any],
              netns: str | None = None) -> None:
        if t is not None:
            ns = self._ns.get(t.netns)
            if ns is not None and ns.quiet:
                return
        self._seq += 1
        self._events.append(HealthEvent(self._seq, now + self.wall_skew, etype, t.id if t is not None else None,
                                        t.netns if t is not None else (netns or ""), detail, now))

    def _touch(self, ns: NetnsState, t: Tunnel) -> None:
        ns.pending.add(t)
        self._dirty.add(t.id)

    # ------------------------------------------------------------------ tunnels

    def _tunnel(self, ns: NetnsState, reqid: int, *, if_id: int, mark: int, a: str, b: str, now: float) -> Tunnel:
        lo, hi = (a, b) if a <= b else (b, a)
        key = (reqid, if_id, mark, lo, hi)
        t = ns.tunnels.get(key)
        if t is None:
            tid = tunnel_id(ns.name, reqid, if_id=if_id, mark=mark, lo=lo, hi=hi)
            t = Tunnel(tid, ns.name, reqid=reqid, if_id=if_id, mark=mark, lo=lo, hi=hi, now=now)
            if ns.quiet:  # initial load: when traffic last moved comes from XFRMA_LASTUSED
                t.last_in_ts = t.last_out_ts = 0.0
            ns.tunnels[key] = t
            self._tunnels[tid] = t
            if reqid:
                ns.pair(t, (reqid, lo, hi))
            self._dirty.add(tid)
            if hi in ns.locals and lo not in ns.locals:
                t.local, t.local_known = t.hi, True
            elif lo in ns.locals:
                t.local_known = True
            else:
                ns.unknown.add(t)
            t.reasons = self._one["no_sa"]
        return t

    def _drop_tunnel(self, ns: NetnsState, t: Tunnel) -> None:
        for sa in t.sas:
            ns.sas.pop((sa.spi, sa.daddr, sa.proto), None)
        for p in t.policies:
            ns.policies.pop(p.index, None)
        for if_id, mark in {(t.if_id, t.mark), *((i, m) for i, m, _ in t.halves or ())}:
            if ns.tunnels.get((t.reqid, if_id, mark, t.lo, t.hi)) is t:
                del ns.tunnels[(t.reqid, if_id, mark, t.lo, t.hi)]
        ns.unpair(t)
        ns.unknown.discard(t)
        ns.pending.discard(t)
        ns.changed.discard(t)
        ns.rated.discard(t)
        self._tunnels.pop(t.id, None)
        self._orphans.get((t.netns, t.lo, t.hi), set()).discard(t.id)
        self._dirty.add(t.id)
        # break the tunnel <-> SA / policy reference cycles (the lists are the tunnel's side of them) so
        # refcounting frees all of it at once: the daemon freezes loaded state out of the cyclic GC
        # (monitor.serve.load_gc.LoadGc), which would never find these cycles
        t.sas.clear()
        t.policies.clear()

    def _supersede(self, t: Tunnel, now: float, quiet: bool) -> bool:
        """Drop ``t`` with a last event ``tunnel_superseded`` (issue 12 item 7); False if its successor is gone."""
        new = self._tunnels.get(t.successor or "")
        if new is None:
            t.successor = None
            return False
        if not quiet:
            r = self._reason("superseded")
            self._emit(now, TUNNEL_SUPERSEDED, t, {"reason": r.code, "text": r.text, "by": new.id,
                                                   "reqid": new.reqid, "from": str(t.state)})
        self._drop_tunnel(self._ns[t.netns], t)
        return True

    def _learn_local(self, ns: NetnsState, t: Tunnel, local: str) -> None:
        if local in ZERO_ADDRESSES or local not in (t.lo, t.hi):
            return
        if not t.local_known or t.local != local:
            self._set_local(t, local)
            ns.unknown.discard(t)
        if local not in ns.locals:
            ns.locals.add(local)
            for other in [u for u in ns.unknown if local in (u.lo, u.hi)]:
                self._set_local(other, local)
                ns.unknown.discard(other)

    def _set_local(self, t: Tunnel, local: str) -> None:
        flipped = t.local != local
        t.local, t.local_known = (t.lo if local == t.lo else t.hi), True
        if not flipped or t.lo == t.hi:
            return
        # the guess was wrong: every SA's direction and the totals swap
        for sa in t.sas:
            sa.dir = DIR_IN if sa.daddr == t.local else DIR_OUT
        t.bytes_in, t.bytes_out = t.bytes_out, t.bytes_in
        t.packets_in, t.packets_out = t.packets_out, t.packets_in
        t.d_bi, t.d_bo, t.d_pi, t.d_po = t.d_bo, t.d_bi, t.d_po, t.d_pi
        t.last_in_ts, t.last_out_ts = t.last_out_ts, t.last_in_ts
        self._dirty.add(t.id)

    @staticmethod
    def _established(t: Tunnel) -> bool:
        has_in = has_out = False
        for sa in t.sas:
            if sa.dir == DIR_IN:
                has_in = True
            else:
                has_out = True
        return has_in and has_out

    # ------------------------------------------------------------------ health evaluation

    def _trigger(self, t: Tunnel, now: float, pair: Pair,  # noqa: PLR0911 (one per trigger)
                 hm: tuple[float, float]) -> tuple[Trigger, tuple[Reason, ...]]:
        cfg = self.config
        nin, nout = pair
        if nin is None or nout is None:
            if not t.sas:
                return Trigger.LOST, self._one[t.down_cause]
            missing = self._reason("missing_in" if nin is None else "missing_out")
            if t.down_cause != "no_sa":
                return Trigger.LOST, (missing, self._reason(t.down_cause))
            return Trigger.LOST, (missing,)
        hard, margin = hm
        if hard and hard - now <= margin:
            return Trigger.HARD_NEAR, self._one["hard_expiry_near"]
        if nin.near_volume() or nout.near_volume():
            return Trigger.HARD_NEAR, self._one["hard_volume_near"]
        if t.err_until > now:
            return Trigger.ERRORS, tuple(self._reason(c) for c in t.err_codes)
        if t.rk_start is not None:
            return Trigger.SOFT_EXPIRED, self._one["soft_expired"]
        last = max(t.last_in_ts, t.last_out_ts, t.up_since)
        if now - t.last_out_ts < cfg.one_way_after <= now - max(t.last_in_ts, t.up_since):
            return Trigger.ONE_WAY, self._one["inbound_flat"]
        # the reverse: inbound moving, nothing sent for one_way_after since inbound started moving (a
        # packet arriving on an idle tunnel is not one-way before its answer had time to leave)
        if now - t.last_in_ts < cfg.one_way_after <= now - max(t.last_out_ts, t.up_since, t.in_since):
            return Trigger.ONE_WAY, self._one["outbound_flat"]
        if now - last >= cfg.idle_after:
            return Trigger.IDLE, self._one["no_traffic"]
        return Trigger.OK, self._one["established"]

    def _settle(self, t: Tunnel, now: float, quiet: bool = False) -> None:
        """``_evaluate`` then ``_schedule``, finding the newest SA of each direction (and its expiry) once."""
        if not t.sas and not t.policies:
            if t.successor is not None and self._supersede(t, now, quiet):
                return
            if t.had_sa and t.gone_sels:
                self._orphans.setdefault((t.netns, t.lo, t.hi), set()).add(t.id)
        pair = t.newest_pair()
        if (pair[0] is None or pair[1] is None) and not quiet and t.state is not TunnelState.DOWN \
                and (t.held_since is not None or (t.gone_sels and not t.policies)) and self._hold_down(t, now):
            return  # held: once started, until both directions are back or supersede_grace ran out
        hm = expiry_margin(pair[0], pair[1], self.config.expiring_margin)
        self._evaluate(t, now, quiet, pair, hm)
        if t.held_since is not None:
            if t.state is TunnelState.DOWN:  # the hold ran out: down since the moment it started
                t.since = t.held_since
            t.held_since = None
        self._schedule(t, now, pair, hm)

    def _hold_down(self, t: Tunnel, now: float) -> bool:
        """True while ``t`` (it had SAs, its policies were removed, a direction is gone) is held in its state
        for ``supersede_grace``: a daemon re-negotiating under a new reqid (libreswan 4.10 replacing a first
        Child SA) deletes the old SAs and policies before the new ones come, and ``Policies._take_over`` then
        supersedes it; only a hold that runs out calls it ``down``."""
        grace = self.config.supersede_grace
        if t.held_since is None:
            t.held_since = now
        until = t.held_since + grace
        if now >= until:
            return False
        self._arm(t, until)
        return True

    def _evaluate(self, t: Tunnel, now: float, quiet: bool, pair: Pair, hm: tuple[float, float]) -> None:
        """Turn the evidence into a trigger and walk ``TRANSITIONS`` to a fixed point, emitting events.

        ``pair`` (``t.newest_pair()``, which evaluation does not change) and ``hm`` (its
        ``expiry_margin``) are computed once by ``_settle``.
        """
        old = state = t.state
        if state is TunnelState.DOWN and _DOWN_EXIT is not None and pair[0] is not None and pair[1] is not None:
            # both directions present: the trigger is not LOST, and every other trigger leaves ``down``
            # for the same state, so the first look is not needed (the loop evaluates again after it)
            trig, reasons = Trigger.OK, t.reasons
        else:
            trig, reasons = self._trigger(t, now, pair, hm)
        for _ in range(3):
            nxt = TRANSITIONS[state][trig]
            if nxt is state:
                break
            if state is TunnelState.DOWN:  # coming up: always through ``up`` (tunnel_up)
                if quiet:  # initial load: up since its oldest live SA was installed
                    oldest = INF
                    for sa in t.sas:
                        if sa.add_time and sa.add_time < oldest:
                            oldest = sa.add_time
                    t.up_since = now if oldest == INF else oldest
                else:
                    t.up_since = now
                    t.last_in_ts = max(t.last_in_ts, now)
                    t.last_out_ts = max(t.last_out_ts, now)
                if not quiet:
                    self._transition(t, state, nxt, self._one["established"], now)
                state = nxt
                trig, reasons = self._trigger(t, now, pair, hm)
                continue
            if not quiet:
                self._transition(t, state, nxt, reasons, now)
            state = nxt
        if state is not old:
            t.state = state
            t.since = t.up_since if quiet and old is TunnelState.DOWN else now
            self._dirty.add(t.id)
        if reasons != t.reasons:
            t.reasons = reasons
            self._dirty.add(t.id)
        if state is not TunnelState.DOWN:
            t.down_cause = "no_sa"

    def _transition(self, t: Tunnel, old: TunnelState, new: TunnelState, reasons: tuple[Reason, ...],
                    now: float) -> None:
        self._emit(now, STATE_CHANGED, t, {"from": str(old), "to": str(new), "reasons": [r.to_json() for r in reasons]})
        if old is TunnelState.DOWN:
            t.down_secs += max(0.0, now - t.since)
        if new is TunnelState.DOWN:
            t.flaps += 1
            r = reasons[-1] if reasons else self._reason("no_sa")
            self._emit(now, TUNNEL_DOWN, t, {"reason": r.code, "text": r.text, "from": str(old)})
        elif old is TunnelState.DOWN:
            self._emit(now, TUNNEL_UP, t, {"local": t.local, "remote": t.remote,
                                           "spis": spi_list((t.newest(DIR_IN), t.newest(DIR_OUT)))})

    def _schedule(self, t: Tunnel, now: float, pair: Pair | None = None,
                  hm: tuple[float, float] | None = None) -> None:
        """Push the tunnel's next deadline (the earliest candidate after ``now``) if it is earlier than its timer."""
        cfg = self.config
        when = INF  # min(c for c in candidates if c > now), without building the list
        if t.sas:
            if hm is None:
                nin, nout = t.newest_pair() if pair is None else pair
                hm = expiry_margin(nin, nout, cfg.expiring_margin)
            hard, margin = hm
            if hard:
                c = hard - margin
                if now < c < when:
                    when = c
            c = t.err_until
            if now < c < when:
                when = c
            last_out, last_in, up = t.last_out_ts, t.last_in_ts, t.up_since
            c = last_out + cfg.one_way_after
            if now < c < when:
                when = c
            c = (last_in if last_in >= up else up) + cfg.one_way_after
            if now < c < when:
                when = c
            c = last_in + cfg.one_way_after
            if now < c < when:
                when = c
            c = max(last_out, up, t.in_since) + cfg.one_way_after
            if now < c < when:
                when = c
            c = max(last_in, last_out, up) + cfg.idle_after
            if now < c < when:
                when = c
        elif not t.policies:
            c = max(t.since, t.policies_gone) + cfg.forget_after
            if now < c < when:
                when = c
        if t.acq_deadline is not None:
            c = t.acq_deadline
            if now < c < when:
                when = c
        if t.hints:
            for _, c in t.hints.values():
                if now < c < when:
                    when = c
        self._arm(t, when)

    def _arm(self, t: Tunnel, when: float) -> None:
        """Push ``t``'s timer to ``when`` if that is earlier than the one it has (``on_timer`` skips stale ones)."""
        if when < t.timer_at:
            t.timer_at = when
            heapq.heappush(self._heap, (when, 0, t.id))

    def _derived_hints(self, t: Tunnel) -> list[Reason]:
        out = []
        for sa in t.sas:
            if sa.oseq_warned and sa.oseq is not None:
                out.append(hint("oseq_exhaustion", spi=f"0x{sa.spi:08x}", oseq=sa.oseq & 0xFFFFFFFF))
        if t.state is TunnelState.ONE_WAY:
            out.append(hint("one_way" if t.reasons and t.reasons[0].code == "inbound_flat" else "one_way_out"))
        if not t.local_known and t.lo != t.hi:
            out.append(hint("direction_unknown"))
        if t.acq_count > 1 and not self._established(t):
            out.append(hint("repeated_acquire", count=t.acq_count))
        return out
