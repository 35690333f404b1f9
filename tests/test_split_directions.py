"""Split directions (issue 12 item 5): ``mark_in != mark_out`` or per-direction if_ids make one tunnel.

strongSwan installs the inbound SA and in/fwd policies with ``mark_in``/``if_id_in`` and the outbound ones with
``mark_out``/``if_id_out``, same reqid, same outer pair. Before the fix each direction was a tunnel of its own
and both read ``down`` (``missing_out`` / ``missing_in``). Two real route-based tunnels that differ only in
if_id or mark carry both directions each and must stay two.
"""

from __future__ import annotations

from typing import Any

from correlate_builders import make_policy, make_sa, newpolicy, newsa, updsa, with_counters
from correlate_harness import T0, Gw

from monitor.health.model import HealthConfig

MARK_IN, MARK_OUT = 0x10, 0x20


def _split_install(g: Gw, now: float, *, by: str = "mark", gen: int = 0) -> tuple[Any, Any]:
    kin: dict[str, Any] = {by: MARK_IN if by == "mark" else 1}
    kout: dict[str, Any] = {by: MARK_OUT if by == "mark" else 2}
    g.ev(now, *(newpolicy(make_policy(d, **kin)) for d in (0, 2)), newpolicy(make_policy(1, **kout)))
    i = make_sa(0x1000 + gen, inbound=True, add_time=now, soft=3300, hard=3960, **kin)
    o = make_sa(0x2000 + gen, inbound=False, add_time=now, soft=3360, hard=3960, **kout)
    g.ev(now, updsa(i), newsa(o))
    return i, o


def test_mark_in_mark_out_is_one_tunnel_and_up() -> None:
    g = Gw()
    i, o = _split_install(g, T0)
    ids = g.c.tunnel_ids()
    assert len(ids) == 1, ids
    j = g.json(T0)
    assert j["state"] == "up", j["reasons"]
    assert {(h["direction"], h["mark"]) for h in j["halves"]} == {("in", MARK_IN), ("out", MARK_OUT)}
    assert sorted(sa["spi"] for sa in j["sas"]) == ["0x00001000", "0x00002000"]
    assert "tunnel_down" not in g.types()
    # counters keep flowing into the one tunnel through both keys
    g.dump(T0 + 10, with_counters(i, 5000, 50), with_counters(o, 7000, 70))
    j = g.json(T0 + 10)
    assert (j["bytes_in"], j["bytes_out"]) == (5000, 7000)


def test_per_direction_if_id_is_one_tunnel() -> None:
    g = Gw()
    _split_install(g, T0, by="if_id")
    j = g.json(T0)
    assert j["state"] == "up", j["reasons"]
    assert {(h["direction"], h["if_id"]) for h in j["halves"]} == {("in", 1), ("out", 2)}


def test_initial_dump_joins_the_halves_quietly() -> None:
    """The monitor starts on a running gateway: SA dump (no SA_DIR), then the policy dump."""
    g = Gw()
    i = make_sa(0x1000, inbound=True, add_time=T0, sa_dir=False, mark=MARK_IN)
    o = make_sa(0x2000, inbound=False, add_time=T0, sa_dir=False, mark=MARK_OUT)
    g.c.on_dump_begin(g.ns, "sa", T0)
    g.c.on_events(g.ns, [newsa(i, dump_seq=1), newsa(o, dump_seq=1)], T0)
    g.c.on_dump_end(g.ns, "sa", T0)
    g.c.on_dump_begin(g.ns, "policy", T0)
    pols = [make_policy(0, mark=MARK_IN), make_policy(2, mark=MARK_IN), make_policy(1, mark=MARK_OUT)]
    g.c.on_events(g.ns, [newpolicy(p, dump_seq=2) for p in pols], T0)
    g.c.on_dump_end(g.ns, "policy", T0)
    g.events.extend(g.c.drain_events())
    assert len(g.c.tunnel_ids()) == 1, g.c.tunnel_ids()
    assert g.json(T0)["state"] == "up"
    assert not [e for e in g.events if e.type in ("tunnel_down", "tunnel_joined")]


def test_route_based_tunnels_differing_only_in_if_id_stay_two() -> None:
    """Two xfrm interfaces to one peer under one reqid: each carries both directions."""
    g = Gw()
    for n, if_id in enumerate((201, 202)):
        g.ev(T0, *(newpolicy(make_policy(d, if_id=if_id, index=64 + 8 * n + d)) for d in (0, 1, 2)))
        g.ev(T0, updsa(make_sa(0x1000 + n, inbound=True, add_time=T0, if_id=if_id)),
             newsa(make_sa(0x2000 + n, inbound=False, add_time=T0, if_id=if_id)))
    ids = g.c.tunnel_ids()
    assert len(ids) == 2, ids
    for tid in ids:
        j = g.c.tunnel_json(tid, T0)
        assert j is not None
        assert j["state"] == "up"
        assert "halves" not in j


def test_joined_tunnel_goes_down_and_is_forgotten_whole() -> None:
    g = Gw(forget_after=10)
    i, o = _split_install(g, T0)
    tid = g.tid
    g.ev(T0 + 1, *(ev for ev in _deletes(i, o)))  # SAs and policies gone: held for supersede_grace, then down
    g.run_until(T0 + 1 + HealthConfig().supersede_grace)
    assert g.json(T0 + 1 + HealthConfig().supersede_grace)["state"] == "down"
    g.run_until(T0 + 20)
    assert g.c.tunnel_ids() == []
    ns = g.c._ns[g.ns]
    assert not ns.tunnels, ns.tunnels  # both keys of the joined tunnel are gone
    assert not ns.by_pair
    assert not ns.split_pairs
    assert [e.tunnel for e in g.of_type("tunnel_down")] == [tid]


def _deletes(i: Any, o: Any) -> list[Any]:
    from correlate_builders import delpolicy, delsa

    pols = [make_policy(0, mark=MARK_IN), make_policy(2, mark=MARK_IN), make_policy(1, mark=MARK_OUT)]
    return [delsa(i), delsa(o), *(delpolicy(p) for p in pols)]


def test_one_direction_without_a_mark_is_joined_too() -> None:
    """A tunnel with mark and if_id 0 is kept out of ``by_pair`` until a second tunnel with its (reqid, pair)
    comes (``NetnsState.pair``); the halves are joined either way round, into the tunnel that came first."""
    for m_in, m_out in ((0, MARK_OUT), (MARK_IN, 0)):
        g = Gw()
        g.ev(T0, *(newpolicy(make_policy(d, mark=m_in)) for d in (0, 2)), newpolicy(make_policy(1, mark=m_out)))
        g.ev(T0, updsa(make_sa(0x1000, inbound=True, add_time=T0, mark=m_in)),
             newsa(make_sa(0x2000, inbound=False, add_time=T0, mark=m_out)))
        ids = g.c.tunnel_ids()
        assert len(ids) == 1, ids
        assert ids[0].endswith(f":m{m_in:x}") == bool(m_in), ids  # the inbound half's tunnel came first
        j = g.json(T0)
        assert j["state"] == "up", j["reasons"]
        assert {(h["direction"], h["mark"]) for h in j["halves"]} == {("in", m_in), ("out", m_out)}
        ns = g.c._ns[g.ns]
        assert not ns.split_pairs
        assert list(ns.by_pair.values()) == [g.c._tunnels[ids[0]]]
