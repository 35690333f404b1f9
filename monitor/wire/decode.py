"""Pure NETLINK_XFRM decoder: one datagram of bytes in, a list of typed events out.

Theory of operation
-------------------
A datagram holds one or more netlink messages, each ``struct nlmsghdr`` followed by a fixed
struct and then ``struct nlattr`` attributes, all 4-byte aligned (``NLMSG_ALIGN``/``NLA_ALIGN``).
A dump arrives as several datagrams of ``NLM_F_MULTI`` records closed by ``NLMSG_DONE``; each
datagram decodes on its own, so no state is kept between calls.

Message types dispatch through ``HANDLERS`` (a table, as in aioquic; the per-type handlers are in
``monitor.wire.decode_messages``, the attribute walk and field readers in ``monitor.wire.decode_fields``).
Unknown types become ``Unknown`` events. Any inconsistency (a length past the end, a short struct, a bad attribute
length) raises ``MalformedMessage``; no other exception can escape ``decode_datagram``.

Key bytes inside ``XFRMA_ALG_*`` attributes are never read: only the 64-byte name and the key
length are unpacked, so no key byte is ever copied into a Python object.

SA messages (NEWSA, UPDSA, DELSA, EXPIRE; every dump record) are built by ``monitor.wire.decode_sa``,
the measured hot path: raw-bytes memo tables for selectors, lifetimes, algorithms and addresses,
and per-layout compiled attribute readers. Its theory of operation and the profile that led to it
are in that module and in ``bench/RESULTS.md``.
"""

from __future__ import annotations

import struct

from monitor.errors import MalformedMessage
from monitor.wire import xfrm as X
from monitor.wire.decode_messages import HANDLERS
from monitor.wire.decode_sa import _sa
from monitor.wire.events import (
    Event,
    NlHeader,
    SAAdded,
    Unknown,
)
from monitor.wire.sa_values import _new, format_address

__all__ = ["decode_datagram", "format_address", "iter_messages"]


_NLMSGHDR = X.NLMSGHDR.unpack_from



def iter_messages(data: bytes) -> list[tuple[NlHeader, int, int]]:
    """Split a datagram into ``(header, payload offset, payload end)`` triples.

    Raises:
        MalformedMessage: a header is truncated or a length runs past the datagram.
    """
    out = []
    off = 0
    size = len(data)
    while off < size:
        if size - off < 16:
            raise MalformedMessage(f"truncated nlmsghdr: {size - off} bytes at offset {off}")
        length, mtype, flags, seq, pid = _NLMSGHDR(data, off)
        if length < 16 or off + length > size:
            raise MalformedMessage(f"nlmsg_len {length} at offset {off} is outside the {size}-byte datagram")
        out.append((NlHeader(mtype, flags, seq, pid), off + 16, off + length))
        off += (length + 3) & ~3
    return out


def decode_datagram(data: bytes) -> list[Event]:
    """Decode every netlink message in one datagram.

    Args:
        data: the bytes of one ``recv`` from a NETLINK_XFRM socket (or one capture record).

    Returns:
        One event per message, in order.

    Raises:
        MalformedMessage: the bytes do not follow the kernel's layout.
    """
    if type(data) is not bytes:  # bytearray / memoryview from recv_into: the caches need hashable slices
        data = bytes(data)
    events: list[Event] = []
    append = events.append
    off = 0
    size = len(data)
    while off < size:
        if size - off < 16:
            raise MalformedMessage(f"truncated nlmsghdr: {size - off} bytes at offset {off}")
        length, mtype, flags, seq, pid = _NLMSGHDR(data, off)
        if length < 16 or off + length > size:
            raise MalformedMessage(f"nlmsg_len {length} at offset {off} is outside the {size}-byte datagram")
        nl: NlHeader = _new(NlHeader, (mtype, flags, seq, pid))
        start = off + 16
        end = off + length
        try:
            if mtype == X.XFRM_MSG_NEWSA:  # the hot path: dumps and SA notifications, inlined
                if length < 240:
                    raise MalformedMessage(f"xfrm_usersa_info: payload of {length - 16} bytes, need 224")
                append(_new(SAAdded, (nl, _sa(data, start, start + 224, end))))
            else:
                handler = HANDLERS.get(mtype)
                if handler is None:
                    append(Unknown(nl, data[start:end]))
                else:
                    append(handler(data, nl, start, end))
        except (struct.error, IndexError, ValueError) as exc:
            if isinstance(exc, MalformedMessage):
                raise
            raise MalformedMessage(f"{X.MSG_NAMES.get(mtype, mtype)}: {exc}") from None
        off += (length + 3) & ~3
    return events
