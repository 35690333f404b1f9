"""SA event handlers of the correlator (pure): SA generations, rekeys, expiry and removal.

Counters are in ``monitor.health.counters``, policies, ACQUIREs and NAT mappings in
``monitor.health.policies``; ``Lifecycle`` joins them.

See ``monitor.health.correlate`` for the rules these handlers implement. After an overrun (issue 18) the
events read are an incomplete view: a new pair's notifications may be lost while the old SAs' DELSAs are
read, and the resync dump lists the new outbound SA before the new inbound one. Hence: a rekey is the
*outbound generation change* (a new outbound SA where one was, live or lost since the overrun), counted once
per new pair whatever shows it; and a removal that empties a direction before the resync dump's end is held
(``NetnsState.held``) and judged at that end (``_judge_held``), where the dump's truth decides.
"""

from __future__ import annotations

from monitor.health.counters import U64_MAX, Counters
from monitor.health.engine import _STR, ANY_PROTO, NLM_MULTI, intern_str, spi_list
from monitor.health.halves import Halves
from monitor.health.nsstate import Held, NetnsState
from monitor.health.policies import Policies
from monitor.health.sastate import DIR_IN, DIR_OUT, SAState, algs_of
from monitor.health.tunnel import Tunnel
from monitor.wire import xfrm as X
from monitor.wire.events import (
    SA,
    AsyncEvent,
    SAAdded,
    SADeleted,
    SAExpired,
    SAFlushed,
    SAUpdated,
)

__all__ = ["Lifecycle"]


