"""Table-driven correlator tests: every health transition, each with explicit times.

Each scenario drives one strongSwan-like tunnel through events, dumps and timers at exact times and
lists the ``(time, from, to)`` transitions it must produce. Thresholds: idle 300 s, one-way 60 s,
expiring margin 120 s, errors window 300 s, ACQUIRE grace 30 s; SA lifetimes soft 3300 s (out
3360 s) and hard 3960 s unless a scenario says otherwise.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from correlate_builders import acquire, delsa, expire, make_policy, make_sa, newpolicy, newsa, updsa, with_counters
from correlate_harness import T0, Gw

from monitor.health.tunnel import TRANSITIONS, TunnelState
from monitor.wire import xfrm as X
from monitor.wire.events import NlHeader, PolicyDeleted, PolicyId

Steps = Callable[[Gw], None]


def _up(g: Gw) -> None:
    g.policies(T0 - 10)
    g.install(T0)


def down_to_up(g: Gw) -> None:
    g.policies(T0 - 10)
    g.install(T0 + 5)


def up_to_idle(g: Gw) -> None:
    _up(g)
    g.run_until(T0 + 400)


def idle_to_up(g: Gw) -> None:
    up_to_idle(g)
    g.traffic(T0 + 410, 0, 1000, 1000)


def _one_way(g: Gw) -> None:
    _up(g)
    for k in range(1, 6):  # outbound grows every 10 s, inbound never moves
        g.traffic(T0 + 10 * k, 0, 0, 1000 * k)
    g.run_until(T0 + 60)


def up_to_one_way(g: Gw) -> None:
    _one_way(g)


def one_way_to_up(g: Gw) -> None:
    _one_way(g)
    g.traffic(T0 + 70, 0, 500, 6000)


def one_way_to_idle(g: Gw) -> None:
    _up(g)
    for k in range(1, 6):
        g.traffic(T0 + 10 * k, 0, 0, 1000 * k)
    g.run_until(T0 + 200)  # outbound stops after T0+50: at T0+110 it is no longer one-way but idle


def up_to_rekeying(g: Gw) -> None:
    _up(g)
    g.traffic(T0 + 3299, 0, 1000, 1000)
    g.ev(T0 + 3300, expire(g.gens[0][0], hard=False))


def rekeying_to_up(g: Gw) -> None:
    up_to_rekeying(g)
    g.install(T0 + 3302, gen=1)


def rekeying_to_expiring(g: Gw) -> None:
    up_to_rekeying(g)
    g.run_until(T0 + 3900)


def expiring_to_down(g: Gw) -> None:
    rekeying_to_expiring(g)
    i, o = g.gens[0]
    g.ev(T0 + 3960, expire(with_counters(i, 1500, 15), hard=True), expire(with_counters(o, 2500, 25), hard=True))


def expiring_to_up(g: Gw) -> None:
    rekeying_to_expiring(g)
    g.traffic(T0 + 3845, 0, 2000, 2000)
    g.install(T0 + 3850, gen=1)


def up_to_errors(g: Gw) -> None:
    _up(g)
    i, o = g.gens[0]
    g.dump(T0 + 100, with_counters(i, 1000, 10, replay=3), with_counters(o, 1000, 10))


def errors_to_up(g: Gw) -> None:
    up_to_errors(g)
    g.traffic(T0 + 200, 0, 2000, 2000)
    g.run_until(T0 + 450)


def up_to_down(g: Gw) -> None:
    _up(g)
    i, o = g.gens[0]
    g.ev(T0 + 50, delsa(o), delsa(i))


def idle_to_rekeying(g: Gw) -> None:
    up_to_idle(g)
    g.ev(T0 + 3300, expire(g.gens[0][1], hard=False))


def down_up_expiring(g: Gw) -> None:
    g.policies(T0 - 10)
    g.install(T0, soft=0, hard=100)  # libreswan-like: no soft limit, a short hard one
    g.run_until(T0 + 80)  # the margin is capped at a quarter of the 100 s lifetime: expiring from T0 + 75


def rekeying_to_down(g: Gw) -> None:
    up_to_rekeying(g)
    i, o = g.gens[0]
    g.ev(T0 + 3310, delsa(o), delsa(i))


def errors_to_down(g: Gw) -> None:
    up_to_errors(g)
    i, o = g.gens[0]
    g.ev(T0 + 150, delsa(o), delsa(i))


def one_way_to_down(g: Gw) -> None:
    _one_way(g)
    i, o = g.gens[0]
    g.ev(T0 + 65, delsa(o), delsa(i))


SCENARIOS: dict[str, tuple[Steps, list[tuple[float, str, str]]]] = {
    "down->up": (down_to_up, [(T0 + 5, "down", "up")]),
    "up->idle": (up_to_idle, [(T0, "down", "up"), (T0 + 300, "up", "idle")]),
    "idle->up": (idle_to_up, [(T0, "down", "up"), (T0 + 300, "up", "idle"), (T0 + 410, "idle", "up")]),
    "up->one-way": (up_to_one_way, [(T0, "down", "up"), (T0 + 60, "up", "one-way")]),
    "one-way->up": (one_way_to_up, [(T0, "down", "up"), (T0 + 60, "up", "one-way"), (T0 + 70, "one-way", "up")]),
    "up->rekeying": (up_to_rekeying, [(T0, "down", "up"), (T0 + 3300, "up", "rekeying")]),
    "rekeying->up": (rekeying_to_up, [(T0, "down", "up"), (T0 + 3300, "up", "rekeying"),
                                      (T0 + 3302, "rekeying", "up")]),
    "rekeying->expiring": (rekeying_to_expiring, [(T0, "down", "up"), (T0 + 3300, "up", "rekeying"),
                                                  (T0 + 3840, "rekeying", "expiring")]),
    "expiring->down": (expiring_to_down, [(T0, "down", "up"), (T0 + 3300, "up", "rekeying"),
                                          (T0 + 3840, "rekeying", "expiring"), (T0 + 3960, "expiring", "down")]),
    "expiring->up": (expiring_to_up, [(T0, "down", "up"), (T0 + 3300, "up", "rekeying"),
                                      (T0 + 3840, "rekeying", "expiring"), (T0 + 3850, "expiring", "up")]),
    "up->errors": (up_to_errors, [(T0, "down", "up"), (T0 + 100, "up", "errors")]),
    "errors->up": (errors_to_up, [(T0, "down", "up"), (T0 + 100, "up", "errors"), (T0 + 400, "errors", "up")]),
    "up->down": (up_to_down, [(T0, "down", "up"), (T0 + 50, "up", "down")]),
    "idle->rekeying": (idle_to_rekeying, [(T0, "down", "up"), (T0 + 300, "up", "idle"),
                                          (T0 + 3300, "idle", "rekeying")]),
    "down->up->expiring": (down_up_expiring, [(T0, "down", "up"), (T0 + 75, "up", "expiring")]),
    "rekeying->down": (rekeying_to_down, [(T0, "down", "up"), (T0 + 3300, "up", "rekeying"),
                                          (T0 + 3310, "rekeying", "down")]),
    "errors->down": (errors_to_down, [(T0, "down", "up"), (T0 + 100, "up", "errors"), (T0 + 150, "errors", "down")]),
    "one-way->down": (one_way_to_down, [(T0, "down", "up"), (T0 + 60, "up", "one-way"),
                                        (T0 + 65, "one-way", "down")]),
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_transition(name: str) -> None:
    """Each scenario yields exactly its (time, from, to) transitions, and ``since`` is the last one's time."""
    steps, expected = SCENARIOS[name]
    g = Gw(idle_after=300, one_way_after=60, expiring_margin=120, errors_window=300)
    steps(g)
    assert expected == g.transitions()
    j = g.json(expected[-1][0])
    assert expected[-1][2] == j["state"]
    assert expected[-1][0] == j["since"]


