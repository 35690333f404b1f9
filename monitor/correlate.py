"""The tunnel health correlator (pure): XFRM events and an explicit ``now`` in, tunnels and health events out.

Theory of operation
-------------------
* Inputs, all with ``now`` (wall-clock seconds, the same clock as the kernel's ``curlft.add_time``):
  ``on_events`` (decoded netlink events), ``on_dump_begin``/``on_dump_end`` (around a full SA or
  policy dump), ``on_xfrm_stat``, ``on_resync`` (events were lost), ``on_netns_removed`` and
  ``on_timer``. Outputs: ``drain_events()``, ``take_dirty()``, ``tunnel_json()``, ``snapshot()``.
  It keeps no clock and no socket; ``next_deadline()`` says when ``on_timer`` must run (aioquic's
  ``get_timer``/``handle_timer``).
* **SAs** are keyed by ``(spi, daddr, proto)`` per netns. Larval SAs (ALLOCSPI/ACQUIRE placeholders,
  no ``XFRMA_ALG_*``) are ignored. An SA's counters only ever move up (``max``), because an UPDSA
  notification of a valid SA carries a request-built ``curlft`` (``xfrm-netlink.md`` 1.4); every
  increase is added to its tunnel's totals, so tunnel totals are monotonic across generations. A
  DELSA's ``XFRMA_SA`` and a hard EXPIRE give the final counters. A deleted SA is tombstoned so a
  stale dump record cannot resurrect it (and count it twice).
* **Dumps.** ``on_dump_begin`` opens a generation; every SA the dump reports, or an event touches,
  is stamped with it; ``on_dump_end`` removes the SAs that were not stamped (their last counters
  are kept). Rates are the counter deltas between two dump ends. The first dump of a netns loads
  quietly (no per-SA or up/down events) and ends with one ``resync`` event; after ``on_resync`` the
  next dump reconciles and state changes are only evaluated at its end, so a tunnel that stayed up
  never flaps.
* **Rekeys.** A soft EXPIRE of the newest SA of a direction starts a rekey (deadline: its hard
  expiry). A new SA in a direction that already has one starts one implicitly (libreswan sets no
  time lifetimes). When the newest SA of both directions is newer than the rekey's start, the rekey
  is complete. Old SAs deleted later (strongSwan waits ~5 s) have a successor, so that is no failure.
  A hard EXPIRE or a DELSA of the newest SA of a direction with no successor fails the rekey.
* **State** is evaluated (``_evaluate``) from the evidence into a ``Trigger``, and moved through
  ``monitor.tunnel.TRANSITIONS``. Evaluation of touched tunnels is deferred to the end of each
  ``on_events`` batch (or dump), so a batch never produces an intermediate flap.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from monitor import xfrm as X
from monitor.events import (
    SA,
    Acquire,
    AsyncEvent,
    Event,
    NatMapping,
    Policy,
    PolicyAdded,
    PolicyDeleted,
    PolicyExpired,
    PolicyFlushed,
    PolicyUpdated,
    SAAdded,
    SADeleted,
    SAExpired,
    SAFlushed,
    SAUpdated,
)
from monitor.health import (
    REASONS,
    STATE_CHANGED,
    TUNNEL_DOWN,
    TUNNEL_UP,
    HealthConfig,
    HealthEvent,
    Reason,
    hint,
    reason,
)
from monitor.nsstate import NetnsState, apply_xfrm_stat, run_lint
from monitor.tunnel import DIR_IN, DIR_OUT, TRANSITIONS, PolicyInfo, SAState, Trigger, Tunnel, TunnelState, tunnel_id

__all__ = ["Correlator", "DumpKind"]

DumpKind = Literal["sa", "policy"]
_ZERO = frozenset({"0.0.0.0", "::", ""})  # noqa: S104 (unspecified template addresses)
_ANY_PROTO = frozenset({0, 255})  # IPSEC_PROTO_ANY
_MULTI = X.NLM_F_MULTI
_INF = float("inf")
_STR: dict[str, str] = {}


def _intern(s: str | None) -> str | None:
    """Share equal strings (algorithm names, common selectors); the cache is bounded."""
    if s is None:
        return None
    got = _STR.get(s)
    if got is not None:
        return got
    if len(_STR) < 65536:
        _STR[s] = s
    return s


def _spis(sas: Iterable[SAState | None]) -> list[str]:
    return [f"0x{sa.spi:08x}" for sa in sas if sa is not None]


class Correlator:
    """Pure tunnel health state machine. See the module docstring for the rules."""

    def __init__(self, config: HealthConfig | None = None) -> None:
        """Args:
        config: thresholds; the defaults of ``HealthConfig`` when omitted.
        """
        self.config = config if config is not None else HealthConfig()
        self._tunnels: dict[str, Tunnel] = {}
        self._ns: dict[str, NetnsState] = {}
        self._events: list[HealthEvent] = []
        self._seq = 0
        self._order = 0
        self._dirty: set[str] = set()
        self._heap: list[tuple[float, int, str]] = []
        # every reason's text depends only on the config: build each once
        self._reasons = {code: reason(code, self.config) for code in REASONS}
        self._one = {code: (r,) for code, r in self._reasons.items()}  # (when, 0 tunnel / 1 netns lint, key)
        self._handlers: dict[type, Any] = {
            SAAdded: self._ev_sa_added, SAUpdated: self._ev_sa_updated, SADeleted: self._ev_sa_deleted,
            SAExpired: self._ev_sa_expired, Acquire: self._ev_acquire, AsyncEvent: self._ev_aevent,
            NatMapping: self._ev_mapping, SAFlushed: self._ev_sa_flushed, PolicyAdded: self._ev_policy,
            PolicyUpdated: self._ev_policy, PolicyDeleted: self._ev_policy_deleted,
            PolicyExpired: self._ev_policy_expired, PolicyFlushed: self._ev_policy_flushed,
        }

    # ------------------------------------------------------------------ public API

    @property
    def seq(self) -> int:
        """The sequence number of the last health event emitted (0: none yet)."""
        return self._seq

    @property
    def sa_count(self) -> int:
        """Live, non-larval SAs held, over all netns."""
        return sum(len(ns.sas) for ns in self._ns.values())

    def on_events(self, netns: str, events: Sequence[Event], now: float) -> None:
        """Apply decoded events of one netns (notifications and dump records alike)."""
        ns = self._netns(netns, now)
        handlers = self._handlers
        for ev in events:
            h = handlers.get(ev.__class__)
            if h is not None:
                h(ns, ev, now)
        if not ns.deferring:
            self._flush(ns, now)

    def on_dump_begin(self, netns: str, kind: DumpKind, now: float) -> None:
        """A full dump of ``kind`` ("sa" or "policy") of ``netns`` starts (our request was sent)."""
        ns = self._netns(netns, now)
        if kind == "sa":
            ns.gen += 1
            ns.seen = 0
            ns.sa_dump_begin = now
            # quiet initial load: the first dump, unless events already told us about SAs
            ns.loading = ns.loading or (not ns.sa_dumped and not ns.sas)
        else:
            ns.pgen += 1
            ns.pseen = 0
            ns.pol_dump_begin = now
            ns.ploading = ns.ploading or (not ns.pol_dumped and not ns.policies)

    def on_dump_end(self, netns: str, kind: DumpKind, now: float, ok: bool = True) -> None:
        """The dump of ``kind`` ended (NLMSG_DONE). With ``ok=False`` (an error reply) nothing is removed."""
        ns = self._ns.get(netns)
        if ns is None:
            return
        if kind == "sa":
            if ns.sa_dump_begin is None:
                return
            if ok:
                self._reconcile_sas(ns, now)
                self._rates(ns, now)
                ns.sa_dumped = True
            self._finish_dump(ns, now, "sa", ok)
            ns.sa_dump_begin = None
            ns.loading = False
        else:
            if ns.pol_dump_begin is None:
                return
            if ok:
                self._reconcile_policies(ns, now)
                ns.pol_dumped = True
                self._lint(ns, now)
            self._finish_dump(ns, now, "policy", ok)
            ns.pol_dump_begin = None
            ns.ploading = False
        if not ns.deferring:
            self._flush(ns, now)

    def on_xfrm_stat(self, netns: str, counters: Mapping[str, int], now: float) -> None:
        """A reading of the netns's ``/proc/net/xfrm_stat``; increases become hints."""
        ns = self._netns(netns, now)
        for t in apply_xfrm_stat(ns, counters, now, self.config):
            self._dirty.add(t.id)
            self._schedule(t, now)

    def on_resync(self, netns: str, now: float) -> None:
        """Events were lost (ENOBUFS): abort any dump in flight; the next full dump reconciles quietly."""
        ns = self._netns(netns, now)
        ns.resync = True
        ns.sa_dump_begin = None
        ns.pol_dump_begin = None
        ns.resyncs += 1

    def on_netns_removed(self, netns: str, now: float) -> None:
        """The netns is gone: its up tunnels go down (reason ``netns_removed``) and all are dropped."""
        ns = self._ns.pop(netns, None)
        if ns is None:
            return
        for t in list(ns.tunnels.values()):
            if t.state is not TunnelState.DOWN:
                old = t.state
                r = self._reason("netns_removed")
                t.state, t.since, t.reasons = TunnelState.DOWN, now, (r,)
                self._emit(now, STATE_CHANGED, t, {"from": str(old), "to": "down", "reasons": [r.to_json()]})
                self._emit(now, TUNNEL_DOWN, t, {"reason": r.code, "text": r.text})
            self._drop_tunnel(ns, t)

    def next_deadline(self) -> float | None:
        """When ``on_timer`` must next be called (None: no timer needed)."""
        heap = self._heap
        while heap:
            when, kind, key = heap[0]
            if kind == 0:
                t = self._tunnels.get(key)
                if t is not None and t.timer_at == when:
                    return when
            else:
                ns = self._ns.get(key)
                if ns is not None and ns.lint_at == when:
                    return when
            heapq.heappop(heap)
        return None

    def on_timer(self, now: float) -> None:
        """Run every deadline that is due: idle/one-way/expiring checks, ACQUIRE grace, lint, forgetting."""
        heap = self._heap
        touched: list[Tunnel] = []
        while heap and heap[0][0] <= now:
            when, kind, key = heapq.heappop(heap)
            if kind == 1:
                ns = self._ns.get(key)
                if ns is not None and ns.lint_at == when:
                    ns.lint_at = _INF
                    ns.lint_dirty = False
                    self._lint(ns, now)
                continue
            t = self._tunnels.get(key)
            if t is None or t.timer_at != when:
                continue
            t.timer_at = _INF
            ns = self._ns[t.netns]
            if t.acq_deadline is not None and t.acq_deadline <= now:
                t.acq_deadline = None
                if not self._established(t):
                    t.down_cause = "negotiation_failed"
                    r = self._reason("negotiation_failed")
                    self._emit(now, "negotiation_failed", t, {"acquires": t.acq_count, "text": r.text})
                    if t.state is TunnelState.DOWN:
                        t.reasons = (r,)
                        self._dirty.add(t.id)
            if not t.sas and not t.policies and t.state is TunnelState.DOWN \
                    and now - t.since >= self.config.forget_after:
                self._drop_tunnel(ns, t)
                continue
            if t.hints:
                for code in [c for c, (_, until) in t.hints.items() if until <= now]:
                    del t.hints[code]
                    self._dirty.add(t.id)
            if ns.deferring:
                ns.pending.add(t)
            else:
                touched.append(t)
        for t in touched:
            if t.id in self._tunnels:
                self._evaluate(t, now)
                self._schedule(t, now)

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
        return t.to_json(now, self._derived_hints(t))

    def counters_row(self, tid: str) -> list[Any] | None:
        """Compact per-tunnel counters for periodic websocket frames:
        ``[id, bytes_in, bytes_out, packets_in, packets_out, rate_in_bps, rate_out_bps, state]``
        (rates in bytes per second). None if there is no such tunnel.
        """
        t = self._tunnels.get(tid)
        return None if t is None else t.counters_row()

    def snapshot(self, now: float) -> list[dict[str, Any]]:
        """Every tunnel's JSON, sorted by id."""
        return [self._tunnels[tid].to_json(now, self._derived_hints(self._tunnels[tid]))
                for tid in sorted(self._tunnels)]

    def netns_names(self) -> list[str]:
        """Every netns the correlator has state for, sorted."""
        return sorted(self._ns)

    def netns_json(self, netns: str, now: float) -> dict[str, Any] | None:
        """Netns-level view: ``{netns, tunnels, sas, policies, hints[{code,text}], resyncs, last_dump}``."""
        ns = self._ns.get(netns)
        if ns is None:
            return None
        return ns.to_json(now)

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
        self._events.append(HealthEvent(self._seq, now, etype, t.id if t is not None else None,
                                        t.netns if t is not None else (netns or ""), detail))

    def _touch(self, ns: NetnsState, t: Tunnel) -> None:
        ns.pending.add(t)
        self._dirty.add(t.id)

    def _flush(self, ns: NetnsState, now: float) -> None:
        if ns.pending:
            pending, ns.pending = ns.pending, set()
            for t in pending:
                if t.id in self._tunnels:
                    self._evaluate(t, now)
                    self._schedule(t, now)
        if ns.lint_dirty and ns.lint_at == _INF and not ns.deferring:
            ns.lint_dirty = False
            ns.lint_at = now + self.config.lint_interval
            heapq.heappush(self._heap, (ns.lint_at, 1, ns.name))

    def _finish_dump(self, ns: NetnsState, now: float, kind: str, ok: bool) -> None:
        initial = ns.loading if kind == "sa" else ns.ploading
        resync = kind == "sa" and ns.resync
        if kind == "sa":
            ns.loading = False
            if ok:
                ns.resync = False
        else:
            ns.ploading = False
        if initial and not ns.quiet and ns.pending:
            # quiet loading is over: set every state without events
            pending, ns.pending = ns.pending, set()
            for t in pending:
                if t.id in self._tunnels:
                    self._evaluate(t, now, quiet=True)
                    self._schedule(t, now)
        if ok and (initial or resync):
            self._seq += 1
            self._events.append(HealthEvent(self._seq, now, "resync", None, ns.name, {
                "reason": "initial" if initial else "resync", "kind": kind, "tunnels": len(ns.tunnels),
                "sas": len(ns.sas), "policies": len(ns.policies),
                "removed": ns.last_removed if kind == "sa" else 0}))

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
        ns.tunnels.pop((t.reqid, t.if_id, t.mark, t.lo, t.hi), None)
        ns.unknown.discard(t)
        ns.pending.discard(t)
        self._tunnels.pop(t.id, None)
        self._dirty.add(t.id)

    def _learn_local(self, ns: NetnsState, t: Tunnel, local: str) -> None:
        if local in _ZERO or local not in (t.lo, t.hi):
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

    # ------------------------------------------------------------------ SAs

    def _count(self, ns: NetnsState, st: SAState, nbytes: int, npackets: int, now: float) -> None:
        """Raise the SA's counters to ``nbytes``/``npackets`` (never lower); add the increase to the tunnel."""
        db = nbytes - st.bytes
        dp = npackets - st.packets
        if db <= 0 and dp <= 0:
            return
        t = st.tunnel
        if db < 0:
            db = 0
        else:
            st.bytes = nbytes
        if dp < 0:
            dp = 0
        else:
            st.packets = npackets
        if st.dir == DIR_IN:
            t.bytes_in += db
            t.packets_in += dp
            t.d_bi += db
            t.d_pi += dp
            t.last_in_ts = max(t.last_in_ts, now)
        else:
            t.bytes_out += db
            t.packets_out += dp
            t.d_bo += db
            t.d_po += dp
            t.last_out_ts = max(t.last_out_ts, now)
        ns.changed.add(t)
        self._dirty.add(t.id)
        if t.state is not TunnelState.UP:  # idle / one-way may end with this traffic
            ns.pending.add(t)

    def _bump(self, ns: NetnsState, st: SAState, sa: SA, now: float) -> None:
        """Apply an SA record's counters, drop counters and last-use time to the SA and its tunnel."""
        cur = sa.cur
        if cur.bytes > st.bytes or cur.packets > st.packets:
            self._count(ns, st, cur.bytes, cur.packets, now)
        stats = sa.stats
        replay = stats.replay + stats.replay_window
        if replay > st.replay or stats.integrity_failed > st.integrity:
            self._errors(ns, st, replay, stats.integrity_failed, now)
        if sa.lastused is not None and sa.lastused > st.lastused:
            st.lastused = sa.lastused

    def _errors(self, ns: NetnsState, st: SAState, replay: int, integrity: int, now: float) -> None:
        t = st.tunnel
        codes = []
        for code, new, old in (("replay_errors", replay, st.replay), ("integrity_errors", integrity, st.integrity)):
            if new > old:
                if code == "replay_errors":
                    t.replay_errors += new - old
                    st.replay = new
                else:
                    t.integrity_errors += new - old
                    st.integrity = new
                codes.append(code)
                self._emit(now, code, t, {"spi": f"0x{st.spi:08x}", "delta": new - old,
                                          "total": t.replay_errors if code == "replay_errors" else t.integrity_errors})
        if not ns.quiet:
            # codes seen within the current window accumulate; a new window starts afresh
            t.err_codes = tuple(sorted(set(t.err_codes) | set(codes))) if t.err_until > now else tuple(codes)
            t.err_until = now + self.config.errors_window
            self._touch(ns, t)
        self._dirty.add(t.id)

    def _ev_sa_added(self, ns: NetnsState, ev: SAAdded, now: float) -> None:
        sa = ev.sa
        if ev.nl.flags & _MULTI:
            # dump record fast path: update in place
            st = ns.sas.get((sa.spi, sa.daddr, sa.proto))
            if st is not None:
                self._bump(ns, st, sa, now)
                if st.gen != ns.gen:
                    st.gen = ns.gen
                    ns.seen += 1
                return
            self._upsert(ns, sa, now, record=True)
        else:
            self._upsert(ns, sa, now, record=False)

    def _ev_sa_updated(self, ns: NetnsState, ev: SAUpdated, now: float) -> None:
        self._upsert(ns, ev.sa, now, record=bool(ev.nl.flags & _MULTI))

    def _upsert(self, ns: NetnsState, sa: SA, now: float, record: bool) -> SAState | None:
        if sa.larval:
            return None
        key = (sa.spi, sa.daddr, sa.proto)
        st = ns.sas.get(key)
        if st is None:
            died = ns.tombstones.get(key)
            if died is not None:
                if record and (ns.sa_dump_begin is None or died >= ns.sa_dump_begin):
                    return None  # a stale record of an SA deleted after the dump began
                del ns.tombstones[key]
            st = self._new_sa(ns, key, sa, now)
        else:
            self._bump(ns, st, sa, now)
            self._lifetimes(st, sa)
        if ns.sa_dump_begin is not None and st.gen != ns.gen:
            st.gen = ns.gen
            ns.seen += 1
        return st

    @staticmethod
    def _lifetimes(st: SAState, sa: SA) -> None:
        add = float(sa.cur.add_time) or st.add_time
        st.add_time = add
        lft = sa.lft
        st.soft_at = add + lft.soft_add_expires_seconds if lft.soft_add_expires_seconds and add else 0.0
        st.hard_at = add + lft.hard_add_expires_seconds if lft.hard_add_expires_seconds and add else 0.0

    def _new_sa(self, ns: NetnsState, key: tuple[int, str, int], sa: SA, now: float,
                announce: bool = True) -> SAState:
        t = self._tunnel(ns, sa.reqid, if_id=sa.if_id or 0, mark=sa.mark.value if sa.mark else 0,
                         a=sa.saddr, b=sa.daddr, now=now)
        if sa.sa_dir == X.XFRM_SA_DIR_IN:
            self._learn_local(ns, t, sa.daddr)
        elif sa.sa_dir == X.XFRM_SA_DIR_OUT:
            self._learn_local(ns, t, sa.saddr)
        elif not t.local_known:
            if sa.daddr in ns.locals:
                self._learn_local(ns, t, sa.daddr)
            elif sa.saddr in ns.locals:
                self._learn_local(ns, t, sa.saddr)
        self._order += 1
        # the decoder memoises address strings, so SAs share them already
        st = SAState(sa.spi, sa.daddr, sa.saddr, sa.proto, tunnel=t, order=self._order)
        if sa.sa_dir in (X.XFRM_SA_DIR_IN, X.XFRM_SA_DIR_OUT):
            st.dir = sa.sa_dir
        else:
            st.dir = DIR_IN if sa.daddr == t.local else DIR_OUT
        st.enc = _intern(sa.enc.name) if sa.enc else None
        auth = sa.auth_trunc or sa.auth
        st.auth = _intern(auth.name) if auth else None
        st.aead = _intern(sa.aead.name) if sa.aead else None
        st.add_time = float(sa.cur.add_time) or now
        self._lifetimes(st, sa)
        was_established = bool(t.sas) and self._established(t)
        older = any(o.dir == st.dir for o in t.sas)
        ns.sas[key] = st
        t.sas.append(st)
        last_in, last_out = t.last_in_ts, t.last_out_ts
        self._bump(ns, st, sa, now)
        if ns.quiet:  # initial load: history unknown; XFRMA_LASTUSED (if any) says when traffic last moved
            used = float(sa.lastused) if sa.lastused else now
            t.last_in_ts, t.last_out_ts = last_in, last_out
            if st.dir == DIR_IN:
                t.last_in_ts = max(last_in, used)
            else:
                t.last_out_ts = max(last_out, used)
        if not announce:
            return st
        if t.acq_deadline is not None and self._established(t):
            t.acq_deadline = None
        if not ns.quiet:
            self._emit(now, "sa_added", t, {"spi": f"0x{sa.spi:08x}", "direction": "in" if st.dir == DIR_IN else "out",
                                            "src": sa.saddr, "dst": sa.daddr, "reqid": sa.reqid,
                                            "enc": st.enc, "auth": st.auth, "aead": st.aead})
        if older and was_established and not ns.quiet:
            if t.rk_start is None:  # a replacement without soft expire (libreswan): a rekey too
                t.rk_start, t.rk_mark, t.rk_soft = now, st.order - 1, False
                t.rk_old = tuple(o.spi for o in (t.newest(DIR_IN), t.newest(DIR_OUT)) if o is not None and o is not st)
            self._check_rekey(t, now)
        elif t.rk_start is not None:
            self._check_rekey(t, now)
        self._touch(ns, t)
        return st

    def _check_rekey(self, t: Tunnel, now: float) -> None:
        nin, nout = t.newest(DIR_IN), t.newest(DIR_OUT)
        if t.rk_start is None or nin is None or nout is None or nin.order <= t.rk_mark or nout.order <= t.rk_mark:
            return
        old_spis = [f"0x{s:08x}" for s in t.rk_old]
        new_spis = _spis((nin, nout))
        duration = round(now - t.rk_start, 6)
        t.rekeys += 1
        t.last_rekey = {"ts": now, "duration": duration, "old_spis": old_spis, "new_spis": new_spis}
        self._emit(now, "rekey_completed", t, {"duration": duration, "old_spis": old_spis, "new_spis": new_spis,
                                               "soft_expire": t.rk_soft, "rekeys": t.rekeys})
        t.rk_start = None
        t.rk_old = ()

    def _remove_sa(self, ns: NetnsState, st: SAState, now: float, cause: str, hard: bool = False) -> None:
        """Retire an SA (its counters stay in the tunnel totals) and judge what its loss means."""
        t = st.tunnel
        key = (st.spi, st.daddr, st.proto)
        ns.sas.pop(key, None)
        ns.tombstones[key] = now
        was_up = self._established(t)
        if st in t.sas:
            t.sas.remove(st)
        detail = {"spi": f"0x{st.spi:08x}", "direction": "in" if st.dir == DIR_IN else "out",
                  "bytes": st.bytes, "packets": st.packets, "reason": cause}
        if hard:
            self._emit(now, "sa_expired", t, {**detail, "hard": True})
        else:
            self._emit(now, "sa_deleted", t, detail)
        if not any(o.dir == st.dir for o in t.sas):
            # the direction is gone with no successor
            t.down_cause = cause
            if t.rk_start is not None or (hard and was_up):  # one failure per lost rekey, not per SA
                t.rekey_failures += 1
                self._emit(now, "rekey_failed", t, {"reason": cause, "spi": f"0x{st.spi:08x}",
                                                    "started": t.rk_start, "rekey_failures": t.rekey_failures})
                t.rk_start = None
                t.rk_old = ()
        self._touch(ns, t)

    @staticmethod
    def _placeholder(sa: SA, expire: bool) -> bool:
        """A larval state (ALLOCSPI / ACQUIRE placeholder), not a tunnel SA.

        EXPIRE messages never carry ``XFRMA_ALG_*`` (``build_expire()``), so for them only SPI 0
        (an ACQUIRE placeholder) or reqid 0 (an ALLOCSPI'd SPI) tells.
        """
        return (sa.spi == 0 or sa.reqid == 0) if expire else sa.larval

    def _final(self, ns: NetnsState, sa: SA, now: float, expire: bool = False) -> SAState | None:
        """The live SA a DELSA / hard EXPIRE record is about, with its final counters applied.

        An SA never seen alive is created without announcement so its counters still count; one
        already retired (tombstoned) is ignored, so nothing is counted twice.
        """
        key = (sa.spi, sa.daddr, sa.proto)
        st = ns.sas.get(key)
        if st is not None:
            self._bump(ns, st, sa, now)
            return st
        if self._placeholder(sa, expire) or key in ns.tombstones:
            return None
        return self._new_sa(ns, key, sa, now, announce=False)

    def _ev_sa_deleted(self, ns: NetnsState, ev: SADeleted, now: float) -> None:
        sa = ev.sa
        st = self._final(ns, sa, now) if sa is not None else ns.sas.get((ev.id.spi, ev.id.daddr, ev.id.proto))
        if st is not None:
            self._remove_sa(ns, st, now, "sa_deleted")

    def _ev_sa_expired(self, ns: NetnsState, ev: SAExpired, now: float) -> None:
        sa = ev.sa
        if ev.hard:
            st = self._final(ns, sa, now, expire=True)
            if st is not None:
                self._remove_sa(ns, st, now, "hard_expired", hard=True)
            return
        key = (sa.spi, sa.daddr, sa.proto)
        st = ns.sas.get(key)
        if st is None:
            if self._placeholder(sa, True) or key in ns.tombstones:
                return
            st = self._new_sa(ns, key, sa, now)
        else:
            self._bump(ns, st, sa, now)
        t = st.tunnel
        st.soft_expired = True
        self._emit(now, "sa_expired", t, {"spi": f"0x{st.spi:08x}", "hard": False,
                                          "direction": "in" if st.dir == DIR_IN else "out"})
        if t.rk_start is None and t.newest(st.dir) is st:
            t.rk_start, t.rk_mark, t.rk_soft = now, self._order, True
            t.rk_old = tuple(o.spi for o in (t.newest(DIR_IN), t.newest(DIR_OUT)) if o is not None)
            deadline = st.hard_at or None
            self._emit(now, "rekey_started", t, {"spi": f"0x{st.spi:08x}", "deadline": deadline,
                                                 "hard_expires_in": round(deadline - now, 3) if deadline else None,
                                                 "old_spis": [f"0x{s:08x}" for s in t.rk_old]})
        self._touch(ns, t)

    def _ev_aevent(self, ns: NetnsState, ev: AsyncEvent, now: float) -> None:
        st = ns.sas.get((ev.id.spi, ev.id.daddr, ev.id.proto))
        if st is None or ev.lifetime is None:
            return
        self._count(ns, st, ev.lifetime.bytes, ev.lifetime.packets, now)

    def _ev_sa_flushed(self, ns: NetnsState, ev: SAFlushed, now: float) -> None:
        for st in list(ns.sas.values()):
            if ev.proto in _ANY_PROTO or st.proto == ev.proto:
                self._remove_sa(ns, st, now, "flushed")

    def _ev_acquire(self, ns: NetnsState, ev: Acquire, now: float) -> None:
        tmpl = next((tp for tp in ev.templates if tp.proto in (X.IPPROTO_ESP, X.IPPROTO_AH)),
                    ev.templates[0] if ev.templates else None)
        reqid = tmpl.reqid if tmpl is not None else 0
        local, remote = ev.saddr, ev.daddr
        if tmpl is not None and tmpl.saddr not in _ZERO and tmpl.daddr not in _ZERO:
            local, remote = tmpl.saddr, tmpl.daddr
        if local in _ZERO or remote in _ZERO:
            local, remote = ev.sel.saddr, ev.sel.daddr
        mark = ev.mark.value if ev.mark else (ev.policy.mark.value if ev.policy.mark else 0)
        t = self._tunnel(ns, reqid, if_id=ev.if_id or 0, mark=mark, a=local, b=remote, now=now)
        self._learn_local(ns, t, local)
        t.acq_count += 1
        if t.acq_deadline is None and not self._established(t):
            t.acq_deadline = now + self.config.acquire_grace
        self._emit(now, "acquire", t, {"count": t.acq_count, "src": ev.sel.saddr, "dst": ev.sel.daddr,
                                       "proto": ev.sel.proto, "seq": ev.seq})
        self._touch(ns, t)

    def _ev_mapping(self, ns: NetnsState, ev: NatMapping, now: float) -> None:
        st = ns.sas.get((ev.id.spi, ev.id.daddr, ev.id.proto))
        if st is None:
            return
        t = st.tunnel
        self._emit(now, "nat_mapping_changed", t, {"spi": f"0x{st.spi:08x}", "old": f"{ev.old_saddr}:{ev.old_sport}",
                                                   "new": f"{ev.new_saddr}:{ev.new_sport}"})
        if t.hints is None:
            t.hints = {}
        t.hints["nat_mapping"] = (hint("nat_mapping"), now + self.config.hint_ttl)
        self._touch(ns, t)

    # ------------------------------------------------------------------ policies

    def _ev_policy(self, ns: NetnsState, ev: PolicyAdded | PolicyUpdated, now: float) -> None:
        self._policy_upsert(ns, ev.policy, now, record=bool(ev.nl.flags & _MULTI))

    def _policy_upsert(self, ns: NetnsState, p: Policy, now: float, record: bool) -> None:
        tmpl = next((tp for tp in p.templates if tp.proto in (X.IPPROTO_ESP, X.IPPROTO_AH)),
                    p.templates[0] if p.templates else None)
        if tmpl is None:
            return  # not an IPsec policy (allow/block/bypass): no tunnel
        a, b = tmpl.saddr, tmpl.daddr  # the SA's source and destination
        if a in _ZERO or b in _ZERO:  # transport mode: the SA runs between the selector's hosts
            a, b = p.sel.saddr, p.sel.daddr
        t = self._tunnel(ns, tmpl.reqid, if_id=p.if_id or 0, mark=p.mark.value if p.mark else 0, a=a, b=b, now=now)
        self._learn_local(ns, t, a if p.dir == 1 else b)
        sel = p.sel
        old = ns.policies.get(p.index)
        if old is not None and old.tunnel is not t:
            self._remove_policy(ns, old, now)
            old = None
        if old is None:
            info = PolicyInfo(p.index, p.dir, src=_intern(f"{sel.saddr}/{sel.prefixlen_s}") or "",
                              dst=_intern(f"{sel.daddr}/{sel.prefixlen_d}") or "", proto=sel.proto,
                              sport=sel.sport, dport=sel.dport, tunnel=t)
            ns.policies[p.index] = info
            t.policies.append(info)
            ns.lint_dirty = True
            self._emit(now, "policy_added", t, {"index": p.index, "dir": p.dir, **info.selector_json()})
            self._touch(ns, t)
        else:
            info = old
        if ns.pol_dump_begin is not None and info.gen != ns.pgen:
            info.gen = ns.pgen
            ns.pseen += 1

    def _remove_policy(self, ns: NetnsState, info: PolicyInfo, now: float) -> None:
        ns.policies.pop(info.index, None)
        t = info.tunnel
        if info in t.policies:
            t.policies.remove(info)
        ns.lint_dirty = True
        self._emit(now, "policy_removed", t, {"index": info.index, "dir": info.dir, **info.selector_json()})
        self._touch(ns, t)

    def _ev_policy_deleted(self, ns: NetnsState, ev: PolicyDeleted, now: float) -> None:
        index = ev.policy.index if ev.policy is not None and ev.policy.index else ev.id.index
        info = ns.policies.get(index)
        if info is None:  # deleted by selector: find it by selector and direction
            sel = ev.id.sel
            src, dst = f"{sel.saddr}/{sel.prefixlen_s}", f"{sel.daddr}/{sel.prefixlen_d}"
            info = next((i for i in ns.policies.values() if i.dir == ev.id.dir and i.src == src and i.dst == dst), None)
        if info is not None:
            self._remove_policy(ns, info, now)

    def _ev_policy_expired(self, ns: NetnsState, ev: PolicyExpired, now: float) -> None:
        if ev.hard:
            info = ns.policies.get(ev.policy.index)
            if info is not None:
                self._remove_policy(ns, info, now)

    def _ev_policy_flushed(self, ns: NetnsState, ev: PolicyFlushed, now: float) -> None:
        for info in list(ns.policies.values()):
            self._remove_policy(ns, info, now)

    # ------------------------------------------------------------------ dumps

    def _reconcile_sas(self, ns: NetnsState, now: float) -> None:
        ns.last_removed = 0
        if ns.seen < len(ns.sas):
            gen = ns.gen
            for st in [s for s in ns.sas.values() if s.gen != gen]:
                self._remove_sa(ns, st, now, "missing_from_dump")
                ns.last_removed += 1
        begin = ns.sa_dump_begin or now
        ttl = self.config.tombstone_ttl
        if ns.tombstones:
            ns.tombstones = {k: d for k, d in ns.tombstones.items() if d >= begin and now - d < ttl}

    def _reconcile_policies(self, ns: NetnsState, now: float) -> None:
        if ns.pseen < len(ns.policies):
            gen = ns.pgen
            for info in [i for i in ns.policies.values() if i.gen != gen]:
                self._remove_policy(ns, info, now)

    def _rates(self, ns: NetnsState, now: float) -> None:
        prev = ns.last_sa_dump_end
        ns.last_sa_dump_end = now
        dt = now - prev if prev is not None and now > prev else 0.0
        changed, ns.changed = ns.changed, set()
        for t in changed:
            if dt:
                t.rate_bi, t.rate_bo = t.d_bi / dt, t.d_bo / dt
                t.rate_pi, t.rate_po = t.d_pi / dt, t.d_po / dt
                ns.rated.add(t)
            t.d_bi = t.d_bo = t.d_pi = t.d_po = 0
            # a moving tunnel needs a fresh look if it was not plainly up, or if inbound stayed flat
            if t.state is not TunnelState.UP or t.rate_bi == 0.0:
                ns.pending.add(t)
        for t in [r for r in ns.rated if r not in changed]:
            t.rate_bi = t.rate_bo = t.rate_pi = t.rate_po = 0.0
            ns.rated.discard(t)
            self._dirty.add(t.id)

    # ------------------------------------------------------------------ health evaluation

    def _trigger(self, t: Tunnel, now: float) -> tuple[Trigger, tuple[Reason, ...]]:  # noqa: PLR0911 (one per trigger)
        cfg = self.config
        nin, nout = t.newest(DIR_IN), t.newest(DIR_OUT)
        if nin is None or nout is None:
            if not t.sas:
                return Trigger.LOST, self._one[t.down_cause]
            missing = self._reason("missing_in" if nin is None else "missing_out")
            if t.down_cause != "no_sa":
                return Trigger.LOST, (missing, self._reason(t.down_cause))
            return Trigger.LOST, (missing,)
        hard = min((h for h in (nin.hard_at, nout.hard_at) if h), default=0.0)
        if hard and hard - now <= cfg.expiring_margin:
            return Trigger.HARD_NEAR, self._one["hard_expiry_near"]
        if t.err_until > now:
            return Trigger.ERRORS, tuple(self._reason(c) for c in t.err_codes)
        if t.rk_start is not None:
            return Trigger.SOFT_EXPIRED, self._one["soft_expired"]
        last = max(t.last_in_ts, t.last_out_ts, t.up_since)
        if now - t.last_out_ts < cfg.one_way_after <= now - max(t.last_in_ts, t.up_since):
            return Trigger.ONE_WAY, self._one["inbound_flat"]
        if now - last >= cfg.idle_after:
            return Trigger.IDLE, self._one["no_traffic"]
        return Trigger.OK, self._one["established"]

    def _evaluate(self, t: Tunnel, now: float, quiet: bool = False) -> None:
        """Turn the evidence into a trigger and walk ``TRANSITIONS`` to a fixed point, emitting events."""
        trig, reasons = self._trigger(t, now)
        old = state = t.state
        for _ in range(3):
            nxt = TRANSITIONS[state][trig]
            if nxt is state:
                break
            if state is TunnelState.DOWN:  # coming up: always through ``up`` (tunnel_up)
                if quiet:  # initial load: up since its oldest live SA was installed
                    t.up_since = min((sa.add_time for sa in t.sas if sa.add_time), default=now)
                else:
                    t.up_since = now
                    t.last_in_ts = max(t.last_in_ts, now)
                    t.last_out_ts = max(t.last_out_ts, now)
                if not quiet:
                    self._transition(t, state, nxt, self._one["established"], now)
                state = nxt
                trig, reasons = self._trigger(t, now)
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
        if new is TunnelState.DOWN:
            r = reasons[-1] if reasons else self._reason("no_sa")
            self._emit(now, TUNNEL_DOWN, t, {"reason": r.code, "text": r.text, "from": str(old)})
        elif old is TunnelState.DOWN:
            self._emit(now, TUNNEL_UP, t, {"local": t.local, "remote": t.remote,
                                           "spis": _spis((t.newest(DIR_IN), t.newest(DIR_OUT)))})

    def _schedule(self, t: Tunnel, now: float) -> None:
        cfg = self.config
        cands: list[float] = []
        if t.sas:
            hard = t.hard_expires_at()
            if hard:
                cands.append(hard - cfg.expiring_margin)
            cands.append(t.err_until)
            cands.append(t.last_out_ts + cfg.one_way_after)
            cands.append(max(t.last_in_ts, t.up_since) + cfg.one_way_after)
            cands.append(max(t.last_in_ts, t.last_out_ts, t.up_since) + cfg.idle_after)
        elif not t.policies:
            cands.append(t.since + cfg.forget_after)
        if t.acq_deadline is not None:
            cands.append(t.acq_deadline)
        if t.hints:
            cands.extend(until for _, until in t.hints.values())
        when = min((c for c in cands if c > now), default=_INF)
        if when < t.timer_at:
            t.timer_at = when
            heapq.heappush(self._heap, (when, 0, t.id))

    def _derived_hints(self, t: Tunnel) -> list[Reason]:
        out = []
        if t.state is TunnelState.ONE_WAY:
            out.append(hint("one_way"))
        if not t.local_known and t.lo != t.hi:
            out.append(hint("direction_unknown"))
        if t.acq_count > 1 and not self._established(t):
            out.append(hint("repeated_acquire", count=t.acq_count))
        return out

    def _lint(self, ns: NetnsState, now: float) -> None:
        for t in run_lint(ns, self.config, now):
            self._dirty.add(t.id)
            self._schedule(t, now)
