"""Encoder tests: byte-exact against the hand-built golden messages (``tests/golden.py``), which follow
the kernel header offsets and the kernel's attribute order, independently of ``monitor.wire.xfrm``."""

from __future__ import annotations

import struct

import pytest

from monitor.wire.encode import encode, encode_datagram, encode_dump_request
from monitor.wire.events import Algo, SAAdded
from tests import golden as G

# The golden SA messages carry real-looking keys; everything else has none.
KEYS = {
    "newsa_gcm": {G.ALG_AEAD: G.GCM_KEY},
    "newsa_cbc": {G.ALG_AUTH: G.HMAC_KEY, G.ALG_AUTH_TRUNC: G.HMAC_KEY, G.ALG_CRYPT: G.CBC_KEY},
    "updsa_ipv6_extras": {G.ALG_AUTH: G.HMAC_KEY[:20], G.ALG_AUTH_TRUNC: G.HMAC_KEY[:20], G.ALG_CRYPT: G.CBC_KEY[:16]},
}


@pytest.mark.parametrize("name", sorted(G.GOLDEN))
def test_encoder_reproduces_golden_bytes(name: str) -> None:
    """encode(event, keys) writes exactly the bytes built by hand from the kernel header."""
    data, event = G.GOLDEN[name]()
    assert data == encode(event, KEYS.get(name))


def test_encoded_length_field_excludes_padding() -> None:
    """nlmsg_len counts header + payload; NLMSG_ALIGN padding follows it (FLUSHSA: 17, 20 on the wire)."""
    _, ev = G.flushsa()
    out = encode(ev)
    assert len(out) == 20
    assert struct.unpack_from("=I", out)[0] == 17


def test_without_keys_the_key_bytes_are_zero_and_lengths_kept() -> None:
    """With no keys given, each algorithm's key area is zero-filled to its stated key length."""
    data, ev = G.newsa_cbc()
    out = encode(ev)
    assert len(data) == len(out)
    assert not any(marker in out for marker in G.KEY_MARKERS)
    # the same bytes once the keys are zeroed by hand at the struct offsets
    zeroed = bytearray(data)
    for key in (G.HMAC_KEY, G.HMAC_KEY, G.CBC_KEY):
        at = bytes(zeroed).find(key)
        zeroed[at : at + len(key)] = bytes(len(key))
    assert bytes(zeroed) == out


def test_wrong_key_length_is_refused() -> None:
    """A key whose length does not match key_bits is a caller error (ValueError), never silently padded."""
    _, ev = G.newsa_gcm()
    with pytest.raises(ValueError, match="must be 20 bytes"):
        encode(ev, {G.ALG_AEAD: b"short"})


def test_key_bits_not_multiple_of_eight_round_up() -> None:
    """alg_key_len is in bits; the key occupies (bits + 7) // 8 bytes, as the kernel's xfrm_alg_len()."""
    _, ev = G.newsa_cbc()
    assert isinstance(ev, SAAdded)
    odd = ev._replace(sa=ev.sa._replace(enc=Algo("cbc(aes)", 129), auth=None, auth_trunc=None))
    out = encode(odd)
    # struct xfrm_algo = 68 bytes + 17 key bytes -> nla_len 89
    at = out.find(b"cbc(aes)")
    assert struct.unpack_from("=H", out, at - 4)[0] == 89


def test_encode_datagram_concatenates_aligned_messages() -> None:
    """encode_datagram is the concatenation of the aligned messages, as one dump recv returns them."""
    pairs = [G.flushsa(), G.newsa_gcm(), G.done()]
    expected = G.flushsa()[0] + encode(pairs[1][1]) + G.done()[0]
    assert expected == encode_datagram(ev for _, ev in pairs)


def test_dump_request_has_no_struct() -> None:
    """GETSA dump requests are a bare nlmsghdr with NLM_F_REQUEST|NLM_F_DUMP (xfrm_dump_sa parses hdrlen 0)."""
    assert struct.pack("=IHHII", 16, 18, 0x301, 7, 0) == encode_dump_request(18, 7)
    with_proto = encode_dump_request(18, 8, proto=50)
    # nla_put() reserves nla_total_size(), so nlmsg_len includes the attribute's padding (24, not 21)
    assert struct.pack("=IHHII", 24, 18, 0x301, 8, 0) + struct.pack("=HHB3x", 5, 25, 50) == with_proto


def test_unencodable_object_raises_type_error() -> None:
    """Passing something that is not an event is a programming error."""
    with pytest.raises(TypeError):
        encode(object())  # type: ignore[arg-type]
