"""monitor.serve.metrics: the direct text renderer against prometheus_client, the label cache, ``metrics_tunnels``.

The reference is :func:`monitor.serve.metrics_reference.render_prometheus_client`: the same samples through
``prometheus_client``'s collector API and ``generate_latest`` (what ``/metrics`` used to serve).
"""

from __future__ import annotations

import math
from typing import Any

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

from monitor.errors import ConfigError
from monitor.serve import config, metrics, metrics_reference
from monitor.serve.handlers import HUB
from monitor.serve.protocol import STATES
from tests.test_web_fakes import FakeCorrelator
from tests.test_web_functional import Start, start, until  # noqa: F401 - the fixture is used by name

AWKWARD = ["", "a\"b", "back\\slash", "new\nline", "\\n", "\"\\\n\"", "2001:db8::1", "fe80::1%eth0",
           "ünïcødé", "{x=\"y\"}", "a,b", "192.0.2.1"]
labels = st.one_of(st.sampled_from(AWKWARD), st.text(max_size=12))
floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                   st.integers(min_value=0, max_value=2**64).map(float),
                   st.sampled_from([0.0, -0.0, 1.0, 1234567.0, 12345678.0, 1e16, 1e22, 5e-324, 0.1]))
#: Counters are integers (the correlator's totals); written as such since issue 15 (``123``, not ``123.0``).
counts = st.one_of(st.integers(min_value=0, max_value=2**64),
                   st.sampled_from([0, 1, 1234567, 12345678, 2**53 + 1, 10**16, 10**22])).map(float)
states = st.one_of(st.sampled_from(STATES), st.sampled_from(["weird", "quo\"te", "back\\slash"]))

tunnel_samples = st.builds(
    metrics.TunnelSample,
    st.tuples(labels, labels, labels, labels, labels, labels, labels),
    counts, counts, counts, counts, counts, counts, states,
    st.one_of(st.none(), floats), counts, counts, counts, floats,
    st.one_of(st.none(), st.tuples(labels, labels)),  # the IKE view's (conn, child): ipsec_tunnel_ike_info
)
mon_samples = st.builds(
    metrics.MonitorSample,
    enobufs=st.dictionaries(labels, st.integers(0, 2**40), max_size=3),
    resyncs=st.dictionaries(labels, st.integers(0, 2**40), max_size=3),
    lag=floats,
    history=st.dictionaries(st.sampled_from(metrics.HISTORY_METRICS), floats, max_size=4),
    dumps=st.dictionaries(labels, st.fixed_dictionaries({
        "last_dump": st.one_of(st.none(), st.floats(0, 1e10)),
        "last_dump_duration": st.one_of(st.none(), st.floats(0, 100))}), max_size=3),
    now=st.floats(0, 2e10), clients=st.integers(0, 10**6), gaps=st.integers(0, 2**40),
    dropped=st.integers(0, 2**40), stalled=st.integers(0, 10**6),
)


def families(text: bytes) -> list[tuple[str, str, str, list[tuple[str, tuple[tuple[str, str], ...], str]]]]:
    """Parsed exposition: (name, type, help, samples) with values as the repr of their float (so NaN compares equal,
    and a counter written ``123`` equals generate_latest's ``123.0``)."""
    return [(f.name, f.type, f.documentation,
             [(s.name, tuple(sorted(s.labels.items())), repr(float(s.value))) for s in f.samples])
            for f in text_string_to_metric_families(text.decode())]


@settings(max_examples=150, deadline=None)
@given(st.lists(tunnel_samples, max_size=6), mon_samples)
def test_render_equals_prometheus_client(tunnels: list[metrics.TunnelSample], mon: metrics.MonitorSample) -> None:
    """Awkward labels and values: our text parses to the same families as generate_latest's (the same names, types,
    help, label sets and values; the bytes differ where counters are written as integers)."""
    ours = metrics.render(tunnels, mon)
    ref = metrics_reference.render_prometheus_client(tunnels, mon)
    assert families(ours) == families(ref)
    # and prometheus_client's own comparison of the two (equal values: NaN only in gauges, compared above)
    no_nan = [(f[0], [s for s in f[3] if s[2] != "nan"]) for f in families(ours)]
    assert no_nan == [(f[0], [s for s in f[3] if s[2] != "nan"]) for f in families(ref)]


