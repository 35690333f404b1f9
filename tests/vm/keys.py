"""SA keys found by hand, and looked for in files: the VM tier's key checks (no ``monitor.wire`` involved).

``hand_keys`` walks NETLINK_XFRM messages with ``struct`` at the offsets of include/uapi/linux/xfrm.h (the
ones ``tests/golden.py`` builds its messages at), so a key check does not depend on the scrubber it checks.
``key_patterns`` are the forms a key could leak in: raw, hex (both cases), base64 (at each alignment).
"""

from __future__ import annotations

import base64
import struct

__all__ = ["hand_keys", "key_patterns"]

# Where each SA message's attributes start: NLMSG_ALIGN(sizeof(fixed struct)).
HAND_ATTR_START = {16: 224, 26: 224, 24: 232, 17: 24}  # NEWSA, UPDSA (xfrm_usersa_info), EXPIRE, DELSA
# XFRMA_ALG_AUTH 1, _CRYPT 2, _COMP 3: struct xfrm_algo { char name[64]; u32 alg_key_len; char key[]; }
# XFRMA_ALG_AEAD 18, _AUTH_TRUNC 20: name[64], u32 alg_key_len, u32 icv/trunc_len, key at 72
HAND_KEY_AT = {1: 68, 2: 68, 3: 68, 18: 72, 20: 72}


def hand_keys(data: bytes) -> list[bytes]:
    """Every key field of every SA message in a NETLINK_XFRM datagram, found by walking nlmsghdr and
    rtattr headers by hand (an NLMSG_ERROR's echoed request included)."""
    keys: list[bytes] = []
    pos = 0
    while pos + 16 <= len(data):
        length, mtype = struct.unpack_from("=IH", data, pos)
        if length < 16:
            break
        msg = data[pos:pos + length]
        if mtype == 2 and len(msg) >= 20 + 16:  # struct nlmsgerr { int error; struct nlmsghdr msg; ... }
            keys += hand_keys(msg[20:])
        start = HAND_ATTR_START.get(mtype)
        if start is not None:
            a = 16 + start
            while a + 4 <= len(msg):
                alen, atype = struct.unpack_from("=HH", msg, a)
                if alen < 4:
                    break
                at = HAND_KEY_AT.get(atype & 0x3FFF)
                if at is not None and alen >= 4 + at:
                    bits = struct.unpack_from("=I", msg, a + 4 + 64)[0]
                    keys.append(msg[a + 4 + at:a + 4 + at + (bits + 7) // 8])
                a += (alen + 3) & ~3
        pos += (length + 3) & ~3
    return keys


def key_patterns(key: bytes) -> list[bytes]:
    """The byte strings that would show ``key`` in a file: raw, hex lower and upper case, and base64 at
    each of the three alignments (whole 4-character groups only, so the neighbours do not matter)."""
    out = [key, key.hex().encode(), key.hex().upper().encode()]
    for skip in range(3):
        b64 = base64.b64encode(key[skip:])
        whole = len(key[skip:]) // 3 * 4  # characters that depend only on key bytes
        out.append(b64[:whole])
    return out
