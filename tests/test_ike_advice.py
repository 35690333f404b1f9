"""``monitor.ike.advice``: configuration hints from ``list-conns``, one test per rule of the table, and the
hints reaching the tunnel's ``ike`` block and ``/api/v1/ike`` through the view."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import pytest

from monitor.errors import ConfigError
from monitor.ike.advice import HINT_RULES, AdviceConfig, conn_hints, overlaps
from monitor.ike.client import Listing
from monitor.ike.records import Conn, IkeSa, parse_list_conn, parse_list_sa
from monitor.ike.rules import IkeError
from monitor.ike.view import IkeCorrelator
from tests.ike_samples import kernel_tunnel, list_conn, list_sa, u
from tests.test_ike_view import WALL, Inner

#: A connection no rule finds fault with: restart/restart, dpd 3 s, rekeys below AWS's lifetimes, and an SA.
GOOD: dict[str, Any] = {"dpd_action": "start", "close_action": "start", "dpd_delay": 3, "rekey_time": 900,
                        "ike_rekey_time": 14400, "reauth_time": 0}


def conn(name: str = "gw", *, local_ts: str = "10.10.1.0/24", remote_ts: str = "10.20.1.0/24",
         children: tuple[str, ...] = ("net",), **over: Any) -> Conn:
    """One parsed connection with GOOD settings, ``over`` replacing some (VICI's own words: ``start`` = restart)."""
    v = {**GOOD, **over}
    kids = OrderedDict((c, u(mode="TUNNEL", rekey_time=v["rekey_time"], dpd_action=v["dpd_action"],
                             close_action=v["close_action"], _local_ts=[local_ts], _remote_ts=[remote_ts]))
                       for c in children)
    body = u(local_addrs=["192.0.2.1"], remote_addrs=["192.0.2.2"], version="IKEv2",
             reauth_time=v["reauth_time"], rekey_time=v["ike_rekey_time"], dpd_delay=v["dpd_delay"], _children=kids)
    (c,) = parse_list_conn(OrderedDict([(name, body)]))
    return c


def sa(name: str = "gw") -> IkeSa:
    """An established IKE_SA of connection ``name``."""
    (s,) = parse_list_sa(list_sa(name))
    return s


def codes(conns: list[Conn], sas: list[IkeSa] | None = None, errors: dict[str, IkeError] | None = None,
          config: AdviceConfig | None = None) -> dict[tuple[str, str], list[str]]:
    """``(conn, child) -> [hint code]``."""
    out = conn_hints(conns, [sa(c.name) for c in conns] if sas is None else sas, errors or {},
                     config or AdviceConfig())
    return {k: [h["code"] for h in v] for k, v in out.items()}


def test_a_good_connection_has_no_hint() -> None:
    """The baseline every other test changes one thing of."""
    assert codes([conn()]) == {}


def test_start_action_when_nothing_initiates() -> None:
    """No IKE_SA and no failure: nothing starts the connection (start_action = none); the advice says what a
    responder-only peer needs. A failure means something tried, and an IKE_SA means it is up: no hint."""
    hints = conn_hints([conn()], [], {}, AdviceConfig())[("gw", "net")]
    assert [h["code"] for h in hints] == ["start_action"]
    assert {k: v for k, v in hints[0].items() if k != "text"} == \
        {"code": "start_action", "severity": "warning", "conn": "gw", "child": "net"}
    assert "start_action = start (or trap)" in hints[0]["text"]
    assert "dpd_action = restart" in hints[0]["text"]
    err = IkeError(conn="gw", code="auth_failed", text="x", message="m", ts=1.0)
    assert codes([conn()], [], {"gw": err}) == {}
    assert codes([conn()], [sa("gw")]) == {}
    assert codes([conn()], [sa("other")]) == {("gw", "net"): ["start_action"]}


@pytest.mark.parametrize(("action", "hinted"), [("none", True), ("start", False), ("trap", False)])
def test_dpd_action(action: str, hinted: bool) -> None:
    """dpd_action = clear (VICI: ``none``) leaves a dead peer's tunnel down; restart and trap do not."""
    got = codes([conn(dpd_action=action)])
    assert hinted == ("dpd_action" in got.get(("gw", "net"), []))
    if hinted:
        (h,) = conn_hints([conn(dpd_action=action)], [sa()], {}, AdviceConfig())[("gw", "net")]
        assert "dpd_action = clear" in h["text"]


def test_dpd_off() -> None:
    """dpd_delay = 0: DPD is off; an unknown dpd_delay (older charon) is no hint."""
    assert codes([conn(dpd_delay=0)]) == {("gw", "net"): ["dpd_off"]}
    c = conn()
    assert codes([Conn(**{**{f: getattr(c, f) for f in c.__slots__}, "dpd_delay": None})]) == {}


def test_dpd_delay_against_the_peer_idle_timeout() -> None:
    """DPD every 30 s with a peer that drops idle tunnels after 30 s: too late; the timeout is configurable."""
    assert codes([conn(dpd_delay=30)]) == {("gw", "net"): ["dpd_delay"]}
    assert codes([conn(dpd_delay=29)]) == {}
    assert codes([conn(dpd_delay=10)], config=AdviceConfig(peer_idle_timeout=10)) == {("gw", "net"): ["dpd_delay"]}
    (h,) = conn_hints([conn(dpd_delay=40)], [sa()], {}, AdviceConfig(peer_idle_timeout=20))[("gw", "net")]
    assert "dpd_delay = 40 s" in h["text"]
    assert "(20 s, [ike] peer_idle_timeout)" in h["text"]


@pytest.mark.parametrize(("action", "hinted"), [("none", True), ("clear", True), ("start", False), ("trap", False)])
def test_close_action(action: str, hinted: bool) -> None:
    """close_action none/clear: a CHILD_SA the peer deletes stays down (info)."""
    hints = conn_hints([conn(close_action=action)], [sa()], {}, AdviceConfig()).get(("gw", "net"), ())
    assert hinted == any(h["code"] == "close_action" and h["severity"] == "info" for h in hints)


def test_rekey_time_against_the_peer_lifetime() -> None:
    """A CHILD_SA rekey_time past the peer's lifetime (default 3600 s, configurable), or 0 (never)."""
    assert codes([conn(rekey_time=3601)]) == {("gw", "net"): ["rekey_time"]}
    assert codes([conn(rekey_time=0)]) == {("gw", "net"): ["rekey_time"]}
    assert codes([conn(rekey_time=3600)]) == {}
    short = AdviceConfig(peer_child_lifetime=600)
    assert codes([conn(rekey_time=900)], config=short) == {("gw", "net"): ["rekey_time"]}


def test_ike_rekey_time_against_the_peer_ike_lifetime() -> None:
    """The IKE_SA's rekey_time (else reauth_time) past the peer's IKE lifetime (default 28800 s), or never."""
    assert codes([conn(ike_rekey_time=28801)]) == {("gw", "net"): ["ike_rekey_time"]}
    assert codes([conn(ike_rekey_time=0, reauth_time=0)]) == {("gw", "net"): ["ike_rekey_time"]}
    assert codes([conn(ike_rekey_time=0, reauth_time=3600)]) == {}
    assert codes([conn()], config=AdviceConfig(peer_ike_lifetime=3600)) == {("gw", "net"): ["ike_rekey_time"]}


def test_overlapping_children() -> None:
    """Two children (here of two connections) whose local and remote selectors both overlap each name the other;
    a third with a disjoint remote range, or only the local side shared, is left alone."""
    a = conn("a", local_ts="10.10.0.0/16", remote_ts="10.20.0.0/16")
    b = conn("b", local_ts="10.10.1.0/24", remote_ts="10.20.5.0/24[tcp/443]")
    c = conn("c", local_ts="10.10.1.0/24", remote_ts="10.30.0.0/16")
    v6 = conn("d", local_ts="2001:db8::/64", remote_ts="2001:db8:1::/64")
    assert overlaps([a, b, c, v6]) == {("a", "net"): ("b/net",), ("b", "net"): ("a/net",)}
    got = conn_hints([a, b, c, v6], [sa(n) for n in "abcd"], {}, AdviceConfig())
    assert sorted(got) == [("a", "net"), ("b", "net")]
    assert "b/net" in got[("a", "net")][0]["text"]
    two = conn("e", children=("x", "y"))  # two children of one connection, same selectors
    assert overlaps([two]) == {("e", "x"): ("e/y",), ("e", "y"): ("e/x",)}


def test_overlap_sweep_scales() -> None:
    """2,000 connections with distinct remote ranges: no overlap found, and no n^2 work (the sweep)."""
    conns = [conn(f"c{i}", local_ts="10.0.0.0/8", remote_ts=f"172.{16 + i // 256}.{i % 256}.0/24")
             for i in range(2000)]
    assert overlaps(conns) == {}


def test_rules_are_a_table() -> None:
    """Every rule has a unique code, a known severity, and a template that formats for any subject."""
    assert len({r.code for r in HINT_RULES}) == len(HINT_RULES)
    assert {r.severity for r in HINT_RULES} <= {"warning", "info"}
    everything = conn(dpd_action="none", close_action="none", dpd_delay=0, rekey_time=0, ike_rekey_time=0,
                      children=("x", "y"))
    got = codes([everything], [])
    assert {r.code for r in HINT_RULES} - {"dpd_delay"} == set(got[("gw", "x")])


def test_advice_config_from_the_ike_table() -> None:
    """``[ike]``: positive numbers only, unknown keys refused."""
    assert AdviceConfig(peer_idle_timeout=10.0) == AdviceConfig.from_mapping({"peer_idle_timeout": 10})
    for bad in ({"peer_idle_timeout": 0}, {"peer_idle_timeout": "30"}, {"peer_idle_timeout": True}, {"idle": 3}):
        with pytest.raises(ConfigError):
            AdviceConfig.from_mapping(bad)


def test_hints_reach_the_ike_block_and_the_detail() -> None:
    """Through the view: the kernel tunnel's ``ike.hints``, the configured tunnel's, and ``/api/v1/ike``'s
    ``hints``, with the view's own AdviceConfig."""
    kt = kernel_tunnel()
    view = IkeCorrelator(Inner(kt), clock=lambda: WALL, advice=AdviceConfig(peer_idle_timeout=2))
    view.publish = lambda ids: None
    sas = parse_list_sa(list_sa())
    conns = parse_list_conn(list_conn("gw", children=("net", "voice"))) + parse_list_conn(
        list_conn("idle", local_ts="10.10.9.0/24", remote_ts="10.20.9.0/24"))
    view.apply(Listing(tuple(sas), tuple(conns), WALL))
    t = view.tunnel_json(kt["id"], 0.0)
    assert t is not None
    assert "dpd_delay" in [h["code"] for h in t["ike"]["hints"]]  # dpd 3 s >= peer idle 2 s
    idle = view.tunnel_json("ike:idle:net", 0.0)
    assert idle is not None
    assert "start_action" in [h["code"] for h in idle["ike"]["hints"]]
    detail = view.detail_json()
    assert {("idle", "net", "start_action")} <= {(h["conn"], h["child"], h["code"]) for h in detail["hints"]}
