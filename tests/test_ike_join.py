"""``monitor.ike.join``: kernel tunnels to CHILD_SAs, mismatches, configured tunnels that never came up."""

from __future__ import annotations

from monitor.ike.join import IkeState, annotate, configured_id, configured_tunnel, unjoined
from monitor.ike.records import parse_list_conn, parse_list_sa
from monitor.ike.rules import IkeError
from monitor.render import format_tunnel
from tests.ike_samples import child_sa, kernel_tunnel, list_conn, list_sa
from tests.test_web_fakes import validate

NOW = 2000.0


def state(*sa_msgs: object, conns: tuple[object, ...] = (), listed_at: float = NOW,
          errors: dict[str, IkeError] | None = None) -> IkeState:
    sas = [r for m in sa_msgs for r in parse_list_sa(m)]  # type: ignore[arg-type]
    cs = [r for m in conns for r in parse_list_conn(m)]  # type: ignore[arg-type]
    return IkeState.of(sas, cs, listed_at, errors or {})


def codes(items: list[dict[str, str]]) -> list[str]:
    return [i["code"] for i in items]


def test_joined_tunnel_gets_its_ike_block() -> None:
    """reqid and SPIs match: names, states, identities, proposals, NAT, times counted from the listing."""
    t = annotate(kernel_tunnel(), state(list_sa(), listed_at=NOW - 10), NOW)
    ike = t["ike"]
    assert (ike["conn"], ike["child"]) == ("gw", "net")
    assert (ike["ike_state"], ike["ike_uniqueid"], ike["child_state"]) == ("ESTABLISHED", 1, "INSTALLED")
    assert (ike["local_id"], ike["remote_id"], ike["initiator"]) == ("192.0.2.1", "gw-b.example", True)
    assert ike["ike_proposal"] == "AES_CBC-128/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/ECP_256"
    assert ike["esp_proposal"] == "AES_CBC-128/HMAC_SHA2_256_128"
    assert ike["nat"] == {"local": False, "remote": False}
    assert ike["established"] == NOW - 10 - 120
    assert ike["rekey_in"] == 3000 - 10
    assert ike["child_rekey_in"] == 900 - 10
    assert ike["last_error"] is None
    assert t["hints"] == []


def test_the_child_whose_spis_the_kernel_holds_wins() -> None:
    """Two CHILD_SAs with one reqid (a rekey in flight): the kernel's SPIs decide."""
    kids = {"net-3": child_sa(uniqueid=3, spi_in=1, spi_out=2),
            "net-4": child_sa(uniqueid=4, spi_in=0xAA, spi_out=0xBB)}
    t = annotate(kernel_tunnel(spis=(1, 2)), state(list_sa(children=kids)), NOW)
    assert t["ike"]["child_uniqueid"] == 3


def test_join_by_spi_when_reqids_differ() -> None:
    """A kernel tunnel whose reqid charon does not list still joins by SPI."""
    t = annotate(kernel_tunnel(reqid=77), state(list_sa()), NOW)
    assert t["ike"]["child"] == "net"


def test_half_installed_child_is_a_finding() -> None:
    """An INSTALLED CHILD_SA (older than the grace) whose outbound SPI the kernel lacks."""
    t = annotate(kernel_tunnel(spis=(0xC1A2B3C4,)), state(list_sa()), NOW, grace=10)
    assert codes(t["hints"]) == ["ike_kernel_mismatch"]
    assert "0x0d0e0f10" in t["hints"][0]["text"]


def test_young_child_and_young_sa_are_not_findings() -> None:
    """Both sides change during a rekey: nothing younger than the grace is a finding."""
    young = list_sa(children={"net-3": child_sa(install_time=2)})
    assert annotate(kernel_tunnel(spis=(0xC1A2B3C4,)), state(young), NOW, grace=10)["hints"] == []
    fresh_sa = kernel_tunnel(spis=(0xC1A2B3C4, 0x0D0E0F10, 0x99), added=NOW - 1)
    assert annotate(fresh_sa, state(list_sa()), NOW, grace=10)["hints"] == []


def test_kernel_sa_charon_does_not_list_is_a_finding() -> None:
    """An old kernel SA of the reqid that no CHILD_SA has."""
    t = annotate(kernel_tunnel(spis=(0xC1A2B3C4, 0x0D0E0F10, 0x99)), state(list_sa()), NOW, grace=10)
    assert codes(t["hints"]) == ["ike_kernel_mismatch"]
    assert "0x00000099" in t["hints"][0]["text"]


