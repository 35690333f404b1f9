"""Hypothesis properties of the codec.

(a) Any bytes either decode or raise ``MalformedMessage``, nothing else (h11's fuzz invariant): random
    bytes, and valid datagrams mutated by truncation, overwritten length fields, and garbage nested
    inside ``XFRMA_SA`` / ``XFRMA_TMPL`` / ``XFRMA_REPLAY_ESN_VAL`` / ``XFRMA_POLICY``.
(b) Round trip: ``decode(encode(ev)) == [ev]`` for generated events of every type, alone and packed
    several to a datagram.
"""

from __future__ import annotations

import os
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.errors import MalformedMessage
from monitor.wire.decode import decode_datagram
from monitor.wire.encode import encode, encode_datagram
from monitor.wire.events import Event
from tests import golden as G
from tests.strategies import KNOWN_TYPES, events, sa_events

# MONITOR_FUZZ_SCALE=20 pytest tests/test_codec_properties.py  runs a deep fuzz (about 6 minutes)
_SCALE = int(os.environ.get("MONITOR_FUZZ_SCALE", "1"))
FUZZ = settings(max_examples=300 * _SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ROUNDTRIP = settings(max_examples=400 * _SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=100 * _SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def decodes_or_malformed(data: bytes) -> list[Event] | None:
    """The invariant: returns the events, or None when MalformedMessage was raised. Anything else fails."""
    try:
        return decode_datagram(data)
    except MalformedMessage:
        return None


# --- (a) malformed input -----------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=1024))
def test_random_bytes_decode_or_raise_malformed(data: bytes) -> None:
    """Arbitrary bytes never raise anything but MalformedMessage."""
    result = decodes_or_malformed(data)
    assert result is None or isinstance(result, list)


@FUZZ
@given(st.sampled_from(sorted(KNOWN_TYPES)), st.binary(max_size=600), st.integers(0, 0xFFFF))
def test_random_payload_under_valid_header(mtype: int, payload: bytes, flags: int) -> None:
    """A well-formed nlmsghdr of every known type around random payload bytes: decode or MalformedMessage."""
    result = decodes_or_malformed(G.nlmsg(mtype, payload, flags))
    assert result is None or len(result) == 1


@FUZZ
@given(events(), st.data())
def test_truncated_valid_messages(ev: Event, data: st.DataObject) -> None:
    """Any prefix of a valid message (cut inside it) raises MalformedMessage; the whole decodes."""
    wire = encode(ev)
    length = struct.unpack_from("=I", wire)[0]
    cut = data.draw(st.integers(0, length - 1))
    if cut == 0:
        assert decode_datagram(wire[:0]) == []
    else:
        assert decodes_or_malformed(wire[:cut]) is None
    assert [ev] == decode_datagram(wire)


def _attr_offsets(wire: bytes, first: int) -> list[int]:
    """Offsets of the top-level nlattr headers from ``first`` to the end of the first message."""
    end = struct.unpack_from("=I", wire)[0]
    out = []
    off = first
    while off + 4 <= end:
        alen = struct.unpack_from("=H", wire, off)[0]
        if alen < 4:
            break
        out.append(off)
        off += (alen + 3) & ~3
    return out


_FIRST_ATTR = {
    G.NEWSA: 16 + 224, G.UPDSA: 16 + 224, G.DELSA: 16 + 24, G.EXPIRE: 16 + 232, G.ACQUIRE: 16 + 280,
    G.NEWPOLICY: 16 + 168, G.UPDPOLICY: 16 + 168, G.DELPOLICY: 16 + 64, G.POLEXPIRE: 16 + 176,
    G.FLUSHPOLICY: 16, G.NEWAE: 16 + 48, G.REPORT: 16 + 60, G.NEWSADINFO: 16 + 4,
}


@FUZZ
@given(events(), st.data())
def test_overwritten_length_fields(ev: Event, data: st.DataObject) -> None:
    """Overwriting nlmsg_len or any nla_len with a random value gives events or MalformedMessage only."""
    wire = bytearray(encode(ev))
    offsets = [0]
    first = _FIRST_ATTR.get(ev.nl.type)
    if first is not None:
        offsets += _attr_offsets(bytes(wire), first)
    at = data.draw(st.sampled_from(offsets))
    if at == 0:
        struct.pack_into("=I", wire, 0, data.draw(st.integers(0, 0xFFFFFFFF)))
    else:
        struct.pack_into("=H", wire, at, data.draw(st.integers(0, 0xFFFF)))
    decodes_or_malformed(bytes(wire))


@FUZZ
@given(events(), st.data())
def test_random_byte_flips(ev: Event, data: st.DataObject) -> None:
    """Flipping random bytes anywhere in a valid message gives events or MalformedMessage only."""
    wire = bytearray(encode(ev))
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(wire) - 1))
        wire[i] = data.draw(st.integers(0, 255))
    decodes_or_malformed(bytes(wire))


