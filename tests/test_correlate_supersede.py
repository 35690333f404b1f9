"""Ghost tunnels of IKE daemons that re-negotiate (issue 12 item 7), on the pure correlator.

libreswan installs a short-lived placeholder policy while it negotiates, and may replace a first CHILD_SA
within seconds under a new reqid: the new SAs come, the policies (same index, same selectors) are updated to
the new reqid, then the old SAs are deleted. Neither may leave a ``down`` tunnel behind: the placeholder
leaves with its policies, and the replaced tunnel is ``superseded`` (its last event says by which tunnel).
"""

from __future__ import annotations

from correlate_builders import PEER, delpolicy, delsa, make_policy, newpolicy
from correlate_harness import T0, Gw

from monitor.health.model import HealthConfig

OLD, NEW = 16389, 16393
GRACE = HealthConfig().supersede_grace


def _tunnel_of(g: Gw, reqid: int) -> str:
    (tid,) = [t for t in g.c.tunnel_ids() if f":{reqid}:" in t]
    return tid


def _move_policies(g: Gw, now: float, reqid: int) -> None:
    """The policies of OLD (same index, same selectors) updated to ``reqid``, as pluto does."""
    g.ev(now, *(newpolicy(make_policy(d, reqid=reqid, index=OLD * 8 + d)) for d in (0, 1, 2)))


def test_replaced_under_a_new_reqid_is_superseded_not_down() -> None:
    """pluto's order: new SAs, policies moved, old SAs deleted: the old tunnel leaves at once with a
    ``tunnel_superseded`` event naming the new one, never ``tunnel_down``; one tunnel is left, up, with the
    selectors."""
    g = Gw(forget_after=3600)
    g.policies(T0, reqid=OLD)
    g.install(T0, gen=0, reqid=OLD)
    old = _tunnel_of(g, OLD)
    assert g.json(T0)["state"] == "up"
    selectors = g.json(T0)["selectors"]
    g.install(T0 + 2, gen=1, reqid=NEW)
    new = _tunnel_of(g, NEW)
    _move_policies(g, T0 + 2, NEW)
    assert old in g.c.tunnel_ids()  # still has its SAs: up until they go
    i, o = g.gens[0]
    g.ev(T0 + 4, delsa(o), delsa(i))
    assert g.c.tunnel_ids() == [new]
    assert g.c.tunnel_json(old, T0 + 4) is None
    assert old in g.c.take_dirty()  # tunnel_removed for the websocket
    mine = [e for e in g.events if e.tunnel == old]
    assert "tunnel_down" not in [e.type for e in mine]
    last = mine[-1]
    assert last.type == "tunnel_superseded"
    assert (last.detail["reason"], last.detail["by"], last.detail["reqid"], last.detail["from"]) == \
        ("superseded", new, NEW, "up")
    j = g.json(T0 + 4)
    assert (j["state"], j["reqid"], j["selectors"]) == ("up", NEW, selectors)


def test_already_down_when_the_policies_move_leaves_at_once() -> None:
    """The other order (old SAs deleted first, then the policies move): it was down meanwhile, but leaves
    when its policies are taken, not ``forget_after`` later."""
    g = Gw(forget_after=3600)
    g.policies(T0, reqid=OLD)
    g.install(T0, gen=0, reqid=OLD)
    old = _tunnel_of(g, OLD)
    i, o = g.gens[0]
    g.ev(T0 + 1, delsa(o), delsa(i))
    assert g.json(T0 + 1)["state"] == "down"
    g.install(T0 + 2, gen=1, reqid=NEW)
    _move_policies(g, T0 + 2, NEW)
    assert old not in g.c.tunnel_ids()
    assert [e.type for e in g.events if e.tunnel == old][-1] == "tunnel_superseded"