class Lifecycle(Counters, Policies, Halves):
    """Applies decoded XFRM events to SAs, policies and tunnels (counters and policies: the mixins)."""

    # ------------------------------------------------------------------ SAs

    def _ev_sa_added(self, ns: NetnsState, ev: SAAdded, now: float) -> None:
        sa = ev.sa
        if ev.nl.flags & NLM_MULTI:
            # dump record fast path: update in place
            key = (sa.spi, sa.daddr, sa.proto)
            st = ns.sas.get(key)
            if st is not None:
                self._bump(ns, st, sa, now)
                if st.gen != ns.gen:
                    st.gen = ns.gen
                    ns.seen += 1
                return
            if ns.loading and not ns.tombstones and self._load_sa(ns, key, sa, now):
                return
            self._upsert(ns, sa, now, record=True)
        else:
            self._upsert(ns, sa, now, record=False)

    def _ev_sa_updated(self, ns: NetnsState, ev: SAUpdated, now: float) -> None:
        self._upsert(ns, ev.sa, now, record=bool(ev.nl.flags & NLM_MULTI))

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

    def _lifetimes(self, st: SAState, sa: SA) -> None:
        st.set_lifetimes((float(sa.cur.add_time) - self.wall_skew) if sa.cur.add_time else st.add_time, sa.lft)

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
        auth = sa.auth_trunc or sa.auth
        st.algs = algs_of(intern_str(sa.enc.name) if sa.enc else None, intern_str(auth.name) if auth else None,
                          intern_str(sa.aead.name) if sa.aead else None)
        st.add_time = (float(sa.cur.add_time) - self.wall_skew) if sa.cur.add_time else now
        self._lifetimes(st, sa)
        was_established = bool(t.sas) and self._established(t)
        older = any(o.dir == st.dir for o in t.sas)
        # an outbound SA lost since an overrun (its successor's notifications may have been lost with it)
        held = ns.held.get(t) if ns.held and announce and st.dir == DIR_OUT else None
        lost_out = held.out_spi if held is not None else 0
        if held is not None and lost_out:
            ns.held[t] = held._replace(out_spi=0)
        # a new generation: a new SA where the tunnel had both directions, or a new outbound SA where one was
        renewed = (older and (was_established or st.dir == DIR_OUT)) or bool(lost_out)
        # a replacement without soft expire (libreswan, or a soft EXPIRE lost) starts a rekey: the generation
        # it replaces is the newest pair before ``st`` joins it
        replaced = t.newest_pair() if renewed and t.rk_start is None and announce and not ns.quiet else None
        ns.sas[key] = st
        t.sas.append(st)
        t.had_sa = True
        last_in, last_out = t.last_in_ts, t.last_out_ts
        self._bump(ns, st, sa, now)
        if ns.quiet:  # initial load: history unknown; XFRMA_LASTUSED (if any) says when traffic last moved
            used = (float(sa.lastused) - self.wall_skew) if sa.lastused else now
            t.last_in_ts, t.last_out_ts = last_in, last_out
            if st.dir == DIR_IN:
                t.last_in_ts = max(last_in, used)
            else:
                t.last_out_ts = max(last_out, used)
        if not announce:
            return st
        if (t.acq_deadline is not None or t.acq_count) and self._established(t):
            t.acq_deadline, t.acq_count = None, 0  # the ACQUIREs were answered: no stale repeated_acquire
        if not ns.quiet:
            self._emit(now, "sa_added", t, {"spi": f"0x{sa.spi:08x}", "direction": "in" if st.dir == DIR_IN else "out",
                                            "src": sa.saddr, "dst": sa.daddr, "reqid": sa.reqid,
                                            "enc": st.enc, "auth": st.auth, "aead": st.aead})
        if renewed and not ns.quiet:
            if replaced is not None:  # a replacement without soft expire: a rekey too
                # ``st``'s generation: the SAs the kernel installed with it (within a second). A resync dump
                # after lost events may list the new inbound SA before ``st``; it is new, not replaced: the
                # rekey completes once both directions hold an SA newer than every SA of the old generation.
                old = [o for o in t.sas if o is not st and o.add_time < st.add_time - 1.0]
                t.rk_start, t.rk_soft = now, False
                t.rk_mark = max(o.order for o in old) if old else 0
                t.rk_old = tuple(o.spi for o in replaced if o is not None and (not old or o in old))
                if lost_out and replaced[1] is None:
                    t.rk_old += (lost_out,)
            self._check_rekey(t, now)
        elif t.rk_start is not None:
            self._check_rekey(t, now)
        self._touch(ns, t)
        return st

    def _load_sa(self, ns: NetnsState, key: tuple[int, str, int], sa: SA, now: float) -> bool:
        """``_upsert`` of a new dump record during a quiet initial load (``ns.loading``), no tombstones.

        The same state as ``_new_sa`` + ``_upsert`` leave in that case, with what a quiet load does
        not need left out: no events (``_emit`` drops them while quiet), no rekey-start checks (they
        need ``not ns.quiet``), no per-SA evaluation (the tunnel is evaluated once at dump end), and
        each shared set is touched once. ``tests/test_correlate_load.py`` checks it against ``_new_sa``.
        Returns False (nothing done) for a larval SA, which ``_upsert`` ignores too.
        """
        enc, aead, auth = sa.enc, sa.aead, sa.auth_trunc or sa.auth
        if enc is None and aead is None and auth is None:  # SA.larval
            return False
        saddr, daddr, reqid = sa.saddr, sa.daddr, sa.reqid
        if_id = sa.if_id or 0
        mark = sa.mark.value if sa.mark else 0
        t = ns.tunnels.get((reqid, if_id, mark, saddr, daddr) if saddr <= daddr else (reqid, if_id, mark, daddr, saddr))
        if t is None:
            t = self._tunnel(ns, reqid, if_id=if_id, mark=mark, a=saddr, b=daddr, now=now)
        sa_dir = sa.sa_dir
        if sa_dir == DIR_IN:
            local: str | None = daddr
        elif sa_dir == DIR_OUT:
            local = saddr
        elif not t.local_known:
            local = daddr if daddr in ns.locals else saddr if saddr in ns.locals else None
        else:
            local = None
        if local is not None and not (t.local_known and t.local == local and local in ns.locals):
            self._learn_local(ns, t, local)
        self._order += 1
        st = SAState(sa.spi, daddr, saddr, sa.proto, t, self._order)
        if sa_dir not in (DIR_IN, DIR_OUT):
            sa_dir = DIR_IN if daddr == t.local else DIR_OUT
        st.dir = sa_dir
        st.algs = algs_of(None if enc is None else _STR.get(enc.name) or intern_str(enc.name),
                          None if auth is None else _STR.get(auth.name) or intern_str(auth.name),
                          None if aead is None else _STR.get(aead.name) or intern_str(aead.name))
        cur = sa.cur
        st.set_lifetimes((float(cur.add_time) - self.wall_skew) if cur.add_time else now, sa.lft)
        ns.sas[key] = st
        t.sas.append(st)
        t.had_sa = True
        # _bump / _count on a fresh SA; the last-traffic times come from XFRMA_LASTUSED below instead
        nbytes, npackets = cur.bytes, cur.packets
        if nbytes > 0 or npackets > 0:
            if nbytes > 0:
                st.bytes = nbytes
            else:
                nbytes = 0
            if npackets > 0:
                st.packets = npackets
            else:
                npackets = 0
            if sa_dir == DIR_IN:
                if now - t.last_in_ts >= self.config.one_way_after:
                    t.in_since = now  # as Counters._count does
                t.bytes_in += nbytes
                t.packets_in += npackets
                t.d_bi += nbytes
                t.d_pi += npackets
            else:
                t.bytes_out += nbytes
                t.packets_out += npackets
                t.d_bo += nbytes
                t.d_po += npackets
            if t.bytes_in > U64_MAX or t.bytes_out > U64_MAX or t.packets_in > U64_MAX or t.packets_out > U64_MAX:
                self._cap_totals(st, now)
            ns.changed.add(t)
        stats = sa.stats
        replay = stats.replay + stats.replay_window
        if replay > 0 or stats.integrity_failed > 0:
            self._errors(ns, st, replay, stats.integrity_failed, now)
        lastused = sa.lastused
        if lastused:
            if lastused > 0:
                st.lastused = lastused
            used = float(lastused) - self.wall_skew
        else:
            used = now
        if sa_dir == DIR_IN:
            t.last_in_ts = max(t.last_in_ts, used)
        else:
            t.last_out_ts = max(t.last_out_ts, used)
        self._details(ns, st, sa, now)
        if (t.acq_deadline is not None or t.acq_count) and self._established(t):
            t.acq_deadline, t.acq_count = None, 0
        if t.rk_start is not None:
            self._check_rekey(t, now)
        ns.pending.add(t)
        self._dirty.add(t.id)
        if ns.sa_dump_begin is not None:
            st.gen = ns.gen
            ns.seen += 1
        return True

    def _check_rekey(self, t: Tunnel, now: float) -> None:
        nin, nout = t.newest(DIR_IN), t.newest(DIR_OUT)
        if t.rk_start is None or nin is None or nout is None or nin.order <= t.rk_mark or nout.order <= t.rk_mark:
            return
        old_spis = [f"0x{s:08x}" for s in t.rk_old]
        new_spis = spi_list((nin, nout))
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
            fail = t.rk_start is not None or (hard and was_up)  # one failure per lost rekey, not per SA
            if ns.resync:  # after an overrun the successor's notifications may be lost: the resync dump decides
                h = ns.held.get(t)
                out = st.spi if st.dir == DIR_OUT else 0
                ns.held[t] = Held(cause, st.spi, fail, out) if h is None else Held(
                    h.cause if h.fail else cause, h.spi if h.fail else st.spi, h.fail or fail, out or h.out_spi)
            elif fail:
                self._fail_rekey(t, now, cause, st.spi)
        self._touch(ns, t)

    def _fail_rekey(self, t: Tunnel, now: float, cause: str, spi: int) -> None:
        t.rekey_failures += 1
        self._emit(now, "rekey_failed", t, {"reason": cause, "spi": f"0x{spi:08x}", "started": t.rk_start,
                                            "rekey_failures": t.rekey_failures})
        t.rk_start = None
        t.rk_old = ()

    def _judge_held(self, ns: NetnsState, now: float) -> None:
        """At the resync dump's end (after its reconciliation): a tunnel that lost a direction after the
        overrun and still lacks one fails the rekey it was in (once); one whose successor showed is fine."""
        held, ns.held = ns.held, {}
        for t, h in held.items():
            if h.fail and self._tunnels.get(t.id) is t and not self._established(t):
                self._fail_rekey(t, now, h.cause, h.spi)
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
            if ev.proto in ANY_PROTO or st.proto == ev.proto:
                self._remove_sa(ns, st, now, "flushed")