def test_one_way_to_idle_with_short_idle_threshold() -> None:
    """With idle_after < one_way_after, a one-way tunnel whose outbound stops goes straight to idle."""
    g = Gw(idle_after=30, one_way_after=60)
    one_way_to_idle(g)
    assert g.transitions() == [(T0, "down", "up"), (T0 + 60, "up", "one-way"), (T0 + 110, "one-way", "idle")]


def test_scenarios_cover_every_state_as_source_and_target() -> None:
    """The scenario table enters and leaves every state of the transition table."""
    froms = {f for _, exp in SCENARIOS.values() for _, f, _ in exp}
    tos = {t for _, exp in SCENARIOS.values() for _, _, t in exp}
    states = {s.value for s in TRANSITIONS}
    assert states == froms
    assert states == tos


def test_idle_reason_carries_the_aws_advice() -> None:
    """The idle reason tells the operator that AWS never initiates and what to do."""
    g = Gw()
    up_to_idle(g)
    text = g.json(T0 + 400)["reasons"][0]["text"]
    assert "never initiates" in text
    assert "restart" in text
    assert g.json(T0 + 400)["reasons"][0]["code"] == "no_traffic"


def test_one_way_hint() -> None:
    """A one-way tunnel carries the peer-not-answering / far-side-selectors hint."""
    g = Gw()
    _one_way(g)
    j = g.json(T0 + 60)
    assert [r["code"] for r in j["reasons"]] == ["inbound_flat"]
    hint_text = {h["code"]: h["text"] for h in j["hints"]}["one_way"]
    assert "selectors" in hint_text
    assert "peer" in hint_text


