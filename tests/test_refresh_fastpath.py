"""Differential tests of the skip-unchanged refresh (``monitor.health.refresh``): the same items through a
``Pipeline`` with the fast path on and off give the same tunnels, events, counters and deadlines.

Health events are compared by their ``seq`` list, as a sorted multiset of ``(type, tunnel, detail)`` and
per tunnel in order: the order *between* tunnels settled in one batch follows a set of objects (their
addresses), which differs between two runs of the same path too.
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

import pytest

from monitor.health.correlate import Correlator
from monitor.health.model import HealthConfig
from monitor.health.pipeline import Pipeline
from monitor.sources.items import Control, Datagram, SourceItem
from monitor.sources.simfleet import Fleet, FleetConfig
from monitor.wire import xfrm as X
from monitor.wire.encode import encode, encode_dump_request
from monitor.wire.events import (
    SA,
    Algo,
    AsyncEvent,
    Done,
    Encap,
    LifetimeCfg,
    LifetimeCur,
    NatMapping,
    NetlinkError,
    NlHeader,
    Replay,
    ReplayEsn,
    SAAdded,
    SADeleted,
    SAExpired,
    SAFlushed,
    SAId,
    SAUpdated,
    Selector,
    Stats,
)

LOCAL = "192.0.2.1"
T0 = 1_700_000_000.0
PID = 7777
U64 = 0xFFFFFFFFFFFFFFFF


def _sa(n: int, t: float) -> SA:
    """SA ``n``: tunnel ``n // 2`` (even: out, odd: in); a few near a hard byte limit or the 32-bit oseq end."""
    tunnel, out = n // 2, n % 2 == 0
    remote = f"198.51.100.{1 + tunnel % 200}" if tunnel < 200 else f"2001:db8::{tunnel:x}"
    fam = X.AF_INET6 if ":" in remote else X.AF_INET
    local = LOCAL if fam == X.AF_INET else "2001:db8::1"
    near = n % 7 == 3  # a small hard byte limit, and a hard expiry within the run
    hard_bytes = 600_000 if near else U64
    sa = SA(sel=Selector("0.0.0.0", "0.0.0.0", family=X.AF_INET), daddr=remote if out else local,
            spi=0xC0000000 | n, proto=X.IPPROTO_ESP, saddr=local if out else remote,
            lft=LifetimeCfg(hard_byte_limit=hard_bytes, soft_add_expires_seconds=240 if near else 3000,
                            hard_add_expires_seconds=300 if near else 3600),
            cur=LifetimeCur(0, 0, int(t), 0), stats=Stats(), seq=0, reqid=100 + tunnel, family=fam, mode=1,
            replay_window=32, flags=0, lastused=None)
    if n % 2 == 0 and n % 3 == 0:
        return sa._replace(aead=Algo("rfc4106(gcm(aes))", 160, 128), flags=128, if_id=tunnel + 1,
                           replay_esn=ReplayEsn(0, 0, 0, 0, 32, (0,)), encap=Encap(2, 4500, 4500, "0.0.0.0"),
                           sa_dir=X.XFRM_SA_DIR_OUT if out else X.XFRM_SA_DIR_IN)
    return sa._replace(enc=Algo("cbc(aes)", 256), auth_trunc=Algo("hmac(sha256)", 256, 128),
                       replay=Replay(2**32 - 500 if n % 11 == 0 else 0, 0, 0))


def _grow(sa: SA, rng: random.Random, t: float) -> SA:
    """The SA after some traffic: counters, sequence numbers, last use; now and then drop counters."""
    db, dp = rng.randrange(1, 400_000), rng.randrange(1, 300)
    sa = sa._replace(cur=sa.cur._replace(bytes=sa.cur.bytes + db, packets=sa.cur.packets + dp), lastused=int(t))
    if sa.replay is not None:
        sa = sa._replace(replay=sa.replay._replace(oseq=min(sa.replay.oseq + dp, 2**32 - 1)))
    if rng.random() < 0.05:
        sa = sa._replace(stats=sa.stats._replace(replay=sa.stats.replay + 1))
    return sa


