"""The tunnel health correlator (pure): XFRM events and an explicit ``now`` in, tunnels and health events out.

Theory of operation
-------------------
* Inputs, all with ``now`` (core time: monotonic for a live kernel, the capture's clock for a replay; kernel wall-clock
  timestamps are converted with ``wall_skew``, see ``monitor.health.engine``):
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
  never flaps. A dump is no snapshot (the kernel links new SAs at the head of the list the dump walks
  from the head: it lists the newest first and misses SAs added meanwhile); the source hands on the
  notifications queued before a dump's end first (``monitor.sources.kernel``).
* **Rekeys.** A soft EXPIRE of the newest SA of a direction starts a rekey (deadline: its hard
  expiry). A new generation starts one implicitly (libreswan sets no time lifetimes; an overrun may
  have eaten the soft EXPIRE): a new SA in a direction that already has one while the tunnel holds
  both, or a new *outbound* SA where an outbound SA was (still live, or lost since the overrun). So
  each outbound generation change is one rekey, also when only a resync dump shows the new pair, in
  either order. When the newest SA of both directions is newer than the rekey's start, the rekey
  is complete. Old SAs deleted later (strongSwan waits ~5 s) have a successor, so that is no failure.
  A hard EXPIRE or a DELSA of the newest SA of a direction with no successor fails the rekey; between
  an overrun and its resync dump's end that judgement is held (``NetnsState.held``) and made at that
  end, after the reconciliation: a direction still empty fails the rekey once (the removal's reason),
  one whose successor showed (in the dump or in events) fails nothing.
* **State** is evaluated (``_evaluate``) from the evidence into a ``Trigger``, and moved through
  ``monitor.health.tunnel.TRANSITIONS``. Evaluation of touched tunnels is deferred to the end of each
  ``on_events`` batch (or dump), so a batch never produces an intermediate flap.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from typing import Any

from monitor.health.engine import INF, NLM_MULTI, DumpKind
from monitor.health.model import (
    STATE_CHANGED,
    TUNNEL_DOWN,
    HealthConfig,
    HealthEvent,
)
from monitor.health.nsstate import NetnsState, apply_xfrm_stat, run_lint
from monitor.health.refresh import Refreshing, Split
from monitor.health.tunnel import Tunnel, TunnelState
from monitor.health.views import Views
from monitor.wire.events import (
    Acquire,
    AsyncEvent,
    Event,
    NatMapping,
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

__all__ = ["Correlator", "DumpKind"]


class Correlator(Views, Refreshing):
    """Pure tunnel health state machine. See the module docstring for the rules."""

    def __init__(self, config: HealthConfig | None = None) -> None:
        """Args:
        config: thresholds; the defaults of ``HealthConfig`` when omitted.
        """
        super().__init__(config)
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

    @property
    def loading(self) -> bool:
        """True while some netns is in its quiet initial load (first SA or policy dump not ended yet)."""
        return any(ns.loading or ns.ploading for ns in self._ns.values())

    def on_events(self, netns: str, events: Sequence[Event], now: float) -> None:
        """Apply decoded events of one netns (notifications and dump records alike)."""
        ns = self._netns(netns, now)
        handlers = self._handlers
        if netns in self._digested:
            forget = self._forget_digest
            for ev in events:
                forget(ns, ev)
        if ns.loading:
            # initial load: a dump record of an SA not held yet goes straight to ``_load_sa``
            # (what ``_ev_sa_added`` would do, without its call and lookups); anything else as usual
            sas, load = ns.sas, self._load_sa
            for ev in events:
                if ev.__class__ is SAAdded and ev.nl.flags & NLM_MULTI and not ns.tombstones:
                    sa = ev.sa
                    key = (sa.spi, sa.daddr, sa.proto)
                    if key not in sas and load(ns, key, sa, now):
                        continue
                h = handlers.get(ev.__class__)
                if h is not None:
                    h(ns, ev, now)
        else:
            for ev in events:
                h = handlers.get(ev.__class__)
                if h is not None:
                    h(ns, ev, now)
        if not ns.deferring:
            self._flush(ns, now)

    def on_refresh(self, netns: str, split: Split, events: Sequence[Event], now: float) -> None:
        """``on_events`` for a dump datagram split by ``monitor.health.refresh.split_refresh``: its unchanged SAs
        (their record is the one last applied) are only stamped and volume-checked, then ``events`` (the split's
        events before the dump's end) are applied; see ``Refreshing._refresh_apply``."""
        ns = self._refresh_apply(netns, split, events, now)
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
                if ns.held:
                    self._judge_held(ns, now)
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
        self._drop_digests(ns)  # no digest outlives lost events
        ns.resync = True
        ns.sa_dump_begin = None
        ns.pol_dump_begin = None
        ns.resyncs += 1

    def on_netns_removed(self, netns: str, now: float) -> None:
        """The netns is gone: its up tunnels go down (reason ``netns_removed``) and all are dropped."""
        ns = self._ns.pop(netns, None)
        self._digested.discard(netns)  # its SAs (and their digests) go with it
        if ns is None:
            return
        for t in list(ns.tunnels.values()):
            if t.state is not TunnelState.DOWN:
                old = t.state
                r = self._reason("netns_removed")
                t.state, t.since, t.reasons = TunnelState.DOWN, now, (r,)
                t.flaps += 1
                self._emit(now, STATE_CHANGED, t, {"from": str(old), "to": "down", "reasons": [r.to_json()]})
                self._emit(now, TUNNEL_DOWN, t, {"reason": r.code, "text": r.text, "from": str(old)})
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
                    ns.lint_at = INF
                    ns.lint_dirty = False
                    self._lint(ns, now)
                continue
            t = self._tunnels.get(key)
            if t is None or t.timer_at != when:
                continue
            t.timer_at = INF
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
                    and now - max(t.since, t.policies_gone) >= self.config.forget_after:
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
                self._settle(t, now)

    def _flush(self, ns: NetnsState, now: float) -> None:
        if ns.split_pairs and not ns.deferring:
            self._join_halves(ns, now)
        if ns.pending:
            pending, ns.pending = ns.pending, set()
            for t in pending:
                if t.id in self._tunnels:
                    self._settle(t, now)
        if ns.lint_dirty and ns.lint_at == INF and not ns.deferring:
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
        if ns.split_pairs and not ns.deferring:
            self._join_halves(ns, now, announce=not initial)
        if initial and not ns.quiet and ns.pending:
            # quiet loading is over: set every state without events
            pending, ns.pending = ns.pending, set()
            tunnels, settle = self._tunnels, self._settle
            # in creation order, not the set's (address) order: memory locality over 100k tunnels, and
            # a quiet evaluation touches only its own tunnel, so the order changes nothing else
            order = [u for u in ns.tunnels.values() if u in pending] if len(pending) * 2 > len(ns.tunnels) else pending
            for t in order:
                if t.id in tunnels:
                    settle(t, now, True)
        if ok and self._restore and ns.name in self._restore:
            self._restore_netns(ns, now)
        if ok and (initial or resync):
            self._seq += 1
            self._events.append(HealthEvent(self._seq, now + self.wall_skew, "resync", None, ns.name, {
                "reason": "initial" if initial else "resync", "kind": kind, "tunnels": len(ns.tunnels),
                "sas": len(ns.sas), "policies": len(ns.policies),
                "removed": ns.last_removed if kind == "sa" else 0}, now))

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

    def _lint(self, ns: NetnsState, now: float) -> None:
        for t in run_lint(ns, self.config, now):
            self._dirty.add(t.id)
            self._schedule(t, now)

