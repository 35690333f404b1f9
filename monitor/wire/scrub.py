"""Zero every key byte in NETLINK_XFRM datagrams, keeping all lengths (pure).

SA messages carry encryption and authentication keys in ``XFRMA_ALG_*`` attributes, and an
``NLMSG_ERROR`` may echo a whole NEWSA request. Before any bytes are written to a capture file
they go through ``scrub_keys``. Where a message cannot be parsed, its whole payload is zeroed:
losing detail is acceptable, leaking a key is not.
"""

from __future__ import annotations

from monitor.wire import xfrm as X

__all__ = ["scrub_keys"]

# message type -> offset of the first attribute inside the payload
_ATTR_START = {
    X.XFRM_MSG_NEWSA: X.USERSA_INFO_SIZE,
    X.XFRM_MSG_UPDSA: X.USERSA_INFO_SIZE,
    X.XFRM_MSG_DELSA: 24,  # struct xfrm_usersa_id
    X.XFRM_MSG_GETSA: 24,
    X.XFRM_MSG_EXPIRE: X.USER_EXPIRE_SIZE,
    X.XFRM_MSG_ALLOCSPI: 232,  # struct xfrm_userspi_info
}


def _scrub_attrs(buf: bytearray, off: int, end: int) -> bool:
    """Zero algorithm keys in the attribute list ``buf[off:end]``; False if the list is malformed."""
    while off + 4 <= end:
        alen, atype = X.NLATTR.unpack_from(buf, off)
        if alen < 4 or off + alen > end:
            return False
        atype &= X.NLA_TYPE_MASK
        key_off = X.ALGO_KEY_OFFSET.get(atype)
        if key_off is not None:
            start = off + 4 + key_off
            stop = off + alen
            if start < stop:
                buf[start:stop] = bytes(stop - start)
        off += (alen + 3) & ~3
    return True


def scrub_keys(data: bytes) -> bytes:
    """Return ``data`` with every key byte zeroed and every length unchanged."""
    buf = bytearray(data)
    off = 0
    size = len(buf)
    while off + 16 <= size:
        length, mtype = X.NLMSGHDR.unpack_from(buf, off)[:2]
        end = min(off + max(length, 16), size)
        payload = off + 16
        if mtype == X.NLMSG_ERROR:
            # struct nlmsgerr { int error; struct nlmsghdr msg; ... echoed request payload ... }
            keep = min(payload + 20, end)
            buf[keep:end] = bytes(end - keep)
        elif mtype in _ATTR_START:
            attrs = payload + _ATTR_START[mtype]
            if attrs > end or not _scrub_attrs(buf, attrs, end):
                buf[payload:end] = bytes(end - payload)
        if length < 16:
            buf[payload:] = bytes(size - payload)
            break
        off += (length + 3) & ~3
    return bytes(buf)