class World:
    """A kernel's SAs in two netns and the items a source would yield: dumps, notifications, overruns."""

    def __init__(self, seed: int, n: int) -> None:
        self.rng = random.Random(seed)
        self.t = T0
        self.next_sa = 0
        self.dseq = 1
        self.sas: dict[str, dict[int, SA]] = {"a": {}, "b": {}}
        for ns in self.sas:
            for _ in range(n):
                self._add(ns)

    def _add(self, ns: str) -> SA:
        sa = _sa(self.next_sa, self.t)
        self.next_sa += 1
        self.sas[ns][sa.spi] = sa
        return sa

    def _nl(self, mtype: int, flags: int = 0, seq: int = 0, pid: int = 0) -> NlHeader:
        return NlHeader(mtype, flags, seq, pid)

    def _dg(self, ns: str, *events: Any) -> Datagram:
        return Datagram(ns, b"".join(encode(e) for e in events), self.t, False)

    def dump(self, ns: str, fail: bool = False, dup: bool = False) -> list[SourceItem]:
        seq = self.dseq
        self.dseq += 1
        records = [encode(SAAdded(self._nl(X.XFRM_MSG_NEWSA, X.NLM_F_MULTI, seq, PID), sa))
                   for sa in self.sas[ns].values()]
        self.rng.shuffle(records)
        if dup and records:  # the same SA twice in one datagram (a crafted capture; never a kernel)
            sa = self.rng.choice(list(self.sas[ns].values()))
            old = encode(SAAdded(self._nl(X.XFRM_MSG_NEWSA, X.NLM_F_MULTI, seq, PID), sa))
            new = encode(SAAdded(self._nl(X.XFRM_MSG_NEWSA, X.NLM_F_MULTI, seq, PID), _grow(sa, self.rng, self.t)))
            records[:0] = [new, old] if self.rng.random() < 0.5 else [old, new]
        items: list[SourceItem] = [Datagram(ns, encode_dump_request(X.XFRM_MSG_GETSA, seq), self.t, True)]
        i = 0
        while i < len(records):
            k = self.rng.randrange(1, 40)
            items.append(Datagram(ns, b"".join(records[i:i + k]), self.t, False))
            i += k
        end = NetlinkError(self._nl(X.NLMSG_ERROR, 0, seq, PID), -16, self._nl(X.XFRM_MSG_GETSA, 0, seq, 0)) \
            if fail else Done(self._nl(X.NLMSG_DONE, X.NLM_F_MULTI, seq, PID))
        if self.rng.random() < 0.5 and len(items) > 1:  # the end rides in the last datagram
            last = items.pop()
            assert isinstance(last, Datagram)
            items.append(Datagram(ns, last.data + encode(end), self.t, False))
        else:
            items.append(self._dg(ns, end))
        return items

    def between(self, ns: str, frac: float) -> list[SourceItem]:
        """What happens between two dumps: traffic on a fraction of the SAs, notifications, new and gone SAs."""
        rng, sas, out = self.rng, self.sas[ns], []
        for spi in list(sas):
            r = rng.random()
            if r < frac:
                sas[spi] = _grow(sas[spi], rng, self.t)
            elif r < frac + 0.01:  # went backwards (replaced unseen): an anomaly on every dump until it grows
                sa = sas[spi]
                sas[spi] = sa._replace(cur=sa.cur._replace(bytes=sa.cur.bytes // 2))
        for _ in range(rng.randrange(0, 4)):
            if not sas:
                break
            sa = sas[rng.choice(list(sas))]
            kind = rng.randrange(8)
            if kind == 0:  # DELSA with final counters
                del sas[sa.spi]
                sa = _grow(sa, rng, self.t)
                out.append(self._dg(ns, SADeleted(self._nl(X.XFRM_MSG_DELSA), SAId(sa.daddr, sa.spi, sa.family,
                                                                                  sa.proto), sa)))
            elif kind == 1:  # soft expire
                out.append(self._dg(ns, SAExpired(self._nl(X.XFRM_MSG_EXPIRE), sa, False)))
            elif kind == 2:  # hard expire: gone
                del sas[sa.spi]
                out.append(self._dg(ns, SAExpired(self._nl(X.XFRM_MSG_EXPIRE), sa, True)))
            elif kind == 3:  # NEWAE with counters the next dump will show too
                sa = sas[sa.spi] = _grow(sa, rng, self.t)
                out.append(self._dg(ns, AsyncEvent(self._nl(X.XFRM_MSG_NEWAE), SAId(sa.daddr, sa.spi, sa.family,
                                                                                   sa.proto), sa.saddr, 0,
                                                   sa.reqid, lifetime=sa.cur)))
            elif kind == 4:  # UPDSA: new limits, the dump record unchanged otherwise
                sa = sas[sa.spi] = sa._replace(lft=sa.lft._replace(hard_packet_limit=10_000))
                out.append(self._dg(ns, SAUpdated(self._nl(X.XFRM_MSG_UPDSA), sa)))
            elif kind == 5:  # NAT mapping change
                out.append(self._dg(ns, NatMapping(self._nl(X.XFRM_MSG_MAPPING), SAId(sa.daddr, sa.spi, sa.family,
                                                                                     sa.proto), sa.reqid,
                                                   sa.saddr, sa.saddr, 4500, 4501)))
            elif kind == 6:  # a new SA (a rekey's replacement or a new tunnel), announced
                new = self._add(ns)
                out.append(self._dg(ns, SAAdded(self._nl(X.XFRM_MSG_NEWSA), new)))
            else:  # a new SA only the next dump shows
                self._add(ns)
        if rng.random() < 0.08:  # a whole tunnel's SAs gone unseen
            for spi in list(sas)[:2]:
                del sas[spi]
        if rng.random() < 0.02:
            sas.clear()
            out.append(self._dg(ns, SAFlushed(self._nl(X.XFRM_MSG_FLUSHSA), 0)))
        return out


def _canonical(c: Correlator, p: Pipeline, now: float) -> dict[str, Any]:
    events = c.drain_events()
    per: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for e in events:
        per[e.tunnel or ""].append((e.type, repr(e.detail)))
    return {"seqs": [e.seq for e in events], "events": sorted((e.type, e.tunnel or "", repr(e.detail)) for e in events),
            "per_tunnel": dict(per), "snapshot": c.snapshot(now), "dirty": sorted(c.take_dirty()),
            "stats": p.stats.to_json(), "netns": [c.netns_json(n, now) for n in c.netns_names()],
            "deadline": c.next_deadline(), "heap": sorted(c._heap), "sas": c.sa_count}


def _run(items_per_step: list[list[SourceItem]], fastpath: bool, timers: bool = True,
         ) -> tuple[list[dict[str, Any]], int]:
    # without timers, short idle / one-way times: every evaluation a dump asks for (the volume check) shows
    config = None if timers else HealthConfig(idle_after=25.0, one_way_after=15.0)
    p = Pipeline(Correlator(config), fastpath=fastpath)
    c = p.correlator
    out = []
    for step, items in enumerate(items_per_step):
        now = T0 + 10.0 * step
        for it in items:
            p.feed(it, now)
        if timers:  # without: every evaluation is one a dump (or an event) made
            c.on_timer(now + 5.0)
        out.append(_canonical(c, p, now + 5.0))
    return out, p.skipped


def _script(seed: int, steps: int = 40, n: int = 60) -> list[list[SourceItem]]:
    w = World(seed, n)
    rng = w.rng
    script: list[list[SourceItem]] = []
    for step in range(steps):
        w.t = T0 + 10.0 * step
        items: list[SourceItem] = []
        for ns in ("a", "b"):
            frac = rng.choice((0.0, 0.1, 0.1, 0.5, 1.0))
            items += w.between(ns, frac)
            r = rng.random()
            if r < 0.05:
                items.append(Control(ns, "enobufs", w.t))
            elif r < 0.08 and step > 2:
                items.append(Control(ns, "netns_removed", w.t))
                items += w.dump(ns)  # the netns seen again: a fresh first load
                continue
            dump = w.dump(ns, fail=rng.random() < 0.04, dup=rng.random() < 0.1)
            if rng.random() < 0.1:  # events in the middle of a dump
                middle = w.between(ns, 0.0)
                dump[2:2] = middle
            if rng.random() < 0.03:  # bytes that do not decode, while a dump is in flight
                dump.insert(2, Datagram(ns, dump[1].data[:-3] if isinstance(dump[1], Datagram) else b"x", w.t,
                                        False))
            items += dump
        script.append(items)
    return script


@pytest.mark.parametrize(("seed", "timers"), [(s, True) for s in range(6)] + [(s, False) for s in range(6, 9)])
def test_fast_path_matches_full_path(seed: int, timers: bool) -> None:
    """Random refreshes (subsets of SAs changing, going backwards, appearing, vanishing, notifications
    between and inside dumps, resyncs, failed dumps, netns removal, malformed datagrams, duplicate
    records): the same state, events and counters after every step, and most records were skipped."""
    script = _script(seed)
    slow, skipped_off = _run(script, fastpath=False, timers=timers)
    fast, skipped_on = _run(script, fastpath=True, timers=timers)
    assert skipped_off == 0
    assert skipped_on > 0
    for step, (a, b) in enumerate(zip(slow, fast, strict=True)):
        assert a == b, f"step {step} differs"


def test_fast_path_matches_on_the_simulated_fleet() -> None:
    """The simulator's dumps and notifications (rekeys, expiries, idle tunnels, NAT changes): same result."""
    start = T0
    results = []
    for fastpath in (False, True):
        fleet = Fleet(3, FleetConfig(tunnels=40), start=start)
        p = Pipeline(Correlator(), fastpath=fastpath)
        snaps = []
        for k in range(1, 400):
            now = start + 5.0 * k
            for it in fleet.step(now):
                p.feed(it, it.ts)
            p.correlator.on_timer(now)
            snaps.append(_canonical(p.correlator, p, now))
        results.append((snaps, p.skipped))
    (slow, off), (fast, on) = results
    assert off == 0
    assert on > 0
    for step, (a, b) in enumerate(zip(slow, fast, strict=True)):
        assert a == b, f"step {step} differs"


def test_unchanged_records_are_skipped_and_changes_are_seen() -> None:
    """After two dumps every unchanged record is skipped; a counter change, an event about an SA and a
    resync each make that SA's next record take the full path."""
    w = World(1, 20)
    p = Pipeline(Correlator())
    for _ in range(2):
        for it in w.dump("a"):
            p.feed(it, w.t)
    held = p.correlator.sa_count
    before = p.skipped
    for it in w.dump("a"):
        p.feed(it, w.t)
    assert p.skipped - before == held
    sa = next(iter(w.sas["a"].values()))
    w.sas["a"][sa.spi] = _grow(sa, w.rng, w.t)
    before = p.skipped
    for it in w.dump("a"):
        p.feed(it, w.t)
    assert p.skipped - before == held - 1
    docs = [p.correlator.tunnel_json(t, w.t) or {} for t in p.correlator.tunnel_ids()]
    assert next(d for d in docs if d["reqid"] == sa.reqid)["bytes_out"] == w.sas["a"][sa.spi].cur.bytes
    # an event about the SA (nothing the dump record shows changes) drops its digest
    p.feed(Datagram("a", encode(SAExpired(NlHeader(X.XFRM_MSG_EXPIRE), w.sas["a"][sa.spi], False)), w.t, False), w.t)
    before = p.skipped
    for it in w.dump("a"):
        p.feed(it, w.t)
    assert p.skipped - before == held - 1
    # a resync drops them all; the resync dump and the next one take the full path, then skipping resumes
    p.feed(Control("a", "enobufs", w.t), w.t)
    before = p.skipped
    for _ in range(2):
        for it in w.dump("a"):
            p.feed(it, w.t)
    assert p.skipped == before
    for it in w.dump("a"):
        p.feed(it, w.t)
    assert p.skipped - before == held


@pytest.mark.parametrize(("value", "expected"), [(None, True), ("on", True), ("off", False), ("0", False)])
def test_serve_switch(monkeypatch: pytest.MonkeyPatch, value: str | None, expected: bool) -> None:
    """``MONITOR_REFRESH_FASTPATH=off`` gives ``monitor serve`` a pipeline without the fast path."""
    from monitor.serve.config import load_settings
    from monitor.serve.web import build_core

    if value is None:
        monkeypatch.delenv("MONITOR_REFRESH_FASTPATH", raising=False)
    else:
        monkeypatch.setenv("MONITOR_REFRESH_FASTPATH", value)
    pipeline, _ = build_core(load_settings({}, env={}))
    assert pipeline.fastpath is expected
