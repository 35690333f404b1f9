"""Decoder tests in h11's style: golden bytes built by hand (``tests/golden.py``), fed whole, several
to a datagram, and as a dump split across datagrams; plus malformed input and key hygiene."""

from __future__ import annotations

import pickle
import struct

import pytest

from monitor.errors import MalformedMessage
from monitor.wire.decode import decode_datagram
from monitor.wire.events import SA, Algo, Done, Event, NlHeader, SAAdded, Unknown
from tests import golden as G

CASES = sorted(G.GOLDEN)


@pytest.mark.parametrize("name", CASES)
def test_golden_message_decodes_to_its_event(name: str) -> None:
    """Each hand-built kernel message decodes to exactly the event written out beside it."""
    data, expected = G.GOLDEN[name]()
    assert [expected] == decode_datagram(data)


@pytest.mark.parametrize("name", CASES)
def test_golden_message_accepts_bytearray_and_memoryview(name: str) -> None:
    """``recv_into`` buffers work too: bytearray and memoryview decode like bytes."""
    data, expected = G.GOLDEN[name]()
    assert [expected] == decode_datagram(bytearray(data))  # type: ignore[arg-type]
    assert [expected] == decode_datagram(memoryview(data))  # type: ignore[arg-type]


def test_measured_kernel_sizes() -> None:
    """The golden messages have the sizes measured on a real kernel (xfrm-netlink.md 1.4 and 2)."""
    sizes = {name: len(G.GOLDEN[name]()[0]) for name in CASES}
    assert sizes["newsa_gcm"] == 424
    assert sizes["newsa_cbc"] == 584
    assert sizes["delsa_larval"] == 284
    assert sizes["expire_soft"] == 256  # with SA_DIR
    assert sizes["expire_hard_acquire_state"] == 248
    assert sizes["acquire"] == 376
    assert sizes["flushsa"] == 20


def test_all_golden_messages_in_one_datagram() -> None:
    """A datagram with every golden message back to back decodes to all their events, in order."""
    pairs = [G.GOLDEN[name]() for name in CASES]
    data = b"".join(b for b, _ in pairs)
    assert [ev for _, ev in pairs] == decode_datagram(data)


def test_dump_split_across_datagrams_ends_with_done() -> None:
    """A GETSA dump arrives as several NLM_F_MULTI datagrams closed by NLMSG_DONE; each decodes alone."""
    gcm, gcm_ev = G.newsa_gcm()
    cbc, cbc_ev = G.newsa_cbc()
    done, done_ev = G.done()
    datagrams = [gcm + cbc, cbc + gcm + gcm, done]
    events: list[Event] = []
    for d in datagrams:
        events.extend(decode_datagram(d))
    assert [gcm_ev, cbc_ev, cbc_ev, gcm_ev, gcm_ev, done_ev] == events
    assert isinstance(events[-1], Done)
    assert all(ev.nl.flags & G.NLM_F_MULTI for ev in events)


def test_empty_datagram_is_no_events() -> None:
    """Zero bytes is a valid (empty) datagram."""
    assert decode_datagram(b"") == []


@pytest.mark.parametrize("name", CASES)
def test_every_truncation_raises_malformed(name: str) -> None:
    """Cutting a message anywhere short of its full length raises MalformedMessage, never anything else."""
    data, _ = G.GOLDEN[name]()
    length = struct.unpack_from("=I", data)[0]
    for cut in range(1, length):
        with pytest.raises(MalformedMessage):
            decode_datagram(data[:cut])


def test_truncated_second_message_raises_and_says_where() -> None:
    """A datagram whose second message is cut short fails as a whole, naming the offset."""
    gcm, _ = G.newsa_gcm()
    with pytest.raises(MalformedMessage, match="offset 424"):
        decode_datagram(gcm + gcm[:100])


def test_trailing_bytes_shorter_than_a_header_raise() -> None:
    """Fewer than 16 stray bytes after the last message cannot be a header."""
    flush, _ = G.flushsa()
    with pytest.raises(MalformedMessage, match="truncated nlmsghdr"):
        decode_datagram(flush + b"\0" * 8)


