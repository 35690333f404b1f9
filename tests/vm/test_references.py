"""Unit tests (fast tier, no VM) for the reference parsers of tests/vm/references.py.

The samples are the shapes iproute2 6.1 and strongSwan 5.9.8 print in the VM (tests/vm/README.md),
with fake key bytes: a parser must never carry them into its results.
"""

from __future__ import annotations

import pytest

from vm.references import (
    parse_ip_xfrm_policy,
    parse_ip_xfrm_state,
    parse_rekeys,
    parse_scenario_log,
    parse_swanctl_sas,
    redact_keys,
)

FAKE_AUTH_KEY = "0x" + "ab" * 32
FAKE_ENC_KEY = "0x" + "cd" * 16

STATE = f"""src 192.0.2.1 dst 192.0.2.2
\tproto esp spi 0xcb1fa0fd(3407847677) reqid 1(0x00000001) mode tunnel
\treplay-window 0 seq 0x00000000 flag af-unspec (0x00100000)
\tauth-trunc hmac(sha256) {FAKE_AUTH_KEY} (256 bits) 128
\tenc cbc(aes) {FAKE_ENC_KEY} (128 bits)
\tanti-replay context: seq 0x0, oseq 0xe, bitmap 0x00000000
\tlifetime config:
\t  limit: soft (INF)(bytes), hard (INF)(bytes)
\t  limit: soft (INF)(packets), hard (INF)(packets)
\t  expire add: soft 13(sec), hard 25(sec)
\t  expire use: soft 0(sec), hard 0(sec)
\tlifetime current:
\t  1176(bytes), 14(packets)
\t  add 2026-11-26 22:31:59 use 2026-11-26 22:31:59
\tstats:
\t  replay-window 0 replay 0 failed 0
src 192.0.2.2 dst 192.0.2.1
\tproto esp spi 0xcd3be026(3443253286) reqid 1(0x00000001) mode tunnel
\treplay-window 32 seq 0x00000000 flag af-unspec (0x00100000)
\taead rfc4106(gcm(aes)) {FAKE_AUTH_KEY} 160 128
\tsel src 10.20.1.1/32 dst 10.10.1.1/32
\tlifetime current:
\t  1092(bytes), 13(packets)
"""

SWANCTL = """tun: #2, ESTABLISHED, IKEv2, 00a26312387945b9_i 329a09e5ba6c07c9_r*
  local  '192.0.2.1' @ 192.0.2.1[4500]
  remote '192.0.2.2' @ 192.0.2.2[4500]
  AES_CBC-128/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/ECP_256
  established 33s ago, rekeying in 13734s
  net: #4, reqid 1, INSTALLED, TUNNEL, ESP:AES_CBC-128/HMAC_SHA2_256_128
    installed 7s ago, rekeying in 6s, expires in 18s
    in  cd3be026,   1092 bytes,    13 packets,     4s ago
    out cb1fa0fd,   1176 bytes,    14 packets,     4s ago
    local  10.10.1.1/32
    remote 10.20.1.1/32
"""

POLICY = "\n".join([  # iproute2 ends the selector and dir lines with a space
    "src 10.10.1.1/32 dst 10.20.1.1/32 ",
    "\tdir out priority 367231 ptype main ",
    "\ttmpl src 192.0.2.1 dst 192.0.2.2",
    "\t\tproto esp spi 0xcb1fa0fd reqid 1 mode tunnel",
    "src 10.20.1.1/32 dst 10.10.1.1/32 ",
    "\tdir in priority 367231 ptype main ",
    "\ttmpl src 192.0.2.2 dst 192.0.2.1",
    "\t\tproto esp reqid 1 mode tunnel",
    "src 0.0.0.0/0 dst 0.0.0.0/0 ",
    "\tsocket in priority 0 ptype main ",
    "",
])


def test_parse_ip_xfrm_state_fields_and_no_keys() -> None:
    """Every field is read from the text; no key byte ends up in the parsed records."""
    sas = parse_ip_xfrm_state(STATE)
    assert [(s.src, s.dst, s.spi, s.reqid, s.mode) for s in sas] == [
        ("192.0.2.1", "192.0.2.2", 0xCB1FA0FD, 1, "tunnel"), ("192.0.2.2", "192.0.2.1", 0xCD3BE026, 1, "tunnel")]
    assert (sas[0].enc, sas[0].auth, sas[0].aead) == ("cbc(aes)", "hmac(sha256)", None)
    assert (sas[1].enc, sas[1].auth, sas[1].aead) == (None, None, "rfc4106(gcm(aes))")
    assert (sas[0].bytes, sas[0].packets, sas[1].bytes, sas[1].packets) == (1176, 14, 1092, 13)
    assert (sas[0].sel_src, sas[1].sel_src, sas[1].sel_dst) == (None, "10.20.1.1/32", "10.10.1.1/32")
    text = repr(sas)
    assert "abab" not in text
    assert "cdcd" not in text