def test_tunnel_charon_does_not_know() -> None:
    """No reqid, no SPI, no selector match: a finding, and no ike block."""
    t = annotate(kernel_tunnel(reqid=5, spis=(5, 6)) | {"selectors": []}, state(list_sa()), NOW)
    assert t["ike"] is None
    assert codes(t["hints"]) == ["ike_kernel_mismatch"]


def test_nothing_listed_yet_means_no_findings() -> None:
    """Before the first listing (or with charon gone) the view stays kernel-only."""
    t = annotate(kernel_tunnel(), IkeState(), NOW)
    assert t["ike"] is None
    assert t["hints"] == []


def test_down_tunnel_joins_by_selectors_and_shows_the_error() -> None:
    """SAs gone, policies left: names from list-conns, the last failure first among the reasons."""
    err = IkeError(conn="gw", code="peer_unreachable", text="peer gone", message="giving up after 3 retransmits",
                   ts=NOW - 5)
    t = annotate(kernel_tunnel(spis=(), state="down"), state(conns=(list_conn(),), errors={"gw": err}), NOW)
    assert (t["ike"]["conn"], t["ike"]["child"]) == ("gw", "net")
    assert t["ike"]["last_error"]["code"] == "peer_unreachable"
    assert codes(t["reasons"]) == ["peer_unreachable", "established"]


def test_ambiguous_selectors_do_not_join() -> None:
    """Two children with the same selectors (route-based 0.0.0.0/0): no guess."""
    conns = (list_conn("a", local_ts="0.0.0.0/0", remote_ts="0.0.0.0/0"),
             list_conn("b", local_ts="0.0.0.0/0", remote_ts="0.0.0.0/0"))
    tun = kernel_tunnel(spis=(), state="down") | {"selectors": [{"src": "0.0.0.0/0", "dst": "0.0.0.0/0"}]}
    assert annotate(tun, state(conns=conns), NOW)["ike"] is None


def test_configured_children_without_kernel_tunnel() -> None:
    """Every child of list-conns not joined to a kernel tunnel; ids are URL-path safe."""
    st = state(conns=(list_conn(children=("net", "voice")), list_conn("aws/1")))
    out = unjoined(st, {("gw", "net")})
    assert sorted(out) == ["ike:aws%2F1:net", "ike:gw:voice"]
    assert configured_id("a:b", "c") == "ike:a%3Ab:c"


def test_configured_tunnel_is_down_not_initiated_with_advice() -> None:
    """State down, reason not_initiated with start_action/dpd_action advice; valid against tunnel.json."""
    st = state(conns=(list_conn(dpd_action="none"),))  # VICI's name for swanctl's "clear"
    (tid, (conn, child)), = unjoined(st, set()).items()
    t = configured_tunnel(tid, conn, child, state=st, netns="default", since=NOW - 3, now=NOW)
    validate("tunnel.json", t)
    assert (t["id"], t["state"], t["since"]) == ("ike:gw:net", "down", NOW - 3)
    assert codes(t["reasons"]) == ["not_initiated"]
    text = t["reasons"][0]["text"]
    assert "start_action = start or trap" in text
    assert "dpd_action = clear" in text
    assert (t["ike"]["conn"], t["ike"]["child"], t["ike"]["ike_state"]) == ("gw", "net", None)
    assert t["ike"]["remote_ts"] == ["10.20.1.0/24"]


def test_configured_tunnel_with_a_failure_puts_it_first() -> None:
    """The connection's last failure explains why it is down."""
    err = IkeError(conn="gw", code="auth_failed", text="PSK", message="MAC mismatched", ts=NOW)
    st = state(list_sa(state="CONNECTING", children={}), conns=(list_conn(),), errors={"gw": err})
    (tid, (conn, child)), = unjoined(st, set()).items()
    t = configured_tunnel(tid, conn, child, state=st, netns="default", since=NOW, now=NOW)
    assert codes(t["reasons"]) == ["auth_failed"]
    assert t["ike"]["ike_state"] == "CONNECTING"
    assert t["ike"]["last_error"]["message"] == "MAC mismatched"


def test_check_lines_name_the_tunnel() -> None:
    """``monitor check`` lines (format_tunnel) show conn/child when the IKE view named the tunnel, nothing otherwise."""
    named = annotate(kernel_tunnel(), state(list_sa()), NOW)
    assert "(gw/net, default, reqid 1," in format_tunnel(named)
    assert "(default, reqid 1," in format_tunnel(kernel_tunnel() | {"ike": None})