def test_rekey_completed_detail_and_old_sa_deletion_later_is_no_failure() -> None:
    """strongSwan order: soft expire, new pair, old out deleted, old in deleted 5 s later: one rekey, no failure."""
    g = Gw()
    _up(g)
    i0, o0 = g.gens[0]
    g.ev(T0 + 3300, expire(with_counters(i0, 500, 5), hard=False))
    i1, o1 = g.pair(1, T0 + 3302)
    g.ev(T0 + 3302, updsa(i1))
    g.ev(T0 + 3302.5, newsa(o1))
    g.ev(T0 + 3303, delsa(with_counters(o0, 700, 7)))
    g.ev(T0 + 3308, delsa(with_counters(i0, 600, 6)))
    g.ev(T0 + 3360, expire(o1, hard=False)._replace(sa=o0))  # a late soft EXPIRE of the deleted old SA
    done = g.of_type("rekey_completed")
    assert len(done) == 1
    assert done[0].detail["duration"] == 2.5
    assert done[0].detail["old_spis"] == ["0x00001000", "0x00002000"]
    assert done[0].detail["new_spis"] == ["0x00001001", "0x00002001"]
    assert g.of_type("rekey_failed") == []
    assert g.of_type("tunnel_down") == []
    j = g.json(T0 + 3310)
    assert (j["rekeys"], j["rekey_failures"]) == (1, 0)
    assert j["last_rekey"] == {"ts": T0 + 3302.5, "duration": 2.5, "old_spis": ["0x00001000", "0x00002000"],
            "new_spis": ["0x00001001", "0x00002001"]}
    assert (j["bytes_in"], j["bytes_out"], j["packets_in"], j["packets_out"]) == (600, 700, 6, 7)
    assert j["state"] == "up"


def test_replacement_without_soft_expire_counts_as_rekey() -> None:
    """libreswan: no time lifetimes in the kernel; a new pair replacing the old one is a rekey."""
    g = Gw()
    g.policies(T0 - 10)
    g.install(T0, soft=0, hard=0)
    g.install(T0 + 28800, gen=1, soft=0, hard=0)
    i0, o0 = g.gens[0]
    g.ev(T0 + 28801, delsa(o0), delsa(i0))
    done = g.of_type("rekey_completed")
    assert len(done) == 1
    assert done[0].detail["soft_expire"] is False
    assert g.of_type("rekey_failed") == []
    assert g.of_type("tunnel_down") == []


def test_replacement_rekey_reports_both_old_spis() -> None:
    """A rekey recognised from pair replacement alone names the whole replaced pair as old SPIs,
    including the SA of the direction whose successor arrived first."""
    g = Gw()
    g.policies(T0 - 10)
    i0, o0 = g.install(T0, soft=0, hard=0)
    i1, o1 = g.install(T0 + 28800, gen=1, soft=0, hard=0)
    done = g.of_type("rekey_completed")
    assert len(done) == 1
    assert done[0].detail["old_spis"] == [f"0x{i0.spi:08x}", f"0x{o0.spi:08x}"]
    assert done[0].detail["new_spis"] == [f"0x{i1.spi:08x}", f"0x{o1.spi:08x}"]
    assert g.json(T0 + 28800)["last_rekey"]["old_spis"] == done[0].detail["old_spis"]