def test_parse_ip_xfrm_state_rejects_block_without_id() -> None:
    """A block with no proto/spi line is an error, not a silently dropped SA."""
    with pytest.raises(ValueError, match=r"192\.0\.2\.1 dst 192\.0\.2\.2 has no"):
        parse_ip_xfrm_state("src 192.0.2.1 dst 192.0.2.2\n\treplay-window 0\n")


def test_redact_keys() -> None:
    """Key-looking hex strings are replaced, SPIs (8 hex digits) are kept."""
    red = redact_keys(STATE)
    assert FAKE_AUTH_KEY not in red
    assert FAKE_ENC_KEY not in red
    assert "0xcb1fa0fd" in red
    assert red.count("<key>") == 3


def test_parse_swanctl_sas() -> None:
    """CHILD_SA name, reqid, state, SPIs, counters and traffic selectors."""
    (ch,) = parse_swanctl_sas(SWANCTL)
    assert (ch.name, ch.reqid, ch.state) == ("net", 1, "INSTALLED")
    assert (ch.in_spi, ch.bytes_in, ch.packets_in) == (0xCD3BE026, 1092, 13)
    assert (ch.out_spi, ch.bytes_out, ch.packets_out) == (0xCB1FA0FD, 1176, 14)
    assert (ch.local_ts, ch.remote_ts) == (("10.10.1.1/32",), ("10.20.1.1/32",))


def test_parse_swanctl_sas_route_based_child() -> None:
    """A child with an if_id (or mark) prints "(mark|if_id)" after each SPI (a real swanctl 5.9 line)."""
    text = ("gw: #1, ESTABLISHED, IKEv2, 1111111111111111_i* 2222222222222222_r\n"
            "  vti: #4, reqid 2, INSTALLED, TUNNEL, ESP:AES_CBC-128/HMAC_SHA2_256_128\n"
            "    installed 24s ago, rekeying in 3241s, expires in 3936s\n"
            "    in  c5e94d19 (-|0x0000002a),      0 bytes,     0 packets\n"
            "    out cdb2194a (-|0x0000002a),      0 bytes,     0 packets\n"
            "    local  0.0.0.0/0\n    remote 0.0.0.0/0\n")
    (ch,) = parse_swanctl_sas(text)
    assert (ch.name, ch.reqid, ch.in_spi, ch.out_spi) == ("vti", 2, 0xC5E94D19, 0xCDB2194A)
    assert (ch.local_ts, ch.remote_ts) == (("0.0.0.0/0",), ("0.0.0.0/0",))


def test_parse_ip_xfrm_policy() -> None:
    """Selectors, directions, template addresses and reqids; socket policies are marked."""
    pols = parse_ip_xfrm_policy(POLICY)
    assert [(p.src, p.dst, p.dir, p.reqid) for p in pols] == [
        ("10.10.1.1/32", "10.20.1.1/32", "out", 1), ("10.20.1.1/32", "10.10.1.1/32", "in", 1),
        ("0.0.0.0/0", "0.0.0.0/0", "socket-in", None)]
    assert (pols[0].tmpl_src, pols[0].tmpl_dst) == ("192.0.2.1", "192.0.2.2")


def test_parse_rekeys_and_log() -> None:
    """rekeys.txt and scenario.log lines."""
    assert parse_rekeys("1795732296.939703660 0xc2560470\n\n1795732308.5 0xc670b533\n") == [
        (1795732296.93970366, 0xC2560470), (1795732308.5, 0xC670B533)]
    log = parse_scenario_log("1795732327.2 [+106.1s] dump point at 1.0 (attempt 1)\ngarbage\n"
                             "1795732330.5 [+109.4s] dump point stable; 2 rekeys so far\n")
    assert log == [(1795732327.2, "dump point at 1.0 (attempt 1)"),
                   (1795732330.5, "dump point stable; 2 rekeys so far")]
