"""``monitor.ike.records``: VICI answers (as the ``vici`` package returns them) into immutable records."""

from __future__ import annotations

import dataclasses
from collections import OrderedDict

import pytest

from monitor.ike.records import parse_list_conn, parse_list_sa
from tests.ike_samples import b, child_sa, list_conn, list_sa


def test_list_sa_fields_decoded() -> None:
    """Every field the join uses, decoded from bytes: SPIs from hex, yes/no as bools, proposals as swanctl shows."""
    [ike] = parse_list_sa(list_sa(nat_remote="yes"))
    assert ike.conn == "gw"
    assert (ike.uniqueid, ike.version, ike.state) == (1, 2, "ESTABLISHED")
    assert (ike.local_id, ike.remote_id) == ("192.0.2.1", "gw-b.example")
    assert ike.initiator is True
    assert (ike.nat_local, ike.nat_remote) == (False, True)
    assert ike.proposal == "AES_CBC-128/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/ECP_256"
    assert (ike.established, ike.rekey_time, ike.reauth_time) == (120, 3000, 0)
    [child] = ike.children
    assert child.key == "net-3"
    assert child.name == "net"
    assert (child.uniqueid, child.reqid, child.state) == (3, 1, "INSTALLED")
    assert (child.spi_in, child.spi_out) == (0xC1A2B3C4, 0x0D0E0F10)
    assert child.proposal == "AES_CBC-128/HMAC_SHA2_256_128"
    assert (child.local_ts, child.remote_ts) == (("10.10.1.0/24",), ("10.20.1.0/24",))
    assert (child.bytes_in, child.install_time, child.rekey_time) == (840, 60, 900)


def test_route_based_child_ids_and_marks_are_hex() -> None:
    """``if-id-in``/``mark-in`` are "%.8x" like the SPIs."""
    kid = child_sa(if_id_in="00000029", if_id_out="00000029", mark_in="0000002a", encap="yes")
    [ike] = parse_list_sa(list_sa(children={"vti-7": kid}))
    c = ike.children[0]
    assert (c.if_id_in, c.if_id_out, c.mark_in, c.encap) == (41, 41, 42, True)


def test_old_charon_without_name_uses_the_section_name() -> None:
    """Before 5.6 the child section was keyed by its name and had no ``name`` field."""
    kid = child_sa()
    del kid["name"]
    [ike] = parse_list_sa(list_sa(children={"net": kid}))
    assert ike.children[0].name == "net"


def test_missing_and_malformed_fields_become_none() -> None:
    """A charon that omits or garbles fields never makes the parser raise."""
    msg = OrderedDict([("gw", b(state="CONNECTING", uniqueid="x", _child_sas=b"junk"))])
    [ike] = parse_list_sa(msg)
    assert (ike.uniqueid, ike.state, ike.children, ike.proposal, ike.local_id) == (None, "CONNECTING", (), None, None)


def test_records_are_immutable() -> None:
    """Frozen dataclasses: the loop and the client thread can share them."""
    [ike] = parse_list_sa(list_sa())
    with pytest.raises(dataclasses.FrozenInstanceError):
        ike.state = "x"  # type: ignore[misc]


def test_list_conn() -> None:
    """Connections with their children, identities and the actions VICI exports."""
    [conn] = parse_list_conn(list_conn(children=("net", "voice"), dpd_action="start"))
    assert conn.name == "gw"
    assert (conn.local_addrs, conn.remote_addrs, conn.version) == (("192.0.2.1",), ("192.0.2.2",), "IKEv2")
    assert (conn.local_ids, conn.remote_ids, conn.dpd_delay) == (("192.0.2.1",), ("gw-b.example",), 3)
    assert [c.name for c in conn.children] == ["net", "voice"]
    assert conn.children[0].dpd_action == "restart"  # VICI's "start" (action_names) in swanctl.conf's words
    assert conn.children[0].close_action == "clear"  # and "none"
    assert conn.children[0].local_ts == ("10.10.1.0/24",)


def test_str_values_are_accepted() -> None:
    """Hand-built dicts with str values parse like bytes ones."""
    msg = {"gw": {"uniqueid": "5", "child-sas": {"c-1": {"name": "c", "reqid": "9", "spi-in": "0000abcd"}}}}
    [ike] = parse_list_sa(msg)
    assert (ike.uniqueid, ike.children[0].reqid, ike.children[0].spi_in) == (5, 9, 0xABCD)
