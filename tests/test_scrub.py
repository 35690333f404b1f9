"""Key scrubbing (``monitor.wire.scrub.scrub_keys``): every key byte zeroed, every length kept, and the
scrubbed bytes decode to the same events. Keys are random and known, so their absence is provable."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.wire.decode import decode_datagram
from monitor.wire.encode import encode, encode_sa
from monitor.wire.events import SA, Event, NlHeader, SAAdded, SADeleted, SAExpired, SAId, SAUpdated
from monitor.wire.scrub import scrub_keys
from tests import golden as G
from tests.strategies import nl_headers, sas_with_keys

PROPS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _sa_event(kind: str, sa: SA) -> Event:
    if kind == "new":
        return SAAdded(NlHeader(G.NEWSA, G.NLM_F_MULTI, 1, 2), sa)
    if kind == "upd":
        return SAUpdated(NlHeader(G.UPDSA), sa)
    if kind == "del":
        return SADeleted(NlHeader(G.DELSA), SAId(sa.daddr, sa.spi, sa.family, sa.proto), sa)
    return SAExpired(NlHeader(G.EXPIRE), sa, kind == "hard")


@PROPS
@given(st.lists(st.tuples(st.sampled_from(["new", "upd", "del", "soft", "hard"]), sas_with_keys()),
                min_size=1, max_size=5))
def test_scrub_removes_every_key_and_keeps_the_rest(items: list[tuple[str, tuple[SA, dict[int, bytes]]]]) -> None:
    """For SAs with random known keys: scrubbed == the same messages encoded with zero keys, so no
    key byte survives, every length is equal, and decode(scrubbed) == decode(original)."""
    events = [_sa_event(kind, sa) for kind, (sa, _) in items]
    original = b"".join(encode(ev, keys) for ev, (_, (_, keys)) in zip(events, items, strict=True))
    zero_keyed = b"".join(encode(ev) for ev in events)
    scrubbed = scrub_keys(original)
    assert len(original) == len(scrubbed)
    assert zero_keyed == scrubbed
    assert decode_datagram(original) == decode_datagram(scrubbed) == events
    for _, (_, keys) in items:
        for key in keys.values():
            if key not in zero_keyed:  # a random key could be all zeros or occur by chance
                assert key not in scrubbed


def test_golden_keys_are_gone() -> None:
    """The hand-built golden messages with printable keys lose every marker; lengths unchanged."""
    data = b"".join(G.GOLDEN[name]()[0] for name in sorted(G.GOLDEN))
    scrubbed = scrub_keys(data)
    assert len(data) == len(scrubbed)
    for marker in G.KEY_MARKERS:
        assert marker in data
        assert marker not in scrubbed
    assert decode_datagram(data) == decode_datagram(scrubbed)


def test_algorithm_names_survive_scrubbing() -> None:
    """Only the key is zeroed: algorithm names and key lengths stay (they are not secret)."""
    scrubbed = scrub_keys(G.newsa_gcm()[0] + G.newsa_cbc()[0])
    assert b"rfc4106(gcm(aes))" in scrubbed
    assert b"hmac(sha256)" in scrubbed
    assert b"cbc(aes)" in scrubbed


def test_error_echoing_a_newsa_request_is_scrubbed() -> None:
    """NLMSG_ERROR echoes the whole failed request (keys included); everything after the echoed header goes."""
    request, _ = G.newsa_cbc()
    err = G.nlmsg(G.NLMSG_ERROR, struct.pack("=i", -17) + request)
    scrubbed = scrub_keys(err)
    assert len(err) == len(scrubbed)
    for marker in G.KEY_MARKERS[1:]:
        assert marker in err
        assert marker not in scrubbed
    assert decode_datagram(err) == decode_datagram(scrubbed)


def test_unparseable_attributes_zero_the_whole_payload() -> None:
    """A NEWSA whose attribute list is broken cannot be scrubbed precisely: its whole payload is zeroed."""
    body = G._sa4_info() + G.nla(G.ALG_CRYPT, G.algo("cbc(aes)", G.CBC_KEY))
    bad = bytearray(G.nlmsg(G.NEWSA, body))
    struct.pack_into("=H", bad, 16 + 224, 2)  # nla_len 2: malformed
    scrubbed = scrub_keys(bytes(bad))
    assert len(bad) == len(scrubbed)
    assert bytes(bad[:16]) == scrubbed[:16]
    assert bytes(len(bad) - 16) == scrubbed[16:]


def test_truncated_message_keys_are_zeroed() -> None:
    """A datagram cut in the middle of a key still has no key bytes after scrubbing."""
    data = G.newsa_cbc()[0]
    cut = data.index(G.CBC_KEY) + 10
    scrubbed = scrub_keys(data[:cut])
    assert len(scrubbed) == cut
    assert G.CBC_KEY[:10] not in scrubbed
    assert b"HMACKEY" not in scrubbed


@PROPS
@given(st.binary(max_size=2048))
def test_scrub_never_raises_and_keeps_length(data: bytes) -> None:
    """Any bytes: scrub_keys returns the same number of bytes and never raises."""
    assert len(data) == len(scrub_keys(data))


@PROPS
@given(nl_headers(G.NEWSA), sas_with_keys(), st.integers(1, 64))
def test_scrub_of_truncated_sa_leaks_no_key(nl: NlHeader, sa_keys: tuple[SA, dict[int, bytes]], cut: int) -> None:
    """A message truncated anywhere (a capture snaplen, a short read) still leaks no full key."""
    sa, keys = sa_keys
    wire = encode_sa(nl, sa, keys)
    short = wire[: max(16, len(wire) - cut)]
    scrubbed = scrub_keys(short)
    zero_keyed = encode_sa(nl, sa)
    for key in keys.values():
        if key not in zero_keyed:
            assert key not in scrubbed


# --- bytes outside a message's nlmsg_len (issue 11 item 8) ------------------------------------------------


def _markers_left(data: bytes) -> list[bytes]:
    return [m for m in G.KEY_MARKERS if m in data]


def test_done_whose_length_covers_a_newsa_hides_no_key() -> None:
    newsa = G.newsa_gcm()[0]
    done = G.nlmsg(G.NLMSG_DONE, struct.pack("=i", 0) + newsa, G.NLM_F_MULTI)  # the NEWSA inside DONE's length
    assert _markers_left(done)
    scrubbed = scrub_keys(done)
    assert len(scrubbed) == len(done)
    assert not _markers_left(scrubbed)
    assert scrubbed[:20] == done[:20]  # the header and the error code are kept


def test_newsa_with_a_short_length_and_its_attributes_after_it_hides_no_key() -> None:
    newsa = G.newsa_gcm()[0]
    short = struct.pack("=I", 16 + 224) + newsa[4:]  # nlmsg_len covers only struct xfrm_usersa_info
    assert _markers_left(short)
    scrubbed = scrub_keys(short)
    assert len(scrubbed) == len(short)
    assert not _markers_left(scrubbed)


def test_newsa_misframed_as_a_policy_attribute_hides_no_key() -> None:
    policy = G.newpolicy()[0]
    newsa = G.newsa_gcm()[0]
    glued = policy[:4] + policy[4:] + newsa
    glued = struct.pack("=I", len(glued)) + glued[4:]  # the policy's length claims the NEWSA as attributes
    assert _markers_left(glued)
    assert not _markers_left(scrub_keys(glued))


def test_a_tail_shorter_than_a_header_and_padding_are_zeroed() -> None:
    data = G.newpolicy()[0] + b"GCMKEY" + b"\0" * 3
    scrubbed = scrub_keys(data)
    assert not _markers_left(scrubbed)
    assert scrubbed[: len(G.newpolicy()[0])] == G.newpolicy()[0]


def test_unknown_message_types_lose_their_payload_but_not_their_header() -> None:
    msg = G.nlmsg(0x7F, b"GCMKEY" + b"\0" * 2)
    scrubbed = scrub_keys(msg)
    assert scrubbed[:16] == msg[:16]
    assert scrubbed[16:] == bytes(len(msg) - 16)
