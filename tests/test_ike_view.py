"""``monitor.ike.view.IkeCorrelator``: the decorator the hub, REST and metrics read, fed the client's updates."""

from __future__ import annotations

from typing import Any

from monitor.health.model import HealthEvent
from monitor.ike.client import Listing, ViciStatus
from monitor.ike.records import parse_list_conn, parse_list_sa
from monitor.ike.rules import IkeError
from monitor.ike.view import IkeCorrelator, reqid_of
from tests.ike_samples import kernel_tunnel, list_conn, list_sa

WALL = 5000.0


class Inner:
    """The correlator calls the decorator makes."""

    seq = 7

    def __init__(self, *tunnels: dict[str, Any]) -> None:
        self.tunnels = {t["id"]: t for t in tunnels}
        self.events: list[HealthEvent] = []

    def tunnel_ids(self) -> list[str]:
        return sorted(self.tunnels)

    def tunnel_json(self, tid: str, now: float) -> dict[str, Any] | None:
        t = self.tunnels.get(tid)
        return None if t is None else dict(t)

    def drain_events(self) -> list[HealthEvent]:
        out, self.events = self.events, []
        return out

    def counters_row(self, tid: str) -> list[Any] | None:
        return [tid, 1, 2, 3, 4, 0.0, 0.0, self.tunnels[tid]["state"]] if tid in self.tunnels else None


def make(*tunnels: dict[str, Any], netns: str | None = "default") -> tuple[IkeCorrelator, list[list[str]]]:
    view = IkeCorrelator(Inner(*tunnels), netns=netns, clock=lambda: WALL)
    published: list[list[str]] = []
    view.publish = published.append
    return view, published


def listing(*conns: str) -> Listing:
    sas = parse_list_sa(list_sa())
    cs = [c for n in conns for c in parse_list_conn(list_conn(n, children=("net", "voice")))]
    return Listing(tuple(sas), tuple(cs), WALL)


def test_listing_joins_publishes_and_adds_configured_tunnels() -> None:
    """After a listing: the kernel tunnel has its ike block, the unjoined child is a down tunnel, and both are
    published (websocket clients get the new JSON); counters rows exist for the configured one."""
    kt = kernel_tunnel()
    view, published = make(kt)
    assert view.tunnel_json(kt["id"], 0.0)["ike"] is None  # type: ignore[index]
    view.apply(ViciStatus(True, "/run/charon.vici", None, WALL))
    view.apply(listing("gw"))
    assert set(published[-1]) == {kt["id"], "ike:gw:voice"}
    assert view.tunnel_ids() == [kt["id"], "ike:gw:voice"]
    t = view.tunnel_json(kt["id"], 0.0)
    assert t is not None
    assert (t["ike"]["conn"], t["ike"]["child"]) == ("gw", "net")
    voice = view.tunnel_json("ike:gw:voice", 0.0)
    assert voice is not None
    assert (voice["state"], voice["reasons"][0]["code"]) == ("down", "not_initiated")
    assert view.counters_row("ike:gw:voice") == ["ike:gw:voice", 0, 0, 0, 0, 0.0, 0.0, "down"]
    assert view.counters_row(kt["id"]) == [kt["id"], 1, 2, 3, 4, 0.0, 0.0, "up"]
    assert view.seq == 7  # everything else is the inner correlator's
    assert view.status_json()["child_sas"] == 1


def test_charon_gone_removes_the_ike_view() -> None:
    """Disconnected: kernel-only view; the configured tunnels are published again (so clients see them go)."""
    kt = kernel_tunnel()
    view, published = make(kt)
    view.apply(listing("gw"))
    view.apply(ViciStatus(False, "/run/charon.vici", "charon closed the VICI connection", WALL))
    assert "ike:gw:voice" in published[-1]
    assert view.tunnel_ids() == [kt["id"]]
    assert view.tunnel_json("ike:gw:voice", 0.0) is None
    assert view.tunnel_json(kt["id"], 0.0)["ike"] is None  # type: ignore[index]
    assert view.status_json()["error"] == "charon closed the VICI connection"


def test_errors_attach_and_ike_down_keeps_the_telling_one() -> None:
    """A log failure becomes the configured tunnel's reason; an ike_down right after does not replace it."""
    view, _ = make()
    view.apply(listing("gw"))
    view.apply(IkeError(conn="gw", code="auth_failed", text="PSK", message="MAC mismatched", ts=WALL))
    view.apply(IkeError(conn="gw", code="ike_down", text="down", message="IKE_SA gw went down", ts=WALL + 1))
    t = view.tunnel_json("ike:gw:voice", 0.0)
    assert t is not None
    assert t["reasons"][0]["code"] == "auth_failed"
    view.apply(IkeError(conn="gw", code="ike_down", text="down", message="IKE_SA gw went down", ts=WALL + 60))
    assert view.tunnel_json("ike:gw:voice", 0.0)["reasons"][0]["code"] == "ike_down"  # type: ignore[index]


def test_other_netns_is_left_alone() -> None:
    """charon sees one netns: tunnels of another get no ike key at all."""
    other = kernel_tunnel(netns="b")
    view, _ = make(other)
    view.apply(listing("gw"))
    assert "ike" not in view.tunnel_json(other["id"], 0.0)  # type: ignore[operator]


def test_reqid_of_tunnel_ids() -> None:
    """The reqid field of monitor.health.tunnel.tunnel_id's format."""
    assert reqid_of("default:42:192.0.2.1-192.0.2.2:if7") == 42
    assert reqid_of("ike:gw:net") is None


def test_tunnel_down_event_says_what_charon_saw() -> None:
    """A named tunnel's events carry detail.ike with the connection's last failure; others pass unchanged."""
    kt = kernel_tunnel()
    view, _ = make(kt)
    view.apply(listing("gw"))
    view.apply(IkeError(conn="gw", code="peer_unreachable", text="gone", message="giving up after 3 retransmits",
                        ts=WALL))
    down = HealthEvent(9, WALL, "tunnel_down", kt["id"], "default", {"reason": "sa_deleted", "text": "x", "from": "up"})
    other = HealthEvent(10, WALL, "resync", None, "default", {})
    view._inner.events = [down, other]
    named, plain = view.drain_events()
    assert named.detail["reason"] == "sa_deleted"
    assert named.detail["ike"] == {"conn": "gw", "child": "net", "last_error": {
        "code": "peer_unreachable", "text": "gone", "message": "giving up after 3 retransmits", "ts": WALL}}
    assert plain is other