def test_libreswan_4_10_sequence_from_the_vm() -> None:
    """The order a real pluto (libreswan 4.10, VM scenario ``libreswan``) replaced its first Child SA in: the
    out policy turned into a placeholder (template reqid 0, addresses 0.0.0.0), in/fwd deleted, the old SAs
    deleted, the placeholder removed, then (0.6 s later in the VM) the new reqid's SAs and policies with new
    indexes. The old tunnel, left with neither policy nor SA, is held in its state for ``supersede_grace``
    and superseded by the new one at its first policy: never ``down``. The placeholder is gone with its
    policy: one tunnel left, up."""
    g = Gw(forget_after=3600)
    pols = {d: make_policy(d, reqid=OLD, index=176 + d) for d in (0, 1, 2)}
    g.ev(T0, *(newpolicy(p) for p in pols.values()))
    g.install(T0, gen=0, reqid=OLD)
    old = _tunnel_of(g, OLD)
    hold = make_policy(1, reqid=0, index=pols[1].index, peer="0.0.0.0", local="0.0.0.0")
    g.ev(T0 + 1, newpolicy(hold), delpolicy(pols[0]), delpolicy(pols[2]))
    i, o = g.gens[0]
    g.ev(T0 + 1, delsa(o), delsa(i))
    assert g.c.tunnel_json(old, T0 + 1)["state"] == "up"  # type: ignore[index]  # held: a successor may come
    assert g.c.tunnel_json(old, T0 + 1)["sas"] == []  # type: ignore[index]
    g.ev(T0 + 2, delpolicy(hold))
    g.install(T0 + 2, gen=1, reqid=NEW)
    new = _tunnel_of(g, NEW)
    g.ev(T0 + 2, *(newpolicy(make_policy(d, reqid=NEW, index=200 + d)) for d in (0, 2, 1)))
    assert g.c.tunnel_ids() == [new]
    mine = [e for e in g.events if e.tunnel == old]
    assert (mine[-1].type, mine[-1].detail["by"], mine[-1].detail["from"]) == ("tunnel_superseded", new, "up")
    assert [e.type for e in mine if e.ts > T0 and e.type in ("tunnel_down", "state_changed")] == []
    assert g.json(T0 + 2)["state"] == "up"


def test_policies_taken_by_another_gateway_pair_is_no_supersession() -> None:
    """A policy index reused for a tunnel to another peer says nothing about the old tunnel: it goes down
    as before and stays for forget_after."""
    g = Gw(forget_after=3600)
    g.policies(T0, reqid=OLD)
    g.install(T0, gen=0, reqid=OLD)
    old = _tunnel_of(g, OLD)
    g.ev(T0 + 2, *(newpolicy(make_policy(d, reqid=NEW, index=OLD * 8 + d, peer="203.0.113.9")) for d in (0, 1, 2)))
    i, o = g.gens[0]
    g.ev(T0 + 4, delsa(o), delsa(i))
    g.run_until(T0 + 4 + GRACE)  # no successor within the hold
    assert old in g.c.tunnel_ids()
    assert g.c.tunnel_json(old, T0 + 4 + GRACE)["state"] == "down"  # type: ignore[index]
    assert "tunnel_superseded" not in g.types()
    assert PEER not in _tunnel_of(g, NEW)


def test_successor_gone_first_falls_back_to_down() -> None:
    """If the successor vanished before the old tunnel lost its SAs, the old one is down as usual."""
    g = Gw(forget_after=3600)
    g.policies(T0, reqid=OLD)
    g.install(T0, gen=0, reqid=OLD)
    old = _tunnel_of(g, OLD)
    _move_policies(g, T0 + 2, NEW)  # a policy-only successor ...
    g.ev(T0 + 3, *(delpolicy(make_policy(d, reqid=NEW, index=OLD * 8 + d)) for d in (0, 1, 2)))  # ... gone
    i, o = g.gens[0]
    g.ev(T0 + 4, delsa(o), delsa(i))
    g.run_until(T0 + 4 + GRACE)
    assert g.c.tunnel_ids() == [old]
    assert g.json(T0 + 4 + GRACE)["state"] == "down"
    assert "tunnel_superseded" not in g.types()


