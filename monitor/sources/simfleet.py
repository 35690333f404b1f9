"""A simulated IPsec fleet, pure and clock-free: ``Fleet(seed).step(now) -> list[SourceItem]``.

Theory of operation
-------------------
The fleet is one gateway (``192.0.2.1``) with N CHILD_SAs to peers in the documentation ranges.
Each tunnel owns an inbound/outbound SA pair and out/in/fwd policies, managed the way strongSwan
manages them (``shared/reference/xfrm-netlink.md`` section 4.1). Nothing here is a shortcut into
the monitor: every change is *encoded* into the kernel's netlink byte layout with ``monitor.wire.encode``
(the records are built in ``monitor.sources.simfleet_kernel``) and handed out as ``Datagram`` items,
so the real decoder, pipeline and correlator see it exactly as they would see the kernel.

Time is an argument. ``step(now)`` runs every scheduled action whose time is ``<= now`` in time
order and returns the datagrams they produced, each stamped with its own action time. Traffic is
continuous: an SA's counters are integrated lazily (``bytes += rate * dt``) whenever a message
about it is built. ``next_time()`` tells a driver when to call ``step`` again.

Scripted lifecycles (tunnel index -> role; the rest are ``healthy``):

* ``healthy``: traffic both ways; strongSwan-order rekeys with per-SA jitter (soft EXPIRE,
  UPDSA new in, NEWSA new out, UPDPOLICY out, DELSA old out, DELSA old in 5 s later).
* ``idle`` (the FAQ's AWS story): no traffic; the peer tears it down after ``idle_teardown``
  (DELSA both), traffic from our side later hits the trap policy (ACQUIRE) and it comes back.
* ``oneway``: out bytes grow, in bytes stay flat.
* ``dies``: the peer dies (DPD: DELSA both), ACQUIREs repeat while the larval state times out
  (EXPIRE hard, SPI 0, every ``acq_expires``), then the tunnel comes back.
* ``failrekey``: every other rekey fails: soft EXPIRE, no successor, hard EXPIRE (no DELSA).
* ``nat``: NAT-T (UDP encap); the peer's NAT mapping changes (MAPPING with a new source port).
* ``errors``: replay and integrity-check failures rise on the inbound SA.
"""

from __future__ import annotations

import functools
import heapq
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from monitor.sources.items import Control, Datagram, SourceItem
from monitor.sources.simfleet_kernel import (
    CHARON_PID,
    LOCAL,
    MONITOR_PID,
    POLICY_FWD,
    POLICY_IN,
    POLICY_OUT,
    SimSA,
    SimTunnel,
    dump_datagrams,
    policy_record,
    sa_record,
    touch,
)
from monitor.wire import xfrm as X
from monitor.wire.encode import encode
from monitor.wire.events import (
    Acquire,
    Event,
    NatMapping,
    NlHeader,
    PolicyAdded,
    PolicyUpdated,
    SAAdded,
    SADeleted,
    SAExpired,
    SAId,
    SAUpdated,
    Selector,
)

__all__ = ["ROLES", "Fleet", "FleetConfig", "outer_addresses"]

ROLES = ("healthy", "idle", "oneway", "dies", "failrekey", "nat", "errors")


def outer_addresses(n: int) -> list[str]:
    """Peer addresses from the documentation ranges (RFC 5737), reused round-robin past 508."""
    pool = [f"198.51.100.{i}" for i in range(1, 255)] + [f"203.0.113.{i}" for i in range(1, 255)]
    return [pool[i % len(pool)] for i in range(n)]


@dataclass
class FleetConfig:
    """Knobs of the simulated fleet; times are simulated seconds."""

    tunnels: int = 24
    netns: str = "sim"
    rekey_time: float = 900.0  # swanctl rekey_time (scaled down from 3600 so a demo shows rekeys)
    life_time: float = 1260.0  # hard expiry 360 s after rekey_time, as swanctl's defaults have it
    rand_time: float = 90.0  # soft expiry jitter, drawn per SA
    fail_lifetimes: tuple[float, float, float] = (240.0, 400.0, 20.0)  # the failrekey tunnel's, shorter
    dump_interval: float = 10.0  # how often the monitor dumps SAs (GETSA)
    delete_rekeyed_delay: float = 5.0  # charon.delete_rekeyed_delay
    acq_expires: float = 30.0  # net.core.xfrm_acq_expires
    idle_teardown: float = 420.0  # the idle tunnel's peer drops it after this long without traffic
    outage: float = 75.0  # how long a dying tunnel stays down
    nat_interval: float = 120.0  # mean time between NAT mapping changes
    policies: bool = True  # dump policies (GETPOLICY) after each SA dump, as KernelSource does