def test_nlmsg_len_below_header_size_raises() -> None:
    """nlmsg_len < 16 would make the walk loop forever; it must be rejected."""
    with pytest.raises(MalformedMessage):
        decode_datagram(struct.pack("=IHHII", 8, G.NLMSG_DONE, 0, 0, 0))


def test_attribute_running_past_message_raises() -> None:
    """An nla_len pointing past the end of the message is malformed."""
    data, _ = G.newsa_cbc()
    bad = bytearray(data)
    struct.pack_into("=H", bad, 16 + 224, 0xFFF0)  # first attribute's nla_len
    with pytest.raises(MalformedMessage, match="attribute"):
        decode_datagram(bytes(bad))


def test_attribute_length_below_header_raises() -> None:
    """nla_len < 4 is malformed (it would never advance)."""
    data, _ = G.newsa_cbc()
    bad = bytearray(data)
    struct.pack_into("=H", bad, 16 + 224, 2)
    with pytest.raises(MalformedMessage):
        decode_datagram(bytes(bad))


def test_algorithm_key_length_overrunning_attribute_raises() -> None:
    """alg_key_len claiming more key bits than the attribute holds is malformed."""
    body = G.nla(G.ALG_CRYPT, G.algo("cbc(aes)", b"k" * 16, key_bits=4096))
    data = G.nlmsg(G.NEWSA, G._sa4_info() + body)
    with pytest.raises(MalformedMessage, match="key"):
        decode_datagram(data)


def test_short_fixed_attribute_raises() -> None:
    """A MARK attribute of 4 bytes (struct xfrm_mark is 8) is malformed, not silently padded."""
    data = G.nlmsg(G.NEWSA, G._sa4_info() + G.nla(G.MARK, b"\1\0\0\0"))
    with pytest.raises(MalformedMessage, match="xfrm_mark"):
        decode_datagram(data)


def test_esn_bitmap_longer_than_attribute_raises() -> None:
    """bmp_len claiming more words than the REPLAY_ESN_VAL attribute carries is malformed."""
    esn = struct.pack("=6I", 1000, 0, 0, 0, 0, 32) + b"\xff" * 4
    data = G.nlmsg(G.NEWSA, G._sa4_info() + G.nla(G.REPLAY_ESN_VAL, esn))
    with pytest.raises(MalformedMessage, match="bitmap"):
        decode_datagram(data)


def test_template_array_of_partial_template_raises() -> None:
    """XFRMA_TMPL must hold a whole number of 64-byte xfrm_user_tmpl."""
    pol, _ = G.updpolicy_ipv6()
    payload = pol[16:] + G.nla(G.TMPL, bytes(70))
    with pytest.raises(MalformedMessage, match="xfrm_user_tmpl"):
        decode_datagram(G.nlmsg(G.UPDPOLICY, payload))


def test_nested_sa_too_short_raises() -> None:
    """A DELSA whose XFRMA_SA is shorter than xfrm_usersa_info is malformed."""
    body = G.usersa_id(G.ip4("192.0.2.1"), 1, 2, 50) + G.nla(G.SA, bytes(100))
    with pytest.raises(MalformedMessage, match="XFRMA_SA"):
        decode_datagram(G.nlmsg(G.DELSA, body))


def test_unknown_types_become_unknown_events() -> None:
    """Types the decoder does not know (NOOP, OVERRUN, GETSA echo, MIGRATE, future ones) are kept, not errors."""
    for mtype in (1, 4, 0x12, 0x21, 0x29, 0xFFFF):
        payload = bytes(range(9))
        assert [Unknown(NlHeader(mtype, 0, 1, 2), payload)] == decode_datagram(G.nlmsg(mtype, payload, 0, 1, 2))


def test_spi_prints_as_eight_hex_digits() -> None:
    """SPIs come out as ints in host terms (the wire is __be32) and print as 0x%08x."""
    events = decode_datagram(G.newsa_cbc()[0] + G.newsa_gcm()[0] + G.delsa_request_srcaddr()[0])
    spis = []
    for ev in events:
        sa = getattr(ev, "sa", None)
        spis.append("0x%08x" % (sa.spi if sa is not None else ev.id.spi))  # type: ignore[union-attr]
    assert spis == ["0x0000beef", "0xc0ffee01", "0xdeadbeef"]


