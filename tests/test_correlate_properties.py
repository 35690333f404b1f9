"""Hypothesis properties of the correlator.

1. Over any causal interleaving of many SAs' lives (install, counter updates via dump records, NEWAE,
   request-built UPDSAs and soft EXPIREs, then DELSA / hard EXPIRE / nothing, plus stale dump
   records after the end), tunnel totals never decrease, and at the end they equal the sum of every
   SA's highest counters: nothing is lost and nothing is counted twice.
2. Any interleaving of correct strongSwan-order rekeys (soft EXPIRE first; each direction's new SA
   before that direction's old SA is deleted; optional second soft EXPIRE; stray dump records)
   never yields ``down``, ``tunnel_down`` or ``rekey_failed``, and counts every rekey.
"""

from __future__ import annotations

from typing import Any

from correlate_builders import delsa, expire, make_policy, make_sa, newpolicy, newsa, updsa, with_counters
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.health.correlate import Correlator
from monitor.health.model import HealthConfig
from monitor.wire import xfrm as X
from monitor.wire.events import SA, AsyncEvent, Event, LifetimeCur, NlHeader, SAId

T0 = 1_700_000_000.0
PEERS = ("198.51.100.7", "198.51.100.8")


def _aevent(sa: SA, nbytes: int, packets: int) -> AsyncEvent:
    return AsyncEvent(NlHeader(X.XFRM_MSG_NEWAE), SAId(sa.daddr, sa.spi, sa.family, sa.proto), sa.saddr, 0,
                      sa.reqid, lifetime=LifetimeCur(nbytes, packets, 0, 0))


def _totals(c: Correlator) -> dict[str, tuple[int, int, int, int]]:
    out = {}
    for tid in c.tunnel_ids():
        j = c.tunnel_json(tid, T0)
        assert j is not None
        out[tid] = (j["bytes_in"], j["bytes_out"], j["packets_in"], j["packets_out"])
    return out