class Fleet:
    """The simulated fleet. Deterministic for a given seed, config and sequence of ``step`` times."""

    def __init__(self, seed: int = 0, config: FleetConfig | None = None, start: float | None = None) -> None:
        """Create the fleet; ``start`` (wall-clock seconds) defaults to the first ``step`` time."""
        self.config = config or FleetConfig()
        self.rng = random.Random(seed)  # noqa: S311 - a reproducible simulation, not crypto
        self.start = start
        self._queue: list[tuple[float, int, Callable[[float], None]]] = []
        self._counter = 0
        self._out: list[SourceItem] = []
        self._spis: set[int] = set()
        self._nlseq = 1000  # charon's request sequence numbers
        self._dumpseq = 1  # our own dump request sequence numbers
        self._acqseq = 0
        self.tunnels: list[SimTunnel] = []
        self.stat: dict[str, int] = {"XfrmInStateSeqError": 0, "XfrmInStateProtoError": 0,
                                     "XfrmOutNoStates": 0, "XfrmInNoStates": 0}
        if start is not None:
            self._build(start)

    # --- public driver interface ----------------------------------------------------------------

    def step(self, now: float) -> list[SourceItem]:
        """Run every action due at or before ``now``; return the items produced, oldest first."""
        if self.start is None:
            self.start = now
            self._build(now)
        while self._queue and self._queue[0][0] <= now:
            t, _, action = heapq.heappop(self._queue)
            action(t)
        out, self._out = self._out, []
        return out

    def next_time(self) -> float | None:
        """When the next scheduled action is due (``None`` before the first ``step``)."""
        return self._queue[0][0] if self._queue else None

    def current_sas(self) -> Iterator[tuple[SimTunnel, SimSA]]:
        """Every SA the kernel would list in a dump right now (for tests and docs)."""
        for tun in self.tunnels:
            for sa in tun.sas:
                if sa.alive:
                    yield tun, sa
            if tun.larval is not None and tun.larval.alive:
                yield tun, tun.larval

    # --- scheduling -------------------------------------------------------------------------------

    def _at(self, t: float, action: Callable[[float], None]) -> None:
        self._counter += 1
        heapq.heappush(self._queue, (t, self._counter, action))

    def _emit(self, t: float, *events: Event) -> None:
        # multicast notifications arrive one message per datagram
        for ev in events:
            self._out.append(Datagram(self.config.netns, encode(ev), t))

    def _charon(self, mtype: int) -> NlHeader:
        self._nlseq += 1
        return NlHeader(mtype, 0, self._nlseq, CHARON_PID)

    def _new_spi(self) -> int:
        while True:
            spi = self.rng.randrange(0xC0000000, 0xD0000000)  # charon's ALLOCSPI range
            if spi not in self._spis:
                self._spis.add(spi)
                return spi

    # --- building the fleet -------------------------------------------------------------------------

    def _build(self, start: float) -> None:
        cfg, rng = self.config, self.rng
        remotes = outer_addresses(cfg.tunnels)
        for i in range(cfg.tunnels):
            role = ROLES[i] if 0 < i < len(ROLES) else "healthy"
            mbit = rng.choice((0.05, 0.2, 1.0, 4.0, 12.0)) * 125_000
            tun = SimTunnel(
                index=i, role=role, reqid=i + 1, remote=remotes[i],
                local_net=f"10.0.{i // 256}.{i % 256}",
                remote_net=f"10.{1 + i // 256}.{i % 256}.0",
                aead=i % 2 == 0,
                encap_sport=4500 if role == "nat" or i % 3 == 2 else None,
                if_id=i + 1 if i % 5 == 4 else None,
                rate_in=0.0 if role in ("idle", "oneway") else mbit * rng.uniform(0.5, 1.5),
                rate_out=0.0 if role == "idle" else mbit * rng.uniform(0.3, 1.2),
                policy_added=start - 3600,
            )
            self.tunnels.append(tun)
            # spread the SA ages so rekeys are spread over the first rekey interval
            age = rng.uniform(0.0, cfg.rekey_time - cfg.rand_time)
            if role == "failrekey":
                rekey, _, rand = cfg.fail_lifetimes
                age = rekey - rand - 30.0  # first (failing) rekey ~30-50 s in
            self._install(tun, start - age, notify=False)
            if role == "idle":
                for sa in tun.sas:
                    sa.lastused = sa.use_time = start - age
            if role == "oneway":
                tun.sas[0].use_time = tun.sas[0].lastused = 0.0
        for tun in self.tunnels:
            self._schedule_role(tun, start)
        self._at(start, self._dump_sas)

    def _schedule_role(self, tun: SimTunnel, start: float) -> None:
        cfg, rng = self.config, self.rng
        if tun.role == "idle":
            self._at(start + cfg.idle_teardown, lambda t: self._teardown(tun, t, then_idle=True))
        elif tun.role == "dies":
            self._at(start + rng.uniform(50, 80), lambda t: self._teardown(tun, t, then_idle=False))
        elif tun.role == "nat":
            self._at(start + rng.uniform(20, 40), lambda t: self._nat_change(tun, t))
        elif tun.role == "errors":
            self._at(start + rng.uniform(5, 15), lambda t: self._errors(tun, t))

    def _make_sa(self, tun: SimTunnel, inbound: bool, add_time: float) -> SimSA:
        cfg, rng = self.config, self.rng
        rekey, life, rand = (cfg.fail_lifetimes if tun.role == "failrekey"
                             else (cfg.rekey_time, cfg.life_time, cfg.rand_time))
        soft = rekey - rng.uniform(0.0, rand)  # jitter drawn per SA install
        rate = tun.rate_in if inbound else tun.rate_out
        sa = SimSA(spi=self._new_spi(), inbound=inbound, add_time=add_time, soft=soft, hard=life,
                 rate=rate, pkt_size=rng.choice((120, 600, 1200, 1400)), last=add_time)
        if rate > 0:
            sa.use_time = add_time + 0.1
        self._at(add_time + soft, lambda t: self._soft(tun, sa, t))
        self._at(add_time + life, lambda t: self._hard(tun, sa, t))
        return sa

    def _install(self, tun: SimTunnel, t: float, notify: bool = True) -> None:
        """A new CHILD_SA: UPDSA new inbound, NEWSA new outbound, UPDPOLICY out (new SPI)."""
        for sa in tun.sas:
            sa.current = False
        new_in, new_out = self._make_sa(tun, True, t), self._make_sa(tun, False, t)
        tun.sas += [new_in, new_out]
        tun.up, tun.rekeying = True, False
        if tun.larval is not None:  # xfrm_state_add() deletes the acquire state silently
            tun.larval.alive = False
            tun.larval = None
        if notify:
            self._emit(t, SAUpdated(self._charon(X.XFRM_MSG_UPDSA), sa_record(tun, new_in, t, self._acqseq)),
                       SAAdded(self._charon(X.XFRM_MSG_NEWSA), sa_record(tun, new_out, t, self._acqseq)),
                       PolicyUpdated(self._charon(X.XFRM_MSG_UPDPOLICY), policy_record(tun, POLICY_OUT)))

    # --- lifecycle actions -----------------------------------------------------------------------------

    def _soft(self, tun: SimTunnel, sa: SimSA, t: float) -> None:
        if not sa.alive:
            return
        self._emit(t, SAExpired(NlHeader(X.XFRM_MSG_EXPIRE), sa_record(tun, sa, t, self._acqseq), False))
        if not sa.current or tun.rekeying:
            return  # the peer direction's soft expire, or an old SA awaiting deletion
        tun.rekeying = True
        if tun.role == "failrekey" and tun.rekeys % 2 == 0:
            tun.rekeys += 1  # counts attempts; this one gets no successor and hard-expires
            return
        self._at(t + self.rng.uniform(0.3, 2.0), lambda t2: self._rekeyed(tun, t2))

    def _rekeyed(self, tun: SimTunnel, t: float) -> None:
        old = [sa for sa in tun.sas if sa.alive and sa.current]
        if not old:
            return
        tun.rekeys += 1
        for sa in old:
            touch(sa, t)  # before _install stops their traffic
        self._install(tun, t)
        for sa in old:
            if not sa.inbound:
                self._delete(tun, sa, t)
            else:
                self._at(t + self.config.delete_rekeyed_delay, functools.partial(self._delete, tun, sa))

    def _delete(self, tun: SimTunnel, sa: SimSA, t: float) -> None:
        if not sa.alive:
            return
        touch(sa, t)
        full = sa_record(tun, sa, t, self._acqseq)
        sa.alive = False
        self._emit(t, SADeleted(self._charon(X.XFRM_MSG_DELSA),
                                SAId(full.daddr, sa.spi, X.AF_INET, X.IPPROTO_ESP), full))
        tun.sas = [s for s in tun.sas if s.alive]

    def _hard(self, tun: SimTunnel, sa: SimSA, t: float) -> None:
        if not sa.alive:
            return
        touch(sa, t)
        full = sa_record(tun, sa, t, self._acqseq)
        sa.alive = False  # the kernel deletes it and sends only EXPIRE(hard=1)
        tun.sas = [s for s in tun.sas if s.alive]
        self._emit(t, SAExpired(NlHeader(X.XFRM_MSG_EXPIRE), full, True))
        if not any(s.current for s in tun.sas) and tun.up:
            tun.up = False
            self._at(t + self.rng.uniform(1.0, 4.0), lambda t2: self._acquire(tun, t2))
            self._at(t + self.config.outage / 2, lambda t2: self._back(tun, t2))

    def _teardown(self, tun: SimTunnel, t: float, then_idle: bool) -> None:
        """The peer deletes the CHILD_SA (idle timeout or DPD): charon DELSAs both directions."""
        for sa in sorted(tun.sas, key=lambda s: s.inbound):  # out first, as remove_outbound does
            self._delete(tun, sa, t)
        tun.up = False
        delay = self.config.outage * (0.8 if then_idle else 1.0)
        self._at(t + self.rng.uniform(2.0, 6.0), lambda t2: self._acquire(tun, t2))
        self._at(t + delay, lambda t2: self._back(tun, t2))

    def _acquire(self, tun: SimTunnel, t: float) -> None:
        """Outbound traffic hits the trap policy: ACQUIRE and a larval SPI-0 state."""
        if tun.up or tun.larval is not None:
            return
        self._acqseq += 1
        self.stat["XfrmOutNoStates"] += self.rng.randint(1, 20)
        tun.larval = SimSA(spi=0, inbound=False, add_time=t, soft=0, hard=self.config.acq_expires,
                         rate=0.0, pkt_size=0, larval=True, last=t, current=False)
        pol = policy_record(tun, POLICY_OUT)
        self._emit(t, Acquire(NlHeader(X.XFRM_MSG_ACQUIRE), tun.remote, 0, X.IPPROTO_ESP, LOCAL,
                              Selector(f"{tun.remote_net[:-1]}1", f"{tun.local_net}", family=X.AF_INET,
                                       prefixlen_d=32, prefixlen_s=32, proto=1),
                              pol, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, self._acqseq,
                              templates=pol.templates, policy_type=0, if_id=tun.if_id))
        larval = tun.larval
        self._at(t + self.config.acq_expires, lambda t2: self._larval_expired(tun, larval, t2))

    def _larval_expired(self, tun: SimTunnel, larval: SimSA, t: float) -> None:
        if not larval.alive:
            return
        larval.alive = False
        tun.larval = None
        self._emit(t, SAExpired(NlHeader(X.XFRM_MSG_EXPIRE), sa_record(tun, larval, t, self._acqseq), True))
        self._at(t + 0.5, lambda t2: self._acquire(tun, t2))  # traffic keeps knocking

    def _back(self, tun: SimTunnel, t: float) -> None:
        """The peer answers again: a fresh CHILD_SA (and the idle tunnel gets some traffic)."""
        if tun.up:
            return
        if tun.role == "idle":
            tun.rate_in = tun.rate_out = 20.0  # a ping every few seconds from the app server
            self._install(tun, t)
            self._at(t + 60.0, lambda t2: self._go_idle(tun, t2))
            return
        self._install(tun, t)
        if tun.role == "dies":
            self._at(t + self.rng.uniform(200, 300), lambda t2: self._teardown(tun, t2, then_idle=False))

    def _go_idle(self, tun: SimTunnel, t: float) -> None:
        for sa in tun.sas:
            touch(sa, t)
            sa.rate = 0.0
        tun.rate_in = tun.rate_out = 0.0
        self._at(t + self.config.idle_teardown, lambda t2: self._teardown(tun, t2, then_idle=True))

    def _nat_change(self, tun: SimTunnel, t: float) -> None:
        inbound = [sa for sa in tun.sas if sa.alive and sa.current and sa.inbound]
        if inbound and tun.encap_sport is not None:
            new_port = self.rng.randrange(20000, 60000)
            self._emit(t, NatMapping(NlHeader(X.XFRM_MSG_MAPPING), SAId(LOCAL, inbound[0].spi, X.AF_INET,
                                                                         X.IPPROTO_ESP),
                                     tun.reqid, tun.remote, tun.remote, tun.encap_sport, new_port))
            tun.encap_sport = new_port
        self._at(t + self.rng.uniform(0.5, 1.5) * self.config.nat_interval, lambda t2: self._nat_change(tun, t2))

    def _errors(self, tun: SimTunnel, t: float) -> None:
        for sa in tun.sas:
            if sa.alive and sa.current and sa.inbound:
                replay, integrity = self.rng.randint(1, 12), self.rng.randint(0, 4)
                sa.replay_errs += replay
                sa.integrity_errs += integrity
                self.stat["XfrmInStateSeqError"] += replay
                self.stat["XfrmInStateProtoError"] += integrity
        self._at(t + self.rng.uniform(8, 25), lambda t2: self._errors(tun, t2))

    # --- dumps ------------------------------------------------------------------------------------------

    def _dump(self, t: float, request_type: int, records: list[bytes]) -> None:
        self._dumpseq += 1
        self._out.extend(dump_datagrams(self.config.netns, request_type, self._dumpseq, records, t))

    def _dump_sas(self, t: float) -> None:
        """A periodic GETSA dump: request, NLM_F_MULTI NEWSA records with counters, NLMSG_DONE."""
        seq = self._dumpseq + 1
        nl = NlHeader(X.XFRM_MSG_NEWSA, X.NLM_F_MULTI, seq, MONITOR_PID)
        records = []
        for tun, sa in self.current_sas():
            touch(sa, t)
            records.append(encode(SAAdded(nl, sa_record(tun, sa, t, self._acqseq))))
        self._dump(t, X.XFRM_MSG_GETSA, records)
        if self.config.policies:
            self._dump_policies(t)
        self._out.append(Control(self.config.netns, "xfrm_stat", t, counters=dict(self.stat)))
        self._drift(t)
        self._at(t + self.config.dump_interval, self._dump_sas)

    def _dump_policies(self, t: float) -> None:
        seq = self._dumpseq + 1
        nl = NlHeader(X.XFRM_MSG_NEWPOLICY, X.NLM_F_MULTI, seq, MONITOR_PID)
        records = [encode(PolicyAdded(nl, policy_record(tun, d)))
                   for tun in self.tunnels for d in (POLICY_OUT, POLICY_IN, POLICY_FWD)]
        self._dump(t, X.XFRM_MSG_GETPOLICY, records)

    def _drift(self, t: float) -> None:
        """Traffic varies: each active SA's rate takes a bounded random walk."""
        for tun in self.tunnels:
            for sa in tun.sas:
                if sa.current and sa.rate > 0:
                    touch(sa, t)
                    base = tun.rate_in if sa.inbound else tun.rate_out
                    sa.rate = min(max(sa.rate * self.rng.uniform(0.8, 1.25), base * 0.3), base * 3)