def test_per_tunnel_series_carry_the_id_and_the_info_series_the_rest() -> None:
    """Issue 15: every per-tunnel line has the id label only (plus direction/state); ipsec_tunnel_info has the
    attributes, if_id and mark only where set; counters are written as integers, gauges as Go floats."""
    t = metrics.TunnelSample(("red", "7", "192.0.2.1", "198.51.100.7", "red:7:192.0.2.1-198.51.100.7", "", "42"),
                             1234567890.0, 2.0, 3.0, 4.0, 5.0, 0.0, "down", 59.5, 0.0, 0.0, 1.0, 12345678.5)
    body = metrics.render([t], metrics.MonitorSample({}, {}, 0.0, {}, 0.0, 0, 0, 0, 0)).decode()
    i = 'id="red:7:192.0.2.1-198.51.100.7"'
    assert (f'ipsec_tunnel_info{{{i},local="192.0.2.1",mark="42",netns="red",remote="198.51.100.7",reqid="7"}} 1\n'
            in body)
    assert f'ipsec_tunnel_bytes_total{{direction="in",{i}}} 1234567890\n' in body
    assert f'ipsec_tunnel_state{{{i},state="down"}} 1\n' in body
    assert f"ipsec_tunnel_hard_expiry_seconds{{{i}}} 59.5\n" in body
    assert f"ipsec_tunnel_downtime_seconds_total{{{i}}} 1.23456785e+07\n" in body
    tunnel_lines = [ln for ln in body.splitlines() if ln.startswith("ipsec_tunnel_") and "_info{" not in ln]
    assert len(tunnel_lines) == 12
    assert all(ln.split("{")[1].split("}")[0] in (i, f'direction="in",{i}', f'direction="out",{i}',
                                                  f'{i},state="down"') for ln in tunnel_lines)


def test_ike_info_names_conn_and_child() -> None:
    """A tunnel the IKE view names gets one ``ipsec_tunnel_ike_info`` sample; one it does not name gets none."""
    named = {"conn": "gw", "child": "net"}
    t = metrics.sample({"id": "default:1:a-b", "netns": "default", "state": "up", "ike": named})
    bare = metrics.sample({"id": "default:2:a-b", "netns": "default", "state": "up", "ike": None})
    mon = metrics.MonitorSample({}, {}, 0.0, {}, 0.0, 0, 0, 0, 0)
    info = [f for f in families(metrics.render([t, bare], mon)) if f[0] == "ipsec_tunnel_ike_info"]
    assert info[0][3] == [("ipsec_tunnel_ike_info", (("child", "net"), ("conn", "gw"), ("id", "default:1:a-b"),
                                                     ("netns", "default")), "1.0")]
    assert [f[3] for f in families(metrics.render([t, bare], mon)) if f[0] == "ipsec_tunnel_info"] == [[
        ("ipsec_tunnel_info", (("id", "default:1:a-b"), ("local", ""), ("netns", "default"), ("remote", ""),
                               ("reqid", "")), "1.0"),
        ("ipsec_tunnel_info", (("id", "default:2:a-b"), ("local", ""), ("netns", "default"), ("remote", ""),
                               ("reqid", "")), "1.0")]]


def test_state_is_one_series_with_the_current_state() -> None:
    """ipsec_tunnel_state: exactly one series per tunnel, labelled with its state (awkward ones escaped), value 1."""
    labs = ('n"s', "1", "2001:db8::1", "back\\slash\\0", "t\n1", "", "7")
    mon = metrics.MonitorSample({}, {}, 0.0, {}, 0.0, 0, 0, 0, 0)
    for state in (*STATES, 'we"ird'):
        t = metrics.TunnelSample(labs, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, state, None, 0.0, 0.0)
        (fam,) = [f for f in text_string_to_metric_families(metrics.render([t], mon).decode())
                  if f.name == "ipsec_tunnel_state"]
        assert [(s.labels["state"], s.labels["id"], s.value) for s in fam.samples] == [(state, labs[4], 1.0)]


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_go_float_matches_float_to_go_string(d: float) -> None:
    """The fast float formatting is floatToGoString's for every float."""
    assert metrics.go_float(d) == floatToGoString(d)  # type: ignore[no-untyped-call]