def test_hard_expire_counters_and_failure_reason() -> None:
    """A hard EXPIRE (no DELSA follows) gives the final counters, a rekey_failed and tunnel_down(hard_expired)."""
    g = Gw()
    expiring_to_down(g)
    j = g.json(T0 + 3960)
    assert (j["bytes_in"], j["bytes_out"], j["packets_in"], j["packets_out"]) == (1500, 2500, 15, 25)
    assert j["rekey_failures"] == 1
    downs = g.of_type("tunnel_down")
    assert [d.detail["reason"] for d in downs] == ["hard_expired"]
    assert "hard_expired" in [r["code"] for r in j["reasons"]]
    assert len(g.of_type("rekey_failed")) == 1


def test_delete_without_rekey_is_down_but_not_a_rekey_failure() -> None:
    """An IKE delete (no rekey in progress) takes the tunnel down with reason sa_deleted; no rekey_failed."""
    g = Gw()
    up_to_down(g)
    assert [d.detail["reason"] for d in g.of_type("tunnel_down")] == ["sa_deleted"]
    assert g.of_type("rekey_failed") == []


def test_delete_during_rekey_is_a_rekey_failure() -> None:
    """Deleting the SAs while a rekey is in progress fails the rekey."""
    g = Gw()
    rekeying_to_down(g)
    assert [e.detail["reason"] for e in g.of_type("rekey_failed")] == ["sa_deleted"]


def test_acquire_without_sa_is_negotiation_failed() -> None:
    """An ACQUIRE not followed by an SA pair within the grace period emits negotiation_failed at the deadline."""
    g = Gw(acquire_grace=30)
    g.policies(T0 - 10)
    g.ev(T0, acquire(seq=1))
    g.ev(T0 + 5, acquire(seq=2))
    g.run_until(T0 + 100)
    failed = g.of_type("negotiation_failed")
    assert [e.ts for e in failed] == [T0 + 30]
    assert len(g.of_type("acquire")) == 2
    j = g.json(T0 + 100)
    assert [r["code"] for r in j["reasons"]] == ["negotiation_failed"]
    assert "repeated_acquire" in [h["code"] for h in j["hints"]]


def test_acquire_followed_by_sa_is_fine() -> None:
    """An ACQUIRE answered by an SA pair within the grace period is no failure."""
    g = Gw(acquire_grace=30)
    g.policies(T0 - 10)
    g.ev(T0, acquire())
    g.install(T0 + 2)
    g.run_until(T0 + 100)
    assert g.of_type("negotiation_failed") == []
    assert g.json(T0 + 100)["state"] == "up"


def test_answered_acquires_leave_no_repeated_acquire_hint() -> None:
    """ACQUIREs answered by an SA pair are forgotten: when the tunnel later goes down by an IKE delete
    (no new ACQUIRE), it carries no stale repeated_acquire hint; new ACQUIREs count afresh."""
    g = Gw(acquire_grace=30)
    g.policies(T0 - 10)
    g.ev(T0, acquire(seq=1))
    g.ev(T0 + 1, acquire(seq=2))
    i, o = g.install(T0 + 2)
    g.run_until(T0 + 50)
    g.ev(T0 + 100, delsa(o), delsa(i))
    j = g.json(T0 + 100)
    assert j["state"] == "down"
    assert "repeated_acquire" not in [h["code"] for h in j["hints"]], j["hints"]
    g.ev(T0 + 110, acquire(seq=3))
    g.ev(T0 + 111, acquire(seq=4))
    assert [e.detail["count"] for e in g.of_type("acquire")] == [1, 2, 1, 2]
    assert "repeated_acquire" in [h["code"] for h in g.json(T0 + 111)["hints"]]