def test_ipv4_and_ipv6_addresses_are_canonical_strings() -> None:
    """Addresses are ipaddress-compatible strings in both families."""
    import ipaddress

    v4 = decode_datagram(G.newsa_gcm()[0])[0]
    v6 = decode_datagram(G.updsa_ipv6_extras()[0])[0]
    assert isinstance(v4, SAAdded)
    assert ipaddress.ip_address(v4.sa.daddr) == ipaddress.IPv4Address("203.0.113.5")
    assert ipaddress.ip_address(v6.sa.daddr) == ipaddress.IPv6Address("2001:db8::1")  # type: ignore[union-attr]
    assert v6.sa.sel.daddr == "2001:db8:1::"  # type: ignore[union-attr]


def test_larval_property() -> None:
    """An SA without algorithm attributes (ALLOCSPI / ACQUIRE placeholder) reports larval."""
    larval = decode_datagram(G.delsa_larval()[0])[0].sa  # type: ignore[union-attr]
    real = decode_datagram(G.newsa_gcm()[0])[0].sa  # type: ignore[union-attr]
    assert larval is not None
    assert real is not None
    assert larval.larval
    assert not real.larval


# --- key hygiene -------------------------------------------------------------------------------


def _walk(obj: object) -> list[object]:
    out = [obj]
    if isinstance(obj, tuple):
        for item in obj:
            out.extend(_walk(item))
    return out


def test_decoded_events_hold_no_key_bytes() -> None:
    """Decoding SAs with known keys leaves no key byte in any event: not in repr, not in pickle."""
    data = b"".join(G.GOLDEN[name]()[0] for name in CASES)
    assert all(marker in data for marker in G.KEY_MARKERS)  # the input really has the keys
    events = decode_datagram(data)
    text = repr(events).encode()
    blob = pickle.dumps(events)
    for key in G.ALL_KEYS:
        for marker in (key, key[:8], key[-8:]):
            assert marker not in text
            assert marker not in blob
    for marker in G.KEY_MARKERS:
        assert marker not in text
        assert marker not in blob


def test_algos_are_name_and_bits_only() -> None:
    """An Algo has exactly name, key_bits and icv_bits; no bytes anywhere in an SA event."""
    assert Algo._fields == ("name", "key_bits", "icv_bits")
    events = decode_datagram(G.newsa_gcm()[0] + G.newsa_cbc()[0] + G.updsa_ipv6_extras()[0])
    for ev in events:
        for value in _walk(ev):
            assert not isinstance(value, bytes | bytearray | memoryview), (type(ev).__name__, value)
    assert all(isinstance(ev.sa, SA) for ev in events)  # type: ignore[union-attr]


# --- the SA fast path (monitor.wire.decode_sa, monitor.wire.sa_layout): compiled attribute layouts ---------


@pytest.fixture
def fresh_layouts(monkeypatch: pytest.MonkeyPatch) -> dict[int, list[object]]:
    """Empty layout tables, so a test sees the first (walked) and second (compiled) decode."""
    from monitor.wire import sa_layout

    layouts: dict[int, list[object]] = {}
    monkeypatch.setattr(sa_layout, "LAYOUTS", layouts)
    monkeypatch.setattr(sa_layout, "layouts_count", [0])
    return layouts


@pytest.mark.parametrize("name", ["newsa_gcm", "newsa_cbc", "updsa_ipv6_extras", "delsa_larval", "expire_soft"])
def test_compiled_layout_gives_the_same_event(name: str, fresh_layouts: dict[int, list[object]]) -> None:
    """The first SA of a shape is walked and its layout compiled; the next one takes the compiled
    path; both give the hand-written event."""
    data, expected = G.GOLDEN[name]()
    assert [expected] == decode_datagram(data)
    assert fresh_layouts, "a layout should have been compiled"
    assert [expected, expected] == decode_datagram(data + data)