@st.composite
def sa_lives(draw: st.DrawFn) -> tuple[list[list[Event]], dict[tuple[int, bool], list[int]]]:
    """Per-SA event streams, and the expected (bytes, packets) max per (peer index, inbound)."""
    n = draw(st.integers(1, 8))
    streams: list[list[Event]] = []
    truth: dict[tuple[int, bool], list[int]] = {}
    for k in range(n):
        peer = draw(st.integers(0, 1))
        inbound = draw(st.booleans())
        base = make_sa(0x100 + k, inbound=inbound, peer=PEERS[peer], add_time=T0)
        incs = draw(st.lists(st.integers(0, 10_000), max_size=6))
        values = []
        total = draw(st.integers(0, 1000))
        values.append(total)
        for inc in incs:
            total += inc
            values.append(total)
        first = with_counters(base, values[0], values[0] // 10)
        stream: list[Event] = [draw(st.sampled_from([newsa(first), updsa(first)]))]
        for v in values[1:]:
            cur = with_counters(base, v, v // 10)
            kind = draw(st.sampled_from(["record", "aevent", "updsa0", "soft"]))
            if kind == "record":
                stream.append(newsa(cur, dump_seq=1))
            elif kind == "aevent":
                stream.append(_aevent(base, v, v // 10))
            elif kind == "updsa0":
                stream.append(updsa(with_counters(base, 0, 0)))  # request-built counters
                stream.append(newsa(cur, dump_seq=1))
            else:
                stream.append(expire(cur, hard=False))
        last = values[-1]
        end = draw(st.sampled_from(["delsa", "hard", "none"]))
        final = last + draw(st.integers(0, 500))
        if end == "delsa":
            stream.append(delsa(with_counters(base, final, final // 10)))
        elif end == "hard":
            stream.append(expire(with_counters(base, final, final // 10), hard=True))
        else:
            final = last
        if end != "none" and draw(st.booleans()):
            stream.append(newsa(with_counters(base, values[0], values[0] // 10), dump_seq=2))  # stale record
        streams.append(stream)
        acc = truth.setdefault((peer, inbound), [0, 0])
        acc[0] += final
        acc[1] += final // 10
    return streams, truth


@settings(max_examples=200, deadline=None)
@given(sa_lives(), st.data())
def test_counters_never_decrease_and_never_double_count(lives: Any, data: st.DataObject) -> None:
    """Random causal interleavings: totals are monotonic and end at the sum of every SA's final counters."""
    streams, truth = lives
    labels = [i for i, s in enumerate(streams) for _ in s]
    order = data.draw(st.permutations(labels))
    pos = [0] * len(streams)
    c = Correlator(HealthConfig())
    prev: dict[str, tuple[int, int, int, int]] = {}
    now = T0
    for label in order:
        ev = streams[label][pos[label]]
        pos[label] += 1
        now += 1
        c.on_events("gw", [ev], now)
        cur = _totals(c)
        for tid, before in prev.items():
            if tid in cur:
                assert all(b <= a for a, b in zip(cur[tid], before, strict=True)), (tid, before, cur[tid])
        prev.update(cur)
    for peer, address in enumerate(PEERS):
        tid = f"gw:1:192.0.2.1-{address}"
        got = prev.get(tid, (0, 0, 0, 0))
        want_in = truth.get((peer, True), [0, 0])
        want_out = truth.get((peer, False), [0, 0])
        assert (want_in[0], want_out[0], want_in[1], want_out[1]) == got


@st.composite
def rekey_orders(draw: st.DrawFn) -> list[tuple[str, int]]:
    """A random topological order of the events of 1-3 consecutive strongSwan rekeys."""
    rekeys = draw(st.integers(1, 3))
    preds: dict[tuple[str, int], set[tuple[str, int]]] = {}
    for r in range(1, rekeys + 1):
        first = draw(st.sampled_from(["soft_in", "soft_out"]))
        other = "soft_out" if first == "soft_in" else "soft_in"
        prior = {("new_in", r - 1), ("new_out", r - 1)} if r > 1 else set()
        preds[(first, r)] = set(prior)
        preds[("new_in", r)] = {(first, r)}
        preds[("new_out", r)] = {(first, r)}
        preds[("del_out", r)] = {("new_out", r)}
        preds[("del_in", r)] = {("new_in", r)}
        if draw(st.booleans()):  # the other direction's soft EXPIRE, before that old SA is deleted
            preds[(other, r)] = {(first, r)}
            preds[("del_in" if other == "soft_in" else "del_out", r)].add((other, r))
    for k in range(draw(st.integers(0, 6))):
        preds[("record", k)] = set()
    order: list[tuple[str, int]] = []
    done: set[tuple[str, int]] = set()
    while len(order) < len(preds):
        ready = sorted(e for e, p in preds.items() if e not in done and p <= done)
        pick = ready[draw(st.integers(0, len(ready) - 1))]
        order.append(pick)
        done.add(pick)
    return order


@settings(max_examples=300, deadline=None)
@given(rekey_orders(), st.lists(st.floats(0.01, 3.0), min_size=40, max_size=40))
def test_strongswan_rekeys_never_go_down(order: list[tuple[str, int]], gaps: list[float]) -> None:
    """Any interleaving of correct strongSwan-order rekeys: no down, no rekey_failed, every rekey counted."""
    c = Correlator(HealthConfig())
    c.on_events("gw", [newpolicy(make_policy(d)) for d in (0, 1, 2)], T0 - 10)
    gens: dict[int, tuple[SA, SA]] = {}

    def pair(g: int, at: float) -> tuple[SA, SA]:
        if g not in gens:
            gens[g] = (make_sa(0x1000 + g, inbound=True, add_time=at, soft=3300, hard=3960),
                       make_sa(0x2000 + g, inbound=False, add_time=at, soft=3360, hard=3960))
        return gens[g]

    i0, o0 = pair(0, T0)
    c.on_events("gw", [updsa(i0), newsa(o0)], T0)
    c.drain_events()
    now = T0
    rekeys = 0
    for step, (what, r) in enumerate(order):
        now += gaps[step % len(gaps)]
        if what == "record":
            live = [sa for g in gens.values() for sa in g]
            ev: Event = newsa(with_counters(live[r % len(live)], 100 * step, step), dump_seq=5)
        else:
            old_in, old_out = pair(r - 1, now)
            new_in, new_out = pair(r, now)
            if what == "soft_in":
                ev = expire(old_in, hard=False)
            elif what == "soft_out":
                ev = expire(old_out, hard=False)
            elif what == "new_in":
                ev = updsa(new_in)
            elif what == "new_out":
                ev = newsa(new_out)
            elif what == "del_in":
                ev = delsa(with_counters(old_in, 10_000 * r, 100 * r))
            else:
                ev = delsa(with_counters(old_out, 20_000 * r, 200 * r))
            rekeys = max(rekeys, r)
        c.on_events("gw", [ev], now)
        j = c.tunnel_json(c.tunnel_ids()[0], now)
        assert j is not None
        assert j["state"] != "down", (what, r, j["reasons"])
    types = [e.type for e in c.drain_events()]
    assert "tunnel_down" not in types
    assert "rekey_failed" not in types
    j = c.tunnel_json(c.tunnel_ids()[0], now)
    assert j is not None
    assert (rekeys, 0) == (j["rekeys"], j["rekey_failures"])
    assert rekeys == types.count("rekey_completed")
