"""Rekeys whose notifications an overrun dropped (issue 18, the VM storm's run 9): pure correlator, explicit times.

Each history is one seen on the real kernel (``tests/vm/scenarios/storm.sh``, artifacts of run 9). strongSwan
rekeys a child as: soft EXPIRE of an old SA, UPDSA new inbound, NEWSA new outbound, DELSA old outbound, and the
old inbound SA's DELSA about 5 s later. The kernel inserts each new SA at the head of its SA list and a dump
walks from the head, so a dump lists a new pair outbound first.
"""

from __future__ import annotations

from correlate_builders import delsa, expire, with_counters
from correlate_harness import T0, Gw


def _busy(g: Gw) -> None:
    g.policies(T0 - 10)
    g.install(T0)
    g.traffic(T0 + 10, 0, 1000, 1000)


def _lost_pair_dumped_out_first(g: Gw, *, soft_seen: bool) -> None:
    """Reqid 136 of run 9: (the old outbound SA's soft EXPIRE read,) an overrun loses the new pair and the old
    outbound SA's DELSA, the old inbound SA's DELSA is read, then the resync dump lists the new outbound SA
    before the new inbound SA and no longer lists the old outbound SA."""
    _busy(g)
    i0, o0 = g.gens[0]
    if soft_seen:
        g.ev(T0 + 20, expire(with_counters(o0, 1000, 10), hard=False))
    g.events.clear()
    g.c.on_resync(g.ns, T0 + 30)
    i1, o1 = g.pair(1, T0 + 25)
    g.ev(T0 + 31, delsa(with_counters(i0, 1000, 10)))
    g.dump(T0 + 33, with_counters(o1, 60, 1), with_counters(i1, 50, 1), begin=T0 + 32)


def test_soft_expired_rekey_is_not_failed_by_a_delsa_read_before_the_resync_dump() -> None:
    """Soft EXPIRE seen, new pair lost, old inbound DELSA read: not a failed rekey but one completed rekey once
    the resync dump shows the new pair; no down, no up. (Before the fix: rekey_failed, reason sa_deleted, at the
    DELSA, and 0 rekeys: the new pair found by the dump started none.)"""
    g = Gw()
    _lost_pair_dumped_out_first(g, soft_seen=True)
    types = g.types()
    assert [t for t in types if t in ("rekey_failed", "tunnel_down", "tunnel_up")] == []
    assert g.transitions() == [(T0 + 33, "rekeying", "up")]  # rekeying since the soft EXPIRE
    assert types.count("rekey_completed") == 1
    j = g.json(T0 + 33)
    assert (j["state"], j["rekeys"], j["rekey_failures"]) == ("up", 1, 0)
    assert {"0x00001001", "0x00002001"} == {s["spi"] for s in j["sas"]}
    done = g.of_type("rekey_completed")[0].detail
    assert (done["new_spis"], done["soft_expire"]) == (["0x00001001", "0x00002001"], True)


def test_unseen_rekey_counts_when_the_dump_lists_the_new_outbound_sa_first() -> None:
    """The same without the soft EXPIRE (it was lost too): the outbound generation changed, so that is one
    rekey, though the tunnel held only the old outbound SA when the dump listed the new one. (Before the fix:
    0 rekeys; 88 children of run 9 ended one or two short this way.)"""
    g = Gw()
    _lost_pair_dumped_out_first(g, soft_seen=False)
    types = g.types()
    assert [t for t in types if t in ("rekey_failed", "tunnel_down", "tunnel_up", "state_changed")] == []
    j = g.json(T0 + 33)
    assert (j["state"], j["rekeys"], j["rekey_failures"]) == ("up", 1, 0)
    assert (j["bytes_out"], j["bytes_in"]) == (1060, 1050)


def test_unseen_rekey_counts_when_the_old_outbound_delsa_was_read_and_both_old_sas_went() -> None:
    """Both old SAs' DELSAs read after the overrun, the new pair's notifications lost: the tunnel held no SA at
    all until the resync dump listed the new pair (outbound first). One rekey, no failure, no flap. (Before the
    fix: 0 rekeys, since the new outbound SA had no older outbound SA to replace.)"""
    g = Gw()
    _busy(g)
    i0, o0 = g.gens[0]
    g.events.clear()
    g.c.on_resync(g.ns, T0 + 30)
    i1, o1 = g.pair(1, T0 + 25)
    g.ev(T0 + 31, delsa(with_counters(o0, 1000, 10)))
    g.ev(T0 + 31.5, delsa(with_counters(i0, 1000, 10)))
    g.dump(T0 + 33, o1, i1, begin=T0 + 32)
    types = g.types()
    assert [t for t in types if t in ("rekey_failed", "tunnel_down", "tunnel_up", "state_changed")] == []
    assert types.count("rekey_completed") == 1
    assert (g.json(T0 + 33)["state"], g.json(T0 + 33)["rekeys"]) == ("up", 1)


def test_a_rekey_that_really_failed_meanwhile_is_reported_at_the_resync_dump_end() -> None:
    """Deferred, not dropped: soft EXPIRE seen, the old inbound SA deleted and no new pair in the resync dump.
    The rekey fails once, at the dump's end, with the DELSA's reason, and the tunnel goes down then. (Before the
    fix the failure was called at the DELSA, T0 + 31, before the dump could say whether a new pair existed.)"""
    g = Gw()
    _busy(g)
    i0, o0 = g.gens[0]
    g.ev(T0 + 20, expire(with_counters(o0, 1000, 10), hard=False))
    g.events.clear()
    g.c.on_resync(g.ns, T0 + 30)
    g.ev(T0 + 31, delsa(with_counters(i0, 1000, 10)))
    g.dump(T0 + 33, with_counters(o0, 1000, 10), begin=T0 + 32)
    failed = g.of_type("rekey_failed")
    assert [(e.ts, e.detail["reason"], e.detail["spi"]) for e in failed] == [(T0 + 33, "sa_deleted", "0x00001000")]
    assert [e.ts for e in g.of_type("tunnel_down")] == [T0 + 33]
    j = g.json(T0 + 33)
    assert (j["state"], j["rekeys"], j["rekey_failures"]) == ("down", 0, 1)

