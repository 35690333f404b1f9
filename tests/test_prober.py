"""Keepalive prober: the pure decision core (config, idle detection, token bucket, the selector safety rule)."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from monitor.errors import ConfigError
from monitor.probe.prober import Prober, TokenBucket
from monitor.probe.safety import check_probe, pick_source, tunnel_view
from monitor.probe.targets import ProberConfig

ip = ipaddress.ip_address


def tunnel(
    tid: str = "t1",
    *,
    state: str = "up",
    bytes_in: int = 0,
    bytes_out: int = 0,
    reqid: int = 1,
    netns: str = "a",
    selectors: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A tunnel in the public JSON shape, with one 10.10.1.0/24 <-> 10.20.1.0/24 selector by default."""
    if selectors is None:
        selectors = [{"src": "10.10.1.0/24", "dst": "10.20.1.0/24", "proto": 0, "dir": "out"}]
    return {
        "id": tid,
        "netns": netns,
        "reqid": reqid,
        "state": state,
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
        "selectors": selectors,
    }


def config(**kw: Any) -> ProberConfig:
    """An enabled prober config with one target for tunnel t1 (overridable)."""
    raw: dict[str, Any] = {
        "enabled": True,
        "idle_after": 20,
        "interval": 10,
        "timeout": 2,
        "rate": 1,
        "burst": 2,
        "targets": [{"tunnel": "t1", "target": "10.20.1.1", "source": "10.10.1.1"}],
    }
    raw.update(kw)
    return ProberConfig.from_mapping(raw)


# ------------------------------------------------------------------------------------------- config


def test_default_config_is_off() -> None:
    """The prober is off by default: an empty [prober] table yields enabled=False and no targets."""
    cfg = ProberConfig.from_mapping({})
    assert cfg.enabled is False
    assert cfg.targets == ()


def test_disabled_prober_tracks_nothing() -> None:
    """With enabled=false, observe() ignores tunnels and due() never returns a probe."""
    p = Prober(config(enabled=False))
    assert p.observe(tunnel(state="idle"), 0.0) is False
    assert p.due(1000.0) == []


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"bogus": 1}, "unknown key"),
        ({"idle_after": -1}, "idle_after"),
        ({"rate": "fast"}, "rate"),
        ({"enabled": "yes"}, "enabled"),
        ({"enabled": True}, "lists no"),
        ({"targets": [{"tunnel": "x"}]}, "'target'"),
        ({"targets": [{"target": "not-an-ip"}]}, "not an IP"),
        ({"targets": [{"target": "10.0.0.1", "source": "2001:db8::1"}]}, "IP versions"),
        ({"targets": [{"target": "10.0.0.1", "tunnel": "x", "reqid": 1}]}, "either"),
        ({"targets": [{"target": "10.0.0.1", "port": 70000}]}, "port"),
        ({"targets": [{"target": "10.0.0.1", "kind": "tcp"}]}, "kind"),
        ({"timeout": 30, "interval": 10}, "timeout"),
    ],
)
def test_bad_config_is_a_clear_config_error(raw: dict[str, Any], needle: str) -> None:
    """Every bad [prober] setting raises ConfigError naming the offending key."""
    with pytest.raises(ConfigError, match=needle):
        ProberConfig.from_mapping(raw)


# ------------------------------------------------------------------------------------ the safety rule


def test_target_outside_remote_selectors_is_refused_and_never_sent() -> None:
    """A target outside every remote selector is refused, reported in last_error, and never emitted."""
    p = Prober(config(targets=[{"tunnel": "t1", "target": "198.51.100.7", "source": "10.10.1.1"}]))
    p.observe(tunnel(state="idle"), 0.0)
    for now in (0.0, 100.0, 200.0, 300.0):
        assert p.due(now) == []
    probe = p.probe_json("t1")
    assert probe is not None
    assert probe["sent"] == 0
    assert probe["refused"] == 4
    assert "outside the tunnel's remote selectors" in probe["last_error"]


def test_source_outside_local_selectors_is_refused() -> None:
    """A configured source that no local selector covers is refused (the packet would not be protected)."""
    p = Prober(config(targets=[{"tunnel": "t1", "target": "10.20.1.1", "source": "192.0.2.1"}]))
    p.observe(tunnel(state="idle"), 0.0)
    assert p.due(0.0) == []
    assert "source 192.0.2.1 is outside" in str(p.probe_json("t1"))