def test_placeholder_policy_that_never_had_an_sa_leaves_with_its_policies() -> None:
    """pluto's negotiation placeholder (template reqid 0 and addresses 0.0.0.0: the tunnel is keyed by the
    selector's hosts) is a down policy-only tunnel while it lasts, and leaves the moment its policies go,
    not forget_after later; a tunnel that had SAs stays for forget_after."""
    g = Gw(forget_after=3600)
    placeholder = [make_policy(d, reqid=0, index=900 + d, peer="0.0.0.0", local="0.0.0.0") for d in (0, 1)]
    g.ev(T0, *(newpolicy(p) for p in placeholder))
    (ghost,) = g.c.tunnel_ids()
    assert g.json(T0)["state"] == "down"
    g.ev(T0 + 1, *(delpolicy(p) for p in placeholder))
    assert g.c.tunnel_ids() == []
    assert ghost in g.c.take_dirty()
    g.policies(T0 + 2, reqid=OLD)
    g.install(T0 + 2, gen=0, reqid=OLD)
    i, o = g.gens[0]
    g.ev(T0 + 3, delsa(o), delsa(i), *(delpolicy(make_policy(d, reqid=OLD)) for d in (0, 1, 2)))
    assert len(g.c.tunnel_ids()) == 1  # had SAs: forgotten only forget_after later


def _teardown(g: Gw, now: float, reqid: int = OLD) -> None:
    """pluto's teardown order: the policies first, then the SAs (nothing left, no successor yet)."""
    i, o = g.gens[0]
    g.ev(now, *(delpolicy(make_policy(d, reqid=reqid)) for d in (0, 1, 2)), delsa(o), delsa(i))


def test_a_hold_that_runs_out_is_down_since_the_loss() -> None:
    """No successor within ``supersede_grace``: one ``tunnel_down`` when the hold runs out (reason
    ``sa_deleted``), the tunnel down since the moment it lost its SAs, downtime counted from there."""
    g = Gw(forget_after=3600)
    g.policies(T0, reqid=OLD)
    g.install(T0, gen=0, reqid=OLD)
    _teardown(g, T0 + 10)
    assert "tunnel_down" not in g.types()
    g.run_until(T0 + 10 + GRACE - 0.01)
    assert "tunnel_down" not in g.types()
    g.run_until(T0 + 10 + GRACE)
    (down,) = g.of_type("tunnel_down")
    assert (down.ts, down.detail["reason"], down.detail["from"]) == (T0 + 10 + GRACE, "sa_deleted", "up")
    j = g.json(T0 + 30)
    assert (j["state"], j["since"]) == ("down", T0 + 10)


def test_the_same_reqid_back_within_the_hold_never_went_down() -> None:
    """A daemon that re-installs the same reqid's policies and SAs within the hold: no event of going down."""
    g = Gw(forget_after=3600)
    g.policies(T0, reqid=OLD)
    g.install(T0, gen=0, reqid=OLD)
    tid = g.tid
    _teardown(g, T0 + 10)
    g.policies(T0 + 11, reqid=OLD)
    g.install(T0 + 11, gen=1, reqid=OLD)
    g.run_until(T0 + 10 + 3 * GRACE)
    assert g.tid == tid
    assert g.json(T0 + 10 + 3 * GRACE)["state"] == "up"
    assert [e.type for e in g.events if e.ts >= T0 + 10
            and e.type in ("tunnel_down", "state_changed", "tunnel_superseded")] == []


def test_sas_gone_with_the_policies_kept_are_down_at_once() -> None:
    """No hold when the policies stay (a trap policy after DPD cleared the SAs, a peer gone): that is no
    re-negotiation under another reqid, and the user learns it at once."""
    g = Gw(forget_after=3600)
    g.policies(T0, reqid=OLD)
    g.install(T0, gen=0, reqid=OLD)
    i, o = g.gens[0]
    g.ev(T0 + 10, delsa(o), delsa(i))
    (down,) = g.of_type("tunnel_down")
    assert down.ts == T0 + 10


def test_no_hold_with_supersede_grace_zero() -> None:
    """``supersede_grace = 0`` turns the hold off: down at the loss, as without it."""
    g = Gw(forget_after=3600, supersede_grace=0)
    g.policies(T0, reqid=OLD)
    g.install(T0, gen=0, reqid=OLD)
    _teardown(g, T0 + 10)
    (down,) = g.of_type("tunnel_down")
    assert down.ts == T0 + 10
