"""Checkpoint and restore of the pure core: a restarted correlator continues where the last one stopped.

The first correlator runs on one monotonic clock and the second on another (a restart starts the monotonic
clock afresh): only wall time (``core + wall_skew``) connects them, as in the real daemon.
"""

from __future__ import annotations

from typing import Any

from correlate_builders import delsa, make_policy, make_sa, newpolicy, newsa, with_counters

from monitor.health.checkpoint import TunnelCheckpoint
from monitor.health.correlate import Correlator
from monitor.health.model import HealthConfig, HealthEvent
from monitor.wire.events import SA

NS = "gw"
SKEW1 = 1_700_000_000.0  # wall - core of the first run
SKEW2 = SKEW1 + 500.0 - 3.0  # restarted 300 s after the checkpoint; its monotonic clock is near 0


def sa_pair(gen: int, add_wall: float, nin: int = 0, nout: int = 0) -> tuple[SA, SA]:
    i = make_sa(0x1000 + gen, inbound=True, add_time=add_wall, soft=3300, hard=3960, nbytes=nin, packets=nin // 100)
    o = make_sa(0x2000 + gen, inbound=False, add_time=add_wall, soft=3360, hard=3960, nbytes=nout,
                packets=nout // 100)
    return i, o


def dump(c: Correlator, now: float, sas: list[SA], policies: bool = True, seq: int = 100) -> None:
    c.on_dump_begin(NS, "sa", now)
    c.on_events(NS, [newsa(sa, dump_seq=seq) for sa in sas], now)
    c.on_dump_end(NS, "sa", now)
    c.on_dump_begin(NS, "policy", now)
    if policies:
        c.on_events(NS, [newpolicy(make_policy(d), dump_seq=seq + 1) for d in (0, 1, 2)], now)
    c.on_dump_end(NS, "policy", now)


def first_run(nin: int, nout: int) -> tuple[Correlator, list[HealthEvent]]:
    """Policies, one SA pair added at core time 10 (1,000/2,000 bytes), a rekey to generation 1 at 100, whose
    traffic reaches ``nin``/``nout``."""
    c = Correlator(HealthConfig())
    c.wall_skew = SKEW1
    dump(c, 1.0, [])
    i0, o0 = sa_pair(0, SKEW1 + 10)
    c.on_events(NS, [newsa(i0), newsa(o0)], 10.0)
    i1, o1 = sa_pair(1, SKEW1 + 100)
    c.on_events(NS, [newsa(i1), newsa(o1)], 100.0)
    c.on_events(NS, [delsa(with_counters(i0, 1_000, 10)), delsa(with_counters(o0, 2_000, 20))], 101.0)
    dump(c, 200.0, [with_counters(i1, nin, nin // 100), with_counters(o1, nout, nout // 100)], seq=200)
    return c, c.drain_events()


def checkpoint_of(c: Correlator) -> tuple[list[TunnelCheckpoint], int]:
    cps, gone = c.checkpoint(c.tunnel_ids())
    assert not gone
    return cps, c.seq


def second_run(cps: list[TunnelCheckpoint], seq: int, sas: list[SA], policies: bool = True,
               now: float = 3.0) -> tuple[Correlator, list[HealthEvent], dict[str, Any] | None]:
    c = Correlator(HealthConfig())
    c.wall_skew = SKEW2
    c.restore(cps, seq)
    dump(c, now, sas, policies=policies, seq=300)
    ids = c.tunnel_ids()
    return c, c.drain_events(), (c.tunnel_json(ids[0], now) if ids else None)


def test_same_sas_continue_from_their_checkpoint_without_counting_twice() -> None:
    c1, _ = first_run(5_000, 7_000)
    cps, seq = checkpoint_of(c1)
    (cp,) = cps
    assert (cp.bytes_in, cp.bytes_out, cp.rekeys) == (6_000, 9_000, 1)
    i1, o1 = sa_pair(1, SKEW1 + 100)
    c2, events, j = second_run(cps, seq, [with_counters(i1, 5_600, 56), with_counters(o1, 7_700, 77)])
    assert j is not None
    assert (j["bytes_in"], j["bytes_out"], j["packets_in"], j["packets_out"]) == (6_600, 9_700, 66, 97)
    assert j["rekeys"] == 1
    assert j["last_rekey"]["ts"] == cp.last_rekey["ts"] if cp.last_rekey else False
    assert j["state"] == cp.state == "up"
    assert abs(j["since"] - cp.since) < 1e-6  # kept across the restart, in wall time
    types = [e.type for e in events]
    assert "tunnel_up" not in types
    assert "tunnel_down" not in types
    assert "counters_gap" not in types
    assert all(e.seq > seq for e in events)  # seq continues
    assert c2.seq > seq


def test_changed_sa_pair_is_an_inferred_rekey_and_a_counters_gap() -> None:
    c1, _ = first_run(5_000, 7_000)
    cps, seq = checkpoint_of(c1)
    i2, o2 = sa_pair(2, SKEW2 + 1)
    _, events, j = second_run(cps, seq, [with_counters(i2, 300, 3), with_counters(o2, 400, 4)])
    assert j is not None
    assert (j["bytes_in"], j["bytes_out"]) == (6_300, 9_400)  # the new SAs add on
    assert j["rekeys"] == 2
    assert j["last_rekey"]["inferred"] is True
    gap = [e for e in events if e.type == "counters_gap"]
    assert len(gap) == 1
    assert gap[0].detail["spis"] == ["0x00001001", "0x00002001"]
    assert gap[0].detail["inferred"]
    rk = [e for e in events if e.type == "rekey_completed"]
    assert len(rk) == 1
    assert rk[0].detail["inferred"]
    assert rk[0].detail["new_spis"] == ["0x00001002", "0x00002002"]
    assert "tunnel_down" not in [e.type for e in events]


def test_down_at_shutdown_and_still_down_keeps_its_since_and_says_nothing() -> None:
    c1 = Correlator(HealthConfig())
    c1.wall_skew = SKEW1
    dump(c1, 1.0, [])  # policies only: down since core 1.0
    cps, seq = checkpoint_of(c1)
    assert cps[0].state == "down"
    _, events, j = second_run(cps, seq, [])
    assert j is not None
    assert j["state"] == "down"
    assert j["since"] == SKEW1 + 1.0
    assert [e.type for e in events if e.tunnel] == []


def test_up_at_shutdown_and_gone_now_goes_down_inferred_and_is_reported_gone() -> None:
    c1, _ = first_run(5_000, 7_000)
    cps, seq = checkpoint_of(c1)
    c2, events, j = second_run(cps, seq, [], policies=False)
    assert j is None
    downs = [e for e in events if e.type == "tunnel_down"]
    assert len(downs) == 1
    assert downs[0].tunnel == cps[0].id
    assert downs[0].detail["inferred"]
    _, gone = c2.checkpoint(c2.take_dirty())
    assert gone == [cps[0].id]
    assert c2.restoring == 0


def test_down_at_shutdown_and_up_now_is_an_inferred_tunnel_up() -> None:
    c1 = Correlator(HealthConfig())
    c1.wall_skew = SKEW1
    dump(c1, 1.0, [])
    cps, seq = checkpoint_of(c1)
    i, o = sa_pair(5, SKEW2 + 2, 10, 20)
    _, events, j = second_run(cps, seq, [i, o])
    assert j is not None
    assert j["state"] != "down"
    ups = [e for e in events if e.type == "tunnel_up"]
    assert len(ups) == 1
    assert ups[0].detail["inferred"]
    assert (j["bytes_in"], j["bytes_out"]) == (10, 20)


def test_totals_never_go_down_when_an_sa_counter_is_below_its_checkpoint() -> None:
    c1, _ = first_run(5_000, 7_000)
    cps, seq = checkpoint_of(c1)
    i1, o1 = sa_pair(1, SKEW1 + 100)
    # the same SPIs with smaller counters: not the same SA (re-used SPI): all of it is new
    _, _, j = second_run(cps, seq, [with_counters(i1, 10, 1), with_counters(o1, 20, 1)])
    assert j is not None
    assert (j["bytes_in"], j["bytes_out"]) == (6_010, 9_020)


def test_checkpoint_of_a_missing_tunnel_is_reported_gone() -> None:
    c = Correlator(HealthConfig())
    assert c.checkpoint(["gw:1:x-y"]) == ([], ["gw:1:x-y"])


def test_flaps_and_downtime_count_and_survive_a_restart() -> None:
    """Down from 1 to 10 (configured, not up yet: downtime, not a flap), down again at 300 (the peer deleted
    the SAs), back at 360: one flap and 9 + 60 s down; both continue after a restart, and a down found at
    restart (the tunnel gone meanwhile) is one more tunnel_down."""
    c1, _ = first_run(5_000, 7_000)
    i1, o1 = sa_pair(1, SKEW1 + 100)
    c1.on_events(NS, [delsa(i1), delsa(o1)], 300.0)
    (tid,) = c1.tunnel_ids()
    j = c1.tunnel_json(tid, 330.0)
    assert j is not None
    assert (j["state"], j["flaps"], j["downtime"]) == ("down", 1, 39.0)  # the open down interval counts
    i3, o3 = sa_pair(3, SKEW1 + 360)
    c1.on_events(NS, [newsa(i3), newsa(o3)], 360.0)
    j = c1.tunnel_json(tid, 400.0)
    assert j is not None
    assert (j["state"], j["flaps"], j["downtime"]) == ("up", 1, 69.0)
    cps, seq = checkpoint_of(c1)
    _, events, _j2 = second_run(cps, seq, [], policies=False)
    assert [e.type for e in events if e.type == "tunnel_down"] == ["tunnel_down"]
    c3 = Correlator(HealthConfig())
    c3.wall_skew = SKEW2
    c3.restore(cps, seq)
    dump(c3, 3.0, [with_counters(i3, 10, 1), with_counters(o3, 10, 1)])
    j3 = c3.tunnel_json(tid, 3.0)
    assert j3 is not None
    assert (j3["flaps"], j3["downtime"]) == (1, 69.0)