def test_go_float_edges() -> None:
    """The exponent switch (dot past index 6), infinities and NaN, spelled out."""
    for d in (1234567.0, 12345678.0, 123456789.5, 1e16, -12345678.0, math.inf, -math.inf, math.nan, 0.0, -0.0):
        assert metrics.go_float(d) == floatToGoString(d), d  # type: ignore[no-untyped-call]


def test_escape_round_trips_through_the_parser() -> None:
    """Escaped label values come back from prometheus_client's parser unchanged."""
    for v in AWKWARD:
        text = f'x{{a="{metrics.escape(v)}"}} 1.0\n'
        (fam,) = text_string_to_metric_families(text)
        assert fam.samples[0].labels == {"a": v}


MON = metrics.MonitorSample(enobufs={}, resyncs={}, lag=0.0, dumps={"blue": {"last_dump": None}}, now=1e9,
                            clients=0, gaps=0, dropped=0, stalled=0)


def fleet() -> FakeCorrelator:
    """Seven tunnels, one per state, in two namespaces."""
    c = FakeCorrelator()
    for i, s in enumerate(STATES):
        c.add(f"t{i}", netns="default" if i % 2 else "red", state=s, n=i)
    return c


def per_tunnel(text: bytes) -> set[str]:
    """Remote addresses of the tunnels that have per-tunnel series (the ids on every per-tunnel family, joined to
    ``ipsec_tunnel_info``'s remote; a tunnel with info but not the rest, or the reverse, fails here)."""
    fams = list(text_string_to_metric_families(text.decode()))
    remote = {s.labels["id"]: s.labels["remote"] for f in fams if f.name == "ipsec_tunnel_info" for s in f.samples}
    for f in fams:
        if f.name.startswith("ipsec_tunnel_") and f.name not in ("ipsec_tunnel_hard_expiry_seconds",
                                                              "ipsec_tunnel_ike_info"):
            assert {s.labels["id"] for s in f.samples} == set(remote), f.name
    return set(remote.values())


def aggregate(text: bytes) -> dict[tuple[str, str], float]:
    """``ipsec_tunnels`` as {(netns, state): value}."""
    return {(s.labels["netns"], s.labels["state"]): s.value for f in text_string_to_metric_families(text.decode())
            if f.name == "ipsec_tunnels" for s in f.samples}


async def scrape_text(c: Any, mode: str, cache: metrics.ScrapeCache) -> bytes:
    """One gather + render."""
    g = await metrics.gather(c, 1e9, mode=mode, cache=cache)
    return metrics.render(g.tunnels, MON, g.counts)


async def test_modes_select_per_tunnel_series_and_always_count() -> None:
    """all: every tunnel; unhealthy: not up/rekeying; none: no per-tunnel series; ipsec_tunnels counts all."""
    c = fleet()
    remote = {t["state"]: t["remote"] for t in c.tunnels.values()}
    expect_counts = {(t["netns"], s): 0.0 for t in c.tunnels.values() for s in STATES}
    expect_counts |= {(ns, s): 0.0 for ns in ("blue",) for s in STATES}
    for t in c.tunnels.values():
        expect_counts[(t["netns"], t["state"])] += 1.0
    for mode, exported in (("all", set(STATES)), ("unhealthy", set(STATES) - {"up", "rekeying"}), ("none", set())):
        cache = metrics.ScrapeCache()
        for _ in range(2):  # cold cache, then warm (the warm one reads counters_row for skipped tunnels)
            text = await scrape_text(c, mode, cache)
            assert per_tunnel(text) == {remote[s] for s in exported}, mode
            assert aggregate(text) == expect_counts, mode
    assert tuple(metrics.MODES) == config.METRICS_TUNNELS


async def test_unhealthy_mode_follows_state_changes_with_warm_cache() -> None:
    """A cached healthy tunnel that goes down gets its series at the next scrape, and loses them when it recovers."""
    c, cache = fleet(), metrics.ScrapeCache()
    await scrape_text(c, "unhealthy", cache)
    up = next(t for t in c.tunnels.values() if t["state"] == "up")
    c.update(up["id"], state="down")
    assert up["remote"] in per_tunnel(await scrape_text(c, "unhealthy", cache))
    c.update(up["id"], state="up")
    assert up["remote"] not in per_tunnel(await scrape_text(c, "unhealthy", cache))


