"""Policy lint: selector overlaps between tunnels, expected remote ranges left uncovered."""

from __future__ import annotations

import pytest
from correlate_builders import make_policy, newpolicy
from correlate_harness import T0, Gw

from monitor.health.lint import SelectorEntry, find_overlaps, uncovered_ranges

FAQ_RANGES = ["10.192.0.0/12", "100.64.0.0/10", "10.112.0.0/12", "10.176.0.0/12", "10.4.0.0/14",
              "10.56.0.0/13", "10.136.0.0/13", "10.208.0.0/13", "10.224.0.0/13"]


def test_overlapping_selectors_are_found() -> None:
    """Two tunnels whose local and remote ranges both overlap are reported once, as a sorted pair."""
    entries = [
        SelectorEntry("b", (0, 0), "10.1.0.0/16", "10.192.0.0/12"),
        SelectorEntry("a", (0, 0), "10.1.2.0/24", "10.200.0.0/16"),
        SelectorEntry("c", (0, 0), "10.1.0.0/16", "10.100.0.0/16"),  # remote disjoint
        SelectorEntry("d", (0, 0), "10.9.0.0/16", "10.192.0.0/12"),  # local disjoint
    ]
    found = find_overlaps(entries)
    assert [(o.a, o.b) for o in found] == [("a", "b")]
    assert found[0].a_sel == "10.1.2.0/24 -> 10.200.0.0/16"


def test_different_if_id_or_mark_do_not_overlap() -> None:
    """Route-based tunnels (0.0.0.0/0 selectors on distinct xfrm interfaces) are no conflict."""
    entries = [SelectorEntry("a", (1, 0), "0.0.0.0/0", "0.0.0.0/0"),
               SelectorEntry("b", (2, 0), "0.0.0.0/0", "0.0.0.0/0")]
    assert find_overlaps(entries) == []


def test_same_tunnel_never_overlaps_itself() -> None:
    """Several selectors of one tunnel may overlap each other without a finding."""
    entries = [SelectorEntry("a", (0, 0), "10.0.0.0/8", "10.192.0.0/12"),
               SelectorEntry("a", (0, 0), "10.1.0.0/16", "10.192.0.0/16")]
    assert find_overlaps(entries) == []


def test_overlap_limit() -> None:
    """With many overlapping tunnels the report is capped."""
    entries = [SelectorEntry(f"t{i:03d}", (0, 0), "10.0.0.0/8", "10.192.0.0/12") for i in range(100)]
    assert len(find_overlaps(entries, limit=50)) == 50


def test_uncovered_ranges_of_the_faq() -> None:
    """Ranges a policy covers (alone or merged with an adjacent one) are fine; the rest are reported."""
    remote = ["10.192.0.0/13", "10.200.0.0/13", "100.64.0.0/10", "0.0.0.0/32"]
    missing = uncovered_ranges(FAQ_RANGES, remote)
    assert "10.192.0.0/12" not in missing  # the two /13s merge into it
    assert "100.64.0.0/10" not in missing
    assert missing == ["10.112.0.0/12", "10.176.0.0/12", "10.4.0.0/14", "10.56.0.0/13", "10.136.0.0/13",
                       "10.208.0.0/13", "10.224.0.0/13"]


def test_correlator_attaches_overlap_and_coverage_hints() -> None:
    """Two tunnels in one netns with overlapping selectors both get selector_overlap; the netns gets
    uncovered_remote_range for every expected range no policy covers."""
    g = Gw(lint_interval=5, expected_remote_ranges=["10.192.0.0/12", "100.64.0.0/10"])
    g.policies(T0, reqid=1)
    g.policies(T0, reqid=2, peer="198.51.100.9", remote_net=("10.200.0.0", 16))
    g.run_until(T0 + 10)
    for tid in g.c.tunnel_ids():
        j = g.c.tunnel_json(tid, T0 + 10)
        assert j is not None
        codes = [h["code"] for h in j["hints"]]
        assert codes == ["selector_overlap"]
        other = next(t for t in g.c.tunnel_ids() if t != tid)
        assert other in j["hints"][0]["text"]
    ns = g.c.netns_json("gw", T0 + 10)
    assert ns is not None
    assert [h["text"] for h in ns["hints"] if h["code"] == "uncovered_remote_range"] == \
        ["Expected remote range 100.64.0.0/10 is not covered by any policy."]