def test_compiled_layout_still_rejects_key_overrun(fresh_layouts: dict[int, list[object]]) -> None:
    """A message with a known layout but a key length larger than its attribute is still malformed."""
    data, _ = G.newsa_cbc()
    decode_datagram(data)
    assert fresh_layouts
    bad = bytearray(data)
    at = data.index(b"cbc(aes)") + 64  # alg_key_len of XFRMA_ALG_CRYPT
    struct.pack_into("=I", bad, at, 4096)
    with pytest.raises(MalformedMessage, match="key"):
        decode_datagram(bytes(bad))


def test_compiled_layout_with_other_esn_bitmap_length(fresh_layouts: dict[int, list[object]]) -> None:
    """Same attribute sizes, different bmp_len: the compiled reader defers to the walk, which is exact."""
    base = G._sa4_info(flags=128)
    two = G.nlmsg(G.NEWSA, base + G.nla(G.REPLAY_ESN_VAL, G.replay_esn([7, 8], 1, 2, 3, 4, 64)))
    one = G.nlmsg(G.NEWSA, base + G.nla(G.REPLAY_ESN_VAL, G.replay_esn([9], 5, 6, 7, 8, 32) + bytes(4)))
    first = decode_datagram(two)[0]
    second = decode_datagram(one)[0]
    assert isinstance(first, SAAdded)
    assert isinstance(second, SAAdded)
    assert first.sa.replay_esn.bmp == (7, 8)  # type: ignore[union-attr]
    assert second.sa.replay_esn.bmp == (9,)  # type: ignore[union-attr]
    assert second.sa.replay_esn.oseq == 5  # type: ignore[union-attr]
    assert [first] == decode_datagram(two)


def test_repeated_attribute_last_one_wins(fresh_layouts: dict[int, list[object]]) -> None:
    """Of two attributes of one type the last counts (as the kernel's nla_parse), even when the first
    is too short; a too-short last one is malformed."""
    base = G._sa4_info()
    good_last = G.nlmsg(G.NEWSA, base + G.nla(G.IF_ID, b"\1\0") + G.nla(G.IF_ID, struct.pack("=I", 77)))
    for _ in range(2):  # walked, then (if compiled) fast
        ev = decode_datagram(good_last)[0]
        assert ev.sa.if_id == 77  # type: ignore[union-attr]
    bad_last = G.nlmsg(G.NEWSA, base + G.nla(G.IF_ID, struct.pack("=I", 77)) + G.nla(G.IF_ID, b"\1\0"))
    with pytest.raises(MalformedMessage):
        decode_datagram(bad_last)


def _attr_types_in(data: bytes, first_attr: int) -> set[int]:
    """Top-level nlattr types of the first message in ``data``, starting at ``first_attr``."""
    end = struct.unpack_from("=I", data)[0]
    seen = set()
    off = first_attr
    while off + 4 <= end:
        alen, atype = struct.unpack_from("=HH", data, off)
        seen.add(atype)
        off += (alen + 3) & ~3
    return seen


def test_golden_messages_cover_every_required_attribute() -> None:
    """Issue 2's attribute list is all present in the hand-built messages, so each is decoded from
    bytes written independently of the encoder (LTIME_VAL ... SA_EXTRA_FLAGS and the algorithms)."""
    first_attr = {"newsa_gcm": 240, "newsa_cbc": 240, "updsa_ipv6_extras": 240, "delsa_larval": 40,
                  "expire_soft": 248, "acquire": 296, "newpolicy": 184, "delpolicy": 80, "polexpire": 192,
                  "flushpolicy": 16, "newae": 64, "newae_esn_ipv6": 64, "report": 76, "sadinfo": 20}
    covered: set[int] = set()
    for name, at in first_attr.items():
        covered |= _attr_types_in(G.GOLDEN[name]()[0], at)
    required = {G.LTIME_VAL, G.REPLAY_VAL, G.REPLAY_ESN_VAL, G.LASTUSED, G.MARK, G.IF_ID, G.SA_DIR, G.ENCAP,
                G.OFFLOAD_DEV, G.SET_MARK, G.TMPL, G.POLICY_TYPE, G.SA_EXTRA_FLAGS, G.ALG_AUTH, G.ALG_CRYPT,
                G.ALG_COMP, G.ALG_AEAD, G.ALG_AUTH_TRUNC}
    assert required - covered == set()