def test_tunnel_without_selectors_is_never_probed() -> None:
    """No selectors means nothing is known to be protected: refuse."""
    p = Prober(config())
    p.observe(tunnel(state="idle", selectors=[]), 0.0)
    assert p.due(50.0) == []
    assert "no traffic selectors" in str(p.probe_json("t1"))


def test_inbound_selector_orientation_is_swapped() -> None:
    """A dir=in selector has src=remote, dst=local; the prober orients it from this host."""
    view = tunnel_view(tunnel(selectors=[{"src": "10.20.1.0/24", "dst": "10.10.1.0/24", "dir": "in"}]))
    assert check_probe(view, ip("10.10.1.1"), ip("10.20.1.1"), "icmp", 0) is None
    assert check_probe(view, ip("10.20.1.1"), ip("10.10.1.1"), "icmp", 0) is not None


@pytest.mark.parametrize(
    ("sel", "kind", "port", "allowed"),
    [
        ({"proto": 6}, "icmp", 0, False),  # TCP-only selector: ICMP would bypass the tunnel
        ({"proto": 6}, "udp", 53, False),
        ({"proto": 17, "dport": 53, "dport_mask": 0xFFFF}, "udp", 53, True),
        ({"proto": 17, "dport": 53, "dport_mask": 0xFFFF}, "udp", 33434, False),
        ({"proto": 1}, "icmp", 0, True),
        ({"proto": 0}, "udp", 9, True),
    ],
)
def test_protocol_and_port_restrictions_are_honoured(sel: dict[str, Any], kind: str, port: int, allowed: bool) -> None:
    """A selector that restricts protocol or port only admits probes of that protocol and port."""
    raw = {"src": "10.10.1.0/24", "dst": "10.20.1.0/24", **sel}
    view = tunnel_view(tunnel(selectors=[raw]))
    reason = check_probe(view, ip("10.10.1.1"), ip("10.20.1.1"), kind, port)  # type: ignore[arg-type]
    assert (reason is None) == allowed, reason


def test_source_is_picked_from_local_addresses_inside_local_selector() -> None:
    """Without a configured source, the first host address inside the local selector is used."""
    view = tunnel_view(tunnel())
    addrs = [ip("192.0.2.1"), ip("10.10.1.1"), ip("127.0.0.1")]
    assert pick_source(addrs, view, ip("10.20.1.1")) == ip("10.10.1.1")
    assert pick_source([ip("192.0.2.1")], view, ip("10.20.1.1")) is None
    p = Prober(config(targets=[{"tunnel": "t1", "target": "10.20.1.1"}]))
    p.observe(tunnel(state="idle"), 0.0)
    probes = p.due(0.0, {"a": addrs})
    assert [pr.source for pr in probes] == [ip("10.10.1.1")]


def test_no_local_source_address_is_refused() -> None:
    """If the netns has no address inside the local selector, nothing is sent and the reason is given."""
    p = Prober(config(targets=[{"tunnel": "t1", "target": "10.20.1.1"}]))
    p.observe(tunnel(state="idle"), 0.0)
    assert p.due(0.0, {"a": [ip("192.0.2.1")]}) == []
    assert "set 'source'" in str(p.probe_json("t1"))


# -------------------------------------------------------------------------------------- idle and rate


def test_probe_only_after_idle_after_seconds_of_flat_counters() -> None:
    """An up tunnel whose counters keep moving is not probed; once flat for idle_after, it is."""
    p = Prober(config())
    p.observe(tunnel(bytes_in=1, bytes_out=1), 0.0)
    p.observe(tunnel(bytes_in=2, bytes_out=2), 10.0)  # activity at t=10
    assert p.due(25.0) == []  # flat for 15 s < 20 s
    p.observe(tunnel(bytes_in=2, bytes_out=2), 29.0)
    assert p.due(29.0) == []
    probes = p.due(30.0)  # flat for 20 s
    assert [(pr.tunnel, str(pr.target), str(pr.source)) for pr in probes] == [("t1", "10.20.1.1", "10.10.1.1")]
    assert p.idle_for("t1", 30.0) == 20.0


def test_idle_or_down_state_is_probed_immediately() -> None:
    """The correlator's idle/down state makes the tunnel due at once (a trap policy then triggers IKE)."""
    for state in ("idle", "down"):
        p = Prober(config())
        p.observe(tunnel(state=state), 0.0)
        assert len(p.due(0.0)) == 1, state


