"""monitor.serve.metrics: series names, labels and values from tunnel JSON (unit level; see test_prometheus_real)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from monitor.serve import metrics
from tests.test_web_fakes import tunnel_doc


def parse(text: bytes) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    out: dict[str, list[tuple[str, dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(text.decode()):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.name, dict(s.labels), s.value))
    return out


MON = metrics.MonitorSample(enobufs={"default": 2}, resyncs={"default": 2}, lag=0.004,
                            dumps={"default": {"last_dump": 90.0, "last_dump_duration": 0.02},
                                   "blue": {"last_dump": None, "last_dump_duration": None}},
                            now=100.0, clients=3, gaps=1, dropped=5, stalled=0)


def test_tunnel_series_values_and_labels() -> None:
    """Bytes/packets per direction, one-hot state, expiry, error totals: values copied from the tunnel JSON."""
    t = tunnel_doc("x", state="one-way", n=4)
    t.update(bytes_in=10, bytes_out=20, packets_in=1, packets_out=2, rekeys=3, rekey_failures=1,
             replay_errors=7, integrity_errors=9, hard_expires_in=42.5)
    got = parse(metrics.render([metrics.sample(t)], MON))
    lab = {"id": "x"}  # issue 15: the id only; the rest is on ipsec_tunnel_info, without the unset if_id/mark
    assert got["ipsec_tunnel_info"] == [("ipsec_tunnel_info", {"netns": "default", "reqid": "5", "local": "192.0.2.1",
                                                               "remote": "198.51.100.5", "id": "x"}, 1.0)]
    assert ("ipsec_tunnel_bytes_total", {**lab, "direction": "in"}, 10.0) in got["ipsec_tunnel_bytes_total"]
    assert ("ipsec_tunnel_packets_total", {**lab, "direction": "out"}, 2.0) in got["ipsec_tunnel_packets_total"]
    assert got["ipsec_tunnel_rekeys_total"] == [("ipsec_tunnel_rekeys_total", lab, 3.0)]
    assert got["ipsec_tunnel_rekey_failures_total"] == [("ipsec_tunnel_rekey_failures_total", lab, 1.0)]
    assert got["ipsec_tunnel_replay_errors_total"][0][2] == 7.0
    assert got["ipsec_tunnel_integrity_errors_total"][0][2] == 9.0
    assert got["ipsec_tunnel_hard_expiry_seconds"] == [("ipsec_tunnel_hard_expiry_seconds", lab, 42.5)]
    states = {s[1]["state"]: s[2] for s in got["ipsec_tunnel_state"]}
    # the current state only (issue 15): one series, value 1; the other states have none (not 0)
    assert states == {"one-way": 1.0}
    assert [s[1] for s in got["ipsec_tunnel_state"]] == [{**lab, "state": "one-way"}]


def test_no_expiry_sample_without_time_limits_and_sa_fallback() -> None:
    """No hard expiry -> no sample; error totals fall back to the sum over SAs."""
    t = tunnel_doc("x")
    t["hard_expires_in"] = None
    del t["replay_errors"]
    t["sas"] = [{"replay_errors": 2}, {"replay_errors": 3}]
    got = parse(metrics.render([metrics.sample(t)], MON))
    assert "ipsec_tunnel_hard_expiry_seconds" not in got
    assert got["ipsec_tunnel_replay_errors_total"][0][2] == 5.0


def test_monitor_series() -> None:
    """ENOBUFS/resync per netns, loop lag, dump duration/age (absent before the first dump), ws gauges."""
    got = parse(metrics.render([], MON))
    assert ("ipsec_monitor_enobufs_total", {"netns": "default"}, 2.0) in got["ipsec_monitor_enobufs_total"]
    assert ("ipsec_monitor_resyncs_total", {"netns": "blue"}, 0.0) in got["ipsec_monitor_resyncs_total"]
    assert got["ipsec_monitor_event_loop_lag_seconds"][0][2] == 0.004
    assert got["ipsec_monitor_last_dump_age_seconds"] == [
        ("ipsec_monitor_last_dump_age_seconds", {"netns": "default"}, 10.0)]
    assert got["ipsec_monitor_last_dump_duration_seconds"][0][2] == 0.02
    assert got["ipsec_monitor_ws_clients"][0][2] == 3.0
    assert got["ipsec_monitor_ws_dropped_events_total"][0][2] == 5.0


def test_route_based_tunnels_differing_only_in_if_id_or_mark_get_distinct_series() -> None:
    """Issue 12.4: xfrm interfaces (if_id) or VTI marks with 0.0.0.0/0 selectors, same peers and reqid: before
    the fix both exported identical label sets (duplicate series). The tunnel id makes them unique, and
    if_id/mark say which is which."""
    a, b, c = tunnel_doc("a"), tunnel_doc("b"), tunnel_doc("c")
    a.update(if_id=201, mark=0)
    b.update(if_id=202, mark=0)
    c.update(if_id=None, mark=0x2A)
    got = parse(metrics.render([metrics.sample(t) for t in (a, b, c)], MON))
    sets = [tuple(sorted(s[1].items())) for s in got["ipsec_tunnel_rekeys_total"]]
    assert len(sets) == len(set(sets)) == 3
    # issue 15: if_id/mark are on the info series only where set (an empty label is an absent one in PromQL)
    assert {(s[1]["id"], s[1].get("if_id"), s[1].get("mark")) for s in got["ipsec_tunnel_info"]} == {
        ("a", "201", None), ("b", "202", None), ("c", None, "42")}