def test_policies_without_sa_are_a_down_tunnel_that_never_vanishes() -> None:
    """Configured-but-down tunnels stay in the view however long nothing happens."""
    g = Gw(forget_after=60)
    g.policies(T0)
    g.run_until(T0 + 10 * 86400)
    j = g.json(T0 + 10 * 86400)
    assert j["state"] == "down"
    assert [r["code"] for r in j["reasons"]] == ["no_sa"]
    assert j["selectors"] == [{"src": "10.1.0.0/16", "dst": "10.192.0.0/12", "proto": 0, "sport": 0, "dport": 0}]


def test_down_tunnel_without_policies_is_forgotten() -> None:
    """A tunnel with no SA and no policy left is dropped after forget_after, and reported dirty."""
    g = Gw(forget_after=600)
    g.install(T0)
    tid = g.tid
    i, o = g.gens[0]
    g.ev(T0 + 10, delsa(o), delsa(i))
    g.c.take_dirty()
    g.run_until(T0 + 605)
    assert tid in g.c.tunnel_ids()
    g.run_until(T0 + 615)
    assert g.c.tunnel_ids() == []
    assert g.c.tunnel_json(tid, T0 + 615) is None
    assert tid in g.c.take_dirty()


def test_larval_sas_are_not_tunnel_sas() -> None:
    """ALLOCSPI larval states (reqid 0, no algorithms) make no tunnel; the UPDSA replacing one does."""
    g = Gw()
    larval = make_sa(0x1000, inbound=True, larval=True, add_time=T0)
    g.ev(T0, newsa(larval))
    assert g.c.tunnel_ids() == []
    g.install(T0 + 1)
    assert len(g.json(T0 + 1)["sas"]) == 2


def test_events_have_strictly_increasing_seq_and_public_json() -> None:
    """Every health event has a global, strictly increasing seq and the public JSON keys."""
    g = Gw()
    rekeying_to_up(g)
    seqs = [e.seq for e in g.events]
    assert seqs == sorted(set(seqs))
    assert g.c.seq == seqs[-1]
    assert {"seq", "ts", "type", "tunnel", "netns", "detail"} == set(g.events[0].to_json())


def test_counters_row() -> None:
    """counters_row gives [id, bytes_in, bytes_out, packets_in, packets_out, rate_in, rate_out, state]."""
    g = Gw()
    _up(g)
    g.traffic(T0 + 10, 0, 1000, 3000)
    g.traffic(T0 + 20, 0, 2000, 5000)
    row = g.c.counters_row(g.tid)
    assert [g.tid, 2000, 5000, 20, 50, 100.0, 200.0, "up"] == row
    assert g.c.counters_row("nope") is None


def test_mark_and_if_id_separate_tunnels_with_same_reqid_and_peer() -> None:
    """Two tunnels with the same reqid and peers but different xfrm interface ids are two tunnels."""
    g = Gw()
    g.install(T0, gen=0, if_id=5)
    g.install(T0, gen=1, if_id=6)
    ids = g.c.tunnel_ids()
    assert len(ids) == 2
    assert all("/" not in i for i in ids)
    assert {"gw:1:192.0.2.1-198.51.100.7:if5", "gw:1:192.0.2.1-198.51.100.7:if6"} == set(ids)


def test_tunnel_id_is_stable_across_rekeys_and_url_safe() -> None:
    """The id does not change through a rekey, and a path-like netns name yields no '/'."""
    g = Gw(netns="/proc/123/ns/net")
    _up(g)
    before = g.tid
    g.ev(T0 + 3300, expire(g.gens[0][0], hard=False))
    g.install(T0 + 3301, gen=1)
    assert before == g.tid
    assert "/" not in before


def test_direction_from_policies_when_no_sa_dir() -> None:
    """Without SA_DIR, the policy templates tell which end is local."""
    g = Gw()
    g.policies(T0 - 10)
    i = make_sa(0x1000, inbound=True, sa_dir=False, add_time=T0, nbytes=100)
    o = make_sa(0x2000, inbound=False, sa_dir=False, add_time=T0, nbytes=300)
    g.ev(T0, newsa(i), newsa(o))
    j = g.json(T0)
    assert (j["local"], j["remote"]) == ("192.0.2.1", "198.51.100.7")
    assert (j["bytes_in"], j["bytes_out"]) == (100, 300)
    assert {s["spi"]: s["direction"] for s in j["sas"]} == {"0x00001000": "in", "0x00002000": "out"}
    assert "direction_unknown" not in [h["code"] for h in j["hints"]]