def test_overlap_hint_goes_away_with_the_policy() -> None:
    """Removing the overlapping tunnel's policies clears the hint at the next lint."""
    from correlate_builders import delpolicy
    g = Gw(lint_interval=5)
    g.policies(T0, reqid=1)
    g.policies(T0, reqid=2, peer="198.51.100.9")
    g.run_until(T0 + 10)
    g.ev(T0 + 20, *(delpolicy(make_policy(d, reqid=2, peer="198.51.100.9")) for d in (0, 1, 2)))
    g.run_until(T0 + 30)
    j = g.c.tunnel_json("gw:1:192.0.2.1-198.51.100.7", T0 + 30)
    assert j is not None
    assert j["hints"] == []


def test_lint_runs_at_policy_dump_end() -> None:
    """A policy dump's end runs the lint immediately."""
    g = Gw()
    g.c.on_dump_begin(g.ns, "policy", T0)
    recs = [newpolicy(make_policy(1, reqid=r, peer=f"198.51.100.{r}"), dump_seq=1) for r in (1, 2)]
    g.c.on_events(g.ns, recs, T0)
    g.c.on_dump_end(g.ns, "policy", T0)
    ids = g.c.tunnel_ids()
    assert len(ids) == 2  # all() over an empty list would pass whatever the lint did
    assert all("selector_overlap" in [h["code"] for h in (g.c.tunnel_json(t, T0) or {})["hints"]] for t in ids)


def test_reserved_range_and_local_range_limit_are_configurable() -> None:
    """The FAQ's provider reserves 10.100.0.0/16 and accepts 3 CIDRs per VPC: both are settings, not code."""
    from monitor.health.lint import reserved_overlaps

    g = Gw(lint_interval=5, reserved_local_ranges=["10.100.0.0/16"], max_local_ranges=2)
    for n, net in enumerate((("10.1.0.0", 16), ("10.100.8.0", 24), ("172.16.0.0", 12))):
        g.policies(T0, reqid=n + 1, local_net=net)
    g.policies(T0, reqid=9, peer="198.51.100.9", local_net=("10.2.0.0", 16))
    g.run_until(T0 + 10)
    ns = g.c.netns_json("gw", T0 + 10)
    assert ns is not None
    by_code: dict[str, list[str]] = {}
    for h in ns["hints"]:
        by_code.setdefault(h["code"], []).append(h["text"])
    assert by_code["reserved_range"] == [
        "Local selector 10.100.8.0/24 overlaps 10.100.0.0/16, which the peer reserves for itself "
        "(reserved_local_ranges): traffic to it will not reach this side."]
    # three local ranges towards 198.51.100.7 (limit 2); the other peer has one
    assert by_code["too_many_local_ranges"] == [
        "3 local ranges towards peer 198.51.100.7 (10.1.0.0/16, 10.100.8.0/24, 172.16.0.0/12); the peer accepts "
        "at most 2 (max_local_ranges)."]
    # unset, neither hint exists; 0.0.0.0/0 (route-based) never counts as using a reserved range
    plain = Gw(lint_interval=5)
    plain.policies(T0, local_net=("10.100.8.0", 24))
    plain.run_until(T0 + 10)
    doc = plain.c.netns_json("gw", T0 + 10)
    assert doc is not None
    assert doc["hints"] == []
    assert reserved_overlaps(["10.100.0.0/16"], ["0.0.0.0/0", "10.99.0.0/16"]) == []
    assert reserved_overlaps(["10.100.0.0/16"], ["10.0.0.0/8"]) == [("10.0.0.0/8", "10.100.0.0/16")]


def test_lint_settings_are_validated() -> None:
    from monitor.errors import ConfigError
    from monitor.health.model import HealthConfig

    for bad in ({"reserved_local_ranges": "10.100.0.0/16"}, {"reserved_local_ranges": ["10.100.0.0/33"]},
                {"max_local_ranges": -1}, {"max_local_ranges": 2.5}):
        with pytest.raises(ConfigError):
            HealthConfig(**bad)  # type: ignore[arg-type]