@FUZZ
@given(
    st.sampled_from([(G.DELSA, 24, G.SA), (G.DELPOLICY, 64, G.POLICY), (G.NEWPOLICY, 168, G.TMPL),
                     (G.ACQUIRE, 280, G.TMPL), (G.NEWSA, 224, G.REPLAY_ESN_VAL), (G.NEWAE, 48, G.REPLAY_ESN_VAL),
                     (G.NEWAE, 48, G.LTIME_VAL), (G.NEWSA, 224, G.ALG_AEAD), (G.NEWSA, 224, G.ENCAP),
                     (G.EXPIRE, 232, G.SA_DIR), (G.NEWSADINFO, 4, G.SAD_HINFO), (G.REPORT, 60, G.COADDR)]),
    st.binary(max_size=400),
    st.lists(st.tuples(st.integers(0, 40), st.binary(max_size=80)), max_size=4),
)
def test_nested_garbage(kind: tuple[int, int, int], garbage: bytes, extra: list[tuple[int, bytes]]) -> None:
    """Garbage inside nested structs (XFRMA_SA, TMPL, ESN, POLICY, ...) gives events or MalformedMessage only."""
    mtype, fixed, atype = kind
    body = bytes(fixed) + G.nla(atype, garbage) + b"".join(G.nla(t, p) for t, p in extra)
    decodes_or_malformed(G.nlmsg(mtype, body))


@SLOW
@given(st.lists(events(), min_size=1, max_size=4), st.binary(min_size=1, max_size=40))
def test_valid_messages_followed_by_junk(evs: list[Event], junk: bytes) -> None:
    """Junk after valid messages never escapes as anything but MalformedMessage."""
    decodes_or_malformed(encode_datagram(evs) + junk)


# --- (b) round trip ----------------------------------------------------------------------------


@ROUNDTRIP
@given(events())
def test_roundtrip_every_event_type(ev: Event) -> None:
    """decode(encode(ev)) == [ev] for generated events of every message type."""
    assert [ev] == decode_datagram(encode(ev))


@ROUNDTRIP
@given(sa_events())
def test_roundtrip_sa_events(ev: Event) -> None:
    """SA-carrying events (NEWSA/UPDSA/DELSA/EXPIRE), the hot path, get extra examples."""
    assert [ev] == decode_datagram(encode(ev))


@SLOW
@given(st.lists(events(), max_size=8))
def test_roundtrip_datagrams(evs: list[Event]) -> None:
    """Several messages packed into one datagram come back in order."""
    assert evs == decode_datagram(encode_datagram(evs))


@FUZZ
@given(events())
def test_encode_is_aligned_and_length_consistent(ev: Event) -> None:
    """Every encoded message is 4-byte aligned and nlmsg_len is within 3 bytes of its wire size."""
    wire = encode(ev)
    length = struct.unpack_from("=I", wire)[0]
    assert len(wire) % 4 == 0
    assert 0 <= len(wire) - length <= 3