def test_one_probe_in_flight_and_interval_between_probes() -> None:
    """A tunnel has at most one probe outstanding, and probes of a tunnel are >= interval apart."""
    p = Prober(config())
    p.observe(tunnel(state="idle"), 0.0)
    [first] = p.due(0.0)
    assert p.due(1.0) == []  # outstanding
    p.on_lost(first, 2.0)
    assert p.due(5.0) == []  # interval 10 s not yet over
    assert len(p.due(10.0)) == 1


def test_answer_records_rtt_and_counts() -> None:
    """on_answer sets answered, last_rtt_ms (from the probe's send time) and clears last_error."""
    p = Prober(config())
    p.observe(tunnel(state="idle"), 100.0)
    [pr] = p.due(100.0)
    p.on_answer(pr, 100.0125)
    j = p.probe_json("t1")
    assert j is not None
    assert (j["sent"], j["answered"], j["lost"]) == (1, 1, 0)
    assert j["last_rtt_ms"] == pytest.approx(12.5)
    assert j["last_error"] is None
    assert j["last_answer"] == 100.0125


def test_late_answer_for_an_old_probe_is_ignored() -> None:
    """An answer whose probe was already declared lost does not count."""
    p = Prober(config())
    p.observe(tunnel(state="idle"), 0.0)
    [pr] = p.due(0.0)
    p.on_lost(pr, 2.0)
    p.on_answer(pr, 3.0)
    j = p.probe_json("t1")
    assert j is not None
    assert (j["answered"], j["lost"]) == (0, 1)
    assert "no answer" in j["last_error"]


def test_token_bucket_limits_probes_fleet_wide() -> None:
    """With rate=1/s and burst=2, 10 idle tunnels get 2 probes at once, then one per second."""
    targets = [{"tunnel": f"t{i}", "target": "10.20.1.1", "source": "10.10.1.1"} for i in range(10)]
    p = Prober(config(targets=targets, interval=100, timeout=1))
    for i in range(10):
        p.observe(tunnel(f"t{i}", state="idle"), 0.0)
    sent = {0.0: len(p.due(0.0)), 0.5: len(p.due(0.5)), 1.0: len(p.due(1.0)), 2.0: len(p.due(2.0))}
    assert sent == {0.0: 2, 0.5: 0, 1.0: 1, 2.0: 1}


def test_most_idle_tunnel_goes_first() -> None:
    """When the bucket allows one probe, the tunnel idle for longest gets it."""
    targets = [{"tunnel": t, "target": "10.20.1.1", "source": "10.10.1.1"} for t in ("new", "old")]
    p = Prober(config(targets=targets, burst=1))
    p.observe(tunnel("old"), 0.0)
    p.observe(tunnel("new"), 5.0)
    assert [pr.tunnel for pr in p.due(40.0)] == ["old"]