def test_direction_guess_is_corrected_when_a_policy_arrives() -> None:
    """With no evidence the direction is a hinted guess; a later policy fixes it (totals follow)."""
    g = Gw()
    # make the guess wrong: lo ("192.0.2.1") is the guessed local, so use a local address that sorts high
    i = make_sa(0x1000, inbound=True, sa_dir=False, add_time=T0, nbytes=100, local="203.0.113.9", peer="192.0.2.50")
    o = make_sa(0x2000, inbound=False, sa_dir=False, add_time=T0, nbytes=300, local="203.0.113.9",
                peer="192.0.2.50")
    g.ev(T0, newsa(i), newsa(o))
    j = g.json(T0)
    assert "direction_unknown" in [h["code"] for h in j["hints"]]
    from correlate_builders import make_policy, newpolicy
    g.ev(T0 + 1, newpolicy(make_policy(1, local="203.0.113.9", peer="192.0.2.50")))
    j = g.json(T0 + 1)
    assert (j["local"], j["remote"]) == ("203.0.113.9", "192.0.2.50")
    assert (j["bytes_in"], j["bytes_out"]) == (100, 300)
    assert "direction_unknown" not in [h["code"] for h in j["hints"]]


def test_configured_local_addresses_give_direction() -> None:
    """HealthConfig.local_addresses resolves direction when neither SA_DIR nor policies exist."""
    g = Gw(local_addresses=["203.0.113.9"])
    i = make_sa(0x1000, inbound=True, sa_dir=False, add_time=T0, nbytes=100, local="203.0.113.9", peer="192.0.2.50")
    g.ev(T0, newsa(i))
    j = g.json(T0)
    assert j["local"] == "203.0.113.9"
    assert j["bytes_in"] == 100


def test_flush_takes_everything_down() -> None:
    """FLUSHSA (one message, no per-SA DELSA) takes every tunnel down with reason flushed."""
    from monitor.wire import xfrm as X
    from monitor.wire.events import NlHeader, SAFlushed
    g = Gw()
    _up(g)
    g.ev(T0 + 5, SAFlushed(NlHeader(X.XFRM_MSG_FLUSHSA), 255))
    assert [d.detail["reason"] for d in g.of_type("tunnel_down")] == ["flushed"]
    assert g.json(T0 + 5)["sas"] == []


def test_netns_removed() -> None:
    """Removing a netns takes its up tunnels down (netns_removed) and drops them from the view."""
    g = Gw()
    _up(g)
    tid = g.tid
    g.c.take_dirty()
    g.c.on_netns_removed("gw", T0 + 9)
    g.events.extend(g.c.drain_events())
    assert [d.detail["reason"] for d in g.of_type("tunnel_down")] == ["netns_removed"]
    assert [d.detail["from"] for d in g.of_type("tunnel_down")] == ["up"]  # as every tunnel_down says (issue 12.6)
    assert g.c.tunnel_json(tid, T0 + 9) is None
    assert {tid} == g.c.take_dirty()
    assert g.c.netns_names() == []


def test_nat_mapping_event_and_hint() -> None:
    """A MAPPING event becomes nat_mapping_changed and a temporary hint."""
    from monitor.wire import xfrm as X
    from monitor.wire.events import NatMapping, NlHeader, SAId
    g = Gw(hint_ttl=100)
    i, _ = g.install(T0)
    g.ev(T0 + 1, NatMapping(NlHeader(X.XFRM_MSG_MAPPING), SAId(i.daddr, i.spi, 2, 50), 1,
                            "198.51.100.7", "198.51.100.8", 4500, 4501))
    ev = g.of_type("nat_mapping_changed")
    assert [f"{e.detail['old']} -> {e.detail['new']}" for e in ev] == ["198.51.100.7:4500 -> 198.51.100.8:4501"]
    assert "nat_mapping" in [h["code"] for h in g.json(T0 + 2)["hints"]]
    g.run_until(T0 + 200)
    assert "nat_mapping" not in [h["code"] for h in g.json(T0 + 200)["hints"]]