async def test_label_changes_show_and_cache_is_pruned() -> None:
    """Changed label values show at the next scrape; removed tunnels leave the cache; output matches the reference."""
    c, cache = fleet(), metrics.ScrapeCache()
    await scrape_text(c, "all", cache)
    assert cache.netns == {}  # mode all never takes the counters_row shortcut: nothing kept
    c.update("t0", local='2001:db8::"7"\\', state="down")
    text = await scrape_text(c, "unhealthy", cache)
    locals_ = {s.labels["local"] for f in text_string_to_metric_families(text.decode()) for s in f.samples
               if "local" in s.labels and s.labels["id"] == "t0"}
    assert locals_ == {'2001:db8::"7"\\'}
    assert set(cache.netns) == set(c.tunnels)
    c.remove("t1")
    g = await metrics.gather(c, 1e9, mode="unhealthy", cache=cache)
    assert "t1" not in cache.netns
    samples = [metrics.sample(c.tunnels[t]) for t in c.tunnel_ids()
               if c.tunnels[t]["state"] not in ("up", "rekeying")]
    counts = metrics.count_states(metrics.sample(t) for t in c.tunnels.values())
    assert families(metrics.render(g.tunnels, MON, g.counts)) == families(
        metrics_reference.render_prometheus_client(samples, MON, counts))


async def test_gather_rejects_unknown_mode() -> None:
    """A typo in the mode is a clear error, not an empty scrape."""
    with pytest.raises(ValueError, match="metrics_tunnels must be one of all, unhealthy, none"):
        await metrics.gather(fleet(), 1e9, mode="some")


def test_setting_from_env_toml_and_validation(tmp_path: Any) -> None:
    """metrics_tunnels: default all; env and TOML set it; a bad value names the allowed ones."""
    assert config.load_settings({}, env={}).metrics_tunnels == "all"
    assert config.load_settings({}, env={"MONITOR_METRICS_TUNNELS": "none"}).metrics_tunnels == "none"
    f = tmp_path / "m.toml"
    f.write_text('metrics_tunnels = "unhealthy"\n')
    assert config.load_settings({}, env={}, config=f).metrics_tunnels == "unhealthy"
    with pytest.raises(ConfigError, match="metrics_tunnels must be one of all, unhealthy, none"):
        config.load_settings({}, env={"MONITOR_METRICS_TUNNELS": "some"})


def test_serve_flag() -> None:
    """``monitor serve --metrics-tunnels none`` reaches the settings."""
    import argparse

    from monitor.commands import serve

    ap = argparse.ArgumentParser()
    serve.add_parser(ap.add_subparsers())
    args = ap.parse_args(["serve", "--metrics-tunnels", "none"])
    assert serve.settings_from_args(args).metrics_tunnels == "none"


async def test_served_metrics_honour_setting(start: Start) -> None:  # noqa: F811 - the imported fixture
    """A real server with metrics_tunnels=none serves no per-tunnel series but counts every tunnel."""
    server, app = await start(tunnels=6, speed=30, seed=8, metrics_tunnels="none")
    view = app[HUB].view
    await until(lambda: len(list(view.tunnel_ids())) >= 6, "fleet")
    async with aiohttp.ClientSession() as s, s.get(server.make_url("/metrics")) as r:
        assert r.status == 200
        text = (await r.read())
    assert per_tunnel(text) == set()
    assert sum(aggregate(text).values()) == len(list(view.tunnel_ids()))


def test_flaps_and_downtime_series_come_from_the_tunnel_json() -> None:
    t = {"id": "ns:1:a-b", "netns": "ns", "reqid": 1, "local": "a", "remote": "b", "state": "up",
         "flaps": 3, "downtime": 12.5}
    body = metrics.render([metrics.sample(t)], metrics.MonitorSample({}, {}, 0.0, {}, 0.0, 0, 0, 0, 0)).decode()
    lab = 'id="ns:1:a-b"'
    assert f"ipsec_tunnel_flaps_total{{{lab}}} 3\n" in body
    assert f"ipsec_tunnel_downtime_seconds_total{{{lab}}} 12.5\n" in body