def test_token_bucket_refills_and_caps() -> None:
    """The bucket starts full, refills at rate, and never exceeds capacity."""
    b = TokenBucket(rate=2.0, capacity=3.0)
    assert [b.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert b.next_token_at(0.0) == pytest.approx(0.5)
    assert b.take(0.5) is True
    assert [b.take(100.0) for _ in range(4)] == [True, True, True, False]


def test_next_deadline_tells_when_to_wake() -> None:
    """next_deadline is the earliest time a tracked tunnel becomes idle (None if nothing is tracked)."""
    p = Prober(config())
    assert p.next_deadline(0.0) is None
    p.observe(tunnel(bytes_in=5), 3.0)
    assert p.next_deadline(4.0) == 23.0


# ------------------------------------------------------------------------------------------ matching


def test_targets_match_by_reqid_and_netns() -> None:
    """A reqid target applies to that reqid (only in the named netns, when one is named)."""
    p = Prober(config(targets=[{"reqid": 7, "netns": "a", "target": "10.20.1.1", "source": "10.10.1.1"}]))
    assert p.observe(tunnel("x", reqid=7, netns="a"), 0.0) is True
    assert p.observe(tunnel("y", reqid=7, netns="b"), 0.0) is False
    assert p.observe(tunnel("z", reqid=8, netns="a"), 0.0) is False
    assert p.tracked() == ["x"]


def test_target_without_tunnel_applies_to_tunnels_whose_remote_selector_contains_it() -> None:
    """'All tunnels with a declared target': an entry with only a target matches by remote selector."""
    p = Prober(config(targets=[{"target": "10.20.1.1", "source": "10.10.1.1"}]))
    assert p.observe(tunnel("in-range"), 0.0) is True
    other = [{"src": "10.10.1.0/24", "dst": "10.30.0.0/16"}]
    assert p.observe(tunnel("elsewhere", selectors=other), 0.0) is False


def test_annotate_sets_probe_field() -> None:
    """annotate() adds 'probe' to a tunnel dict: the stats for tracked tunnels, None for others."""
    p = Prober(config())
    p.observe(tunnel(), 0.0)
    t1 = p.annotate(tunnel())
    t2 = p.annotate(tunnel("other"))
    assert t1["probe"] is not None
    assert t1["probe"]["target"] == "10.20.1.1"
    assert t2["probe"] is None


def test_selector_spellings() -> None:
    """Selectors given as local/remote, src/dst or saddr/daddr+prefixlen all orient the same way."""
    forms = [
        {"local": "10.10.1.0/24", "remote": "10.20.1.0/24"},
        {"src": "10.10.1.0/24", "dst": "10.20.1.0/24"},
        {"saddr": "10.10.1.0", "prefixlen_s": 24, "daddr": "10.20.1.0", "prefixlen_d": 24},
        {"saddr": "10.20.1.0", "prefixlen_s": 24, "daddr": "10.10.1.0", "prefixlen_d": 24, "dir": "in"},
    ]
    for f in forms:
        [sel] = tunnel_view(tunnel(selectors=[f])).selectors
        assert (str(sel.local), str(sel.remote)) == ("10.10.1.0/24", "10.20.1.0/24"), f


# ------------------------------------------------------------------------------------- runner (fake I/O)


def test_runner_reads_each_tunnel_once_per_identity() -> None:
    """With a reqid target, a rescan reads only tunnels it has not seen before (reqid is part of a tunnel's
    identity) plus the tracked one; between rescans only the tracked one is read."""
    from monitor.probe.runner import ProberRunner

    reads: list[str] = []
    fleet = {f"t{i}": tunnel(f"t{i}", reqid=i, bytes_in=i) for i in range(100)}

    def lookup(tid: str) -> dict[str, Any] | None:
        reads.append(tid)
        return fleet.get(tid)

    clock = [0.0]
    cfg = config(idle_after=1000, interval=1000, targets=[{"reqid": 5, "target": "10.20.1.1", "source": "10.10.1.1"}])
    p = Prober(cfg)
    runner = ProberRunner(p, lambda: list(fleet), lookup, rescan=15.0, clock=lambda: clock[0])
    counts = []
    for t in (0.0, 1.0, 16.0):
        clock[0] = t
        reads.clear()
        assert runner.step() == []  # nothing idle yet: no probe, no task
        counts.append(sorted(reads) if len(reads) < 5 else len(reads))
    fleet["t100"] = tunnel("t100", reqid=100)
    clock[0] = 32.0
    reads.clear()
    runner.step()
    assert counts == [100, ["t5"], ["t5"]]
    assert sorted(reads) == ["t100", "t5"]
    assert p.tracked() == ["t5"]


async def test_runner_sender_crash_ends_the_probe_instead_of_leaving_it_in_flight() -> None:
    """A sender that raises (an unexpected local failure) counts as a failed probe with the error text,
    and the tunnel is probed again after the interval instead of staying 'in flight' forever."""
    import asyncio

    from monitor.probe.runner import ProberRunner

    class Exploding:
        calls = 0

        async def send(self, probe: Any, timeout: float) -> tuple[str, float | str]:
            Exploding.calls += 1
            raise RuntimeError("boom")

    clock = [0.0]
    p = Prober(config())
    t = tunnel(state="idle")
    runner = ProberRunner(p, lambda: ["t1"], lambda tid: t, sender=Exploding(),  # type: ignore[arg-type]
                          clock=lambda: clock[0])
    assert len(runner.step()) == 1
    await asyncio.sleep(0)  # let the probe task run
    await asyncio.sleep(0)
    j = p.probe_json("t1")
    assert j is not None
    assert (j["sent"], j["lost"]) == (1, 1)
    assert "RuntimeError: boom" in str(j["last_error"])
    clock[0] = 10.0  # the interval (10 s) is over: a new probe is due, so nothing stayed in flight
    assert len(runner.step()) == 1