def test_updsa_with_request_built_counters_never_lowers() -> None:
    """An UPDSA of a valid SA carries zero counters (request-built); the totals do not drop."""
    g = Gw()
    _up(g)
    g.traffic(T0 + 10, 0, 5000, 5000)
    i, _ = g.gens[0]
    g.ev(T0 + 11, updsa(i))  # counters 0
    assert (g.json(T0 + 11)["bytes_in"], g.json(T0 + 11)["bytes_out"]) == (5000, 5000)


def test_replay_and_integrity_error_events() -> None:
    """Rising replay / integrity counters emit events with the delta and set the errors reasons."""
    g = Gw()
    _up(g)
    i, o = g.gens[0]
    g.dump(T0 + 10, with_counters(i, 10, 1, replay=2, integrity=1), o)
    g.dump(T0 + 20, with_counters(i, 10, 1, replay=5, integrity=1), o)
    assert [e.detail["delta"] for e in g.of_type("replay_errors")] == [2, 3]
    assert [e.detail["delta"] for e in g.of_type("integrity_errors")] == [1]
    j = g.json(T0 + 20)
    assert (j["replay_errors"], j["integrity_errors"]) == (5, 1)
    assert {"replay_errors", "integrity_errors"} == {r["code"] for r in j["reasons"]}


def test_soft_expire_of_unknown_sa_is_learned() -> None:
    """An EXPIRE for an SA never seen adds it (the EXPIRE carries the full SA)."""
    g = Gw()
    sa = make_sa(0x1000, inbound=True, add_time=T0, nbytes=42)
    g.ev(T0 + 1, expire(sa, hard=False))
    assert g.json(T0 + 1)["bytes_in"] == 42


def test_state_values_are_the_issue_states() -> None:
    """The states are exactly the ones the issue names (the set may grow, these must exist)."""
    assert {"up", "idle", "one-way", "rekeying", "expiring", "down", "errors"} <= {s.value for s in TunnelState}


def test_dump_record_fast_path_handles_new_sa() -> None:
    """An SA first seen in a (non-initial) dump is added like a notification would."""
    g = Gw()
    g.dump(T0)  # initial (empty) load
    g.events.clear()
    i = make_sa(0x1000, inbound=True, add_time=T0)
    o = make_sa(0x2000, inbound=False, add_time=T0)
    g.dump(T0 + 10, i, o)
    assert g.types() == ["sa_added", "sa_added", "state_changed", "tunnel_up"]


def test_errors_reasons_reset_after_the_window() -> None:
    """Replay errors in one window and integrity errors in a later one: the later errors state names only
    integrity errors."""
    g = Gw(errors_window=100)
    _up(g)
    i, o = g.gens[0]
    g.dump(T0 + 10, with_counters(i, 10, 1, replay=2), o)
    g.run_until(T0 + 200)
    assert g.json(T0 + 200)["state"] != "errors"
    g.dump(T0 + 210, with_counters(i, 20, 2, replay=2, integrity=1), o)
    assert [r["code"] for r in g.json(T0 + 210)["reasons"]] == ["integrity_errors"]


def test_traffic_seen_between_dumps_ends_idle() -> None:
    """Counters moving through an event (NEWAE) end the idle state without waiting for a dump."""
    from monitor.wire import xfrm as X
    from monitor.wire.events import AsyncEvent, LifetimeCur, NlHeader, SAId
    g = Gw()
    up_to_idle(g)
    i, _ = g.gens[0]
    g.ev(T0 + 420, AsyncEvent(NlHeader(X.XFRM_MSG_NEWAE), SAId(i.daddr, i.spi, 2, 50), i.saddr, 0, 1,
                              lifetime=LifetimeCur(500, 5, 0, 0)))
    assert g.transitions()[-1] == (T0 + 420, "idle", "up")


def test_policy_deleted_by_selector_removes_the_matching_port_policy() -> None:
    """A DELPOLICY that names its policy only by selector (no index, no XFRMA_POLICY) removes the policy
    whose whole selector matches, not another one with the same ranges but other ports."""
    g = Gw()
    base = make_policy(1)
    ssh = base._replace(sel=base.sel._replace(proto=6, dport=22), index=100)
    https = base._replace(sel=base.sel._replace(proto=6, dport=443), index=101)
    g.ev(T0, newpolicy(ssh), newpolicy(https))
    g.ev(T0 + 1, PolicyDeleted(NlHeader(X.XFRM_MSG_DELPOLICY), PolicyId(https.sel, 0, 1), None))
    removed = g.of_type("policy_removed")
    assert [e.detail["index"] for e in removed] == [101], [e.detail for e in removed]
    assert [s["dport"] for s in g.json(T0 + 1)["selectors"]] == [22]


def test_forgotten_tunnel_is_not_reported_again_by_the_next_dump() -> None:
    """A tunnel that had a rate and was then forgotten (no SA, no policy, no dump in between) is not
    held on to: the next dump reports no change for it (no second removal of an id already gone)."""
    g = Gw(forget_after=600)
    i, o = g.install(T0)
    g.traffic(T0 + 10, 0, 100, 100)
    g.traffic(T0 + 20, 0, 200, 300)
    g.ev(T0 + 30, delsa(o), delsa(i))
    g.run_until(T0 + 1000)
    assert g.c.tunnel_ids() == []
    g.c.take_dirty()
    g.dump(T0 + 1010)
    assert g.c.take_dirty() == set()


def test_advice_follows_the_configured_peer_kind() -> None:
    """The no_traffic/no_sa advice is neutral by default and AWS-specific only when told (issue 12.13)."""
    import pytest

    from monitor.errors import ConfigError
    from monitor.health.model import HealthConfig, reason

    for code in ("no_traffic", "no_sa"):
        generic = reason(code, HealthConfig()).text
        aws = reason(code, HealthConfig(peer_kind="aws")).text
        assert "AWS" not in generic
        assert "never initiates" in generic
        assert "The AWS side never initiates" in aws
    with pytest.raises(ConfigError, match="peer_kind"):
        HealthConfig(peer_kind="azure")


def test_inbound_moving_outbound_flat_is_its_own_one_way() -> None:
    """The reverse one-way (issue 12.12): inbound grows, nothing is sent (a return route outside the
    tunnel). It has its own reason and hint, and a packet arriving on an idle tunnel is not one-way yet."""
    g = Gw()
    _up(g)
    for k in range(1, 8):  # inbound grows every 10 s, outbound never moves
        g.traffic(T0 + 10 * k, 0, 1000 * k, 0)
    g.run_until(T0 + 75)
    t = g.json(T0 + 75)
    assert t["state"] == "one-way", g.transitions()
    assert [r["code"] for r in t["reasons"]] == ["outbound_flat"]
    assert "one_way_out" in [h["code"] for h in t["hints"]]
    g.traffic(T0 + 80, 0, 8000, 500)  # an answer leaves: up again
    assert g.transitions()[-1] == (T0 + 80, "one-way", "up")


def test_down_tunnel_is_forgotten_forget_after_its_last_policy_went() -> None:
    """Ghost tunnels (issue 12.1): a tunnel that went down long ago and loses its policies later still goes,
    forget_after after the later of the two, with tunnel_removed on its dirty set."""
    g = Gw(forget_after=5)
    _up(g)
    tid = g.tid
    i, o = g.gens[0]
    g.ev(T0 + 10, delsa(i), delsa(o))
    assert g.json(T0 + 10)["state"] == "down"
    g.run_until(T0 + 100)  # long past forget_after: the policies keep it
    assert g.c.tunnel_json(tid, T0 + 100) is not None
    pols = list(g.c._ns["gw"].policies.values())
    g.ev(T0 + 100, *[PolicyDeleted(NlHeader(X.XFRM_MSG_DELPOLICY), PolicyId(make_policy(1).sel, p.index, p.dir),
                                   None) for p in pols])
    assert g.c.tunnel_json(tid, T0 + 104) is not None
    assert g.c.next_deadline() == T0 + 105
    g.run_until(T0 + 106)
    assert g.c.tunnel_json(tid, T0 + 106) is None
