"""Zero every key byte in NETLINK_XFRM datagrams, keeping all lengths (pure).

SA messages carry encryption and authentication keys in ``XFRMA_ALG_*`` attributes, and an
``NLMSG_ERROR`` may echo a whole NEWSA request. Before any bytes are written to a capture file
they go through ``scrub_keys``. Where a message cannot be parsed, its whole payload is zeroed:
losing detail is acceptable, leaking a key is not.
"""

from __future__ import annotations

from monitor.wire import xfrm as X

__all__ = ["scrub_keys"]

# Where the attributes start in each message type's payload: NLMSG_ALIGN(sizeof(the fixed struct)) of
# include/uapi/linux/xfrm.h (nlmsg_attrdata). A type not listed has a layout we do not know: its payload
# is zeroed whole.
_ATTR_START = {
    X.XFRM_MSG_NEWSA: X.USERSA_INFO_SIZE,  # struct xfrm_usersa_info
    X.XFRM_MSG_UPDSA: X.USERSA_INFO_SIZE,
    X.XFRM_MSG_DELSA: 24,  # struct xfrm_usersa_id
    X.XFRM_MSG_GETSA: 24,
    X.XFRM_MSG_EXPIRE: X.USER_EXPIRE_SIZE,  # struct xfrm_user_expire
    X.XFRM_MSG_ALLOCSPI: 232,  # struct xfrm_userspi_info
    X.XFRM_MSG_NEWPOLICY: X.USERPOLICY_INFO_SIZE,  # struct xfrm_userpolicy_info
    X.XFRM_MSG_UPDPOLICY: X.USERPOLICY_INFO_SIZE,
    X.XFRM_MSG_DELPOLICY: 64,  # struct xfrm_userpolicy_id
    X.XFRM_MSG_GETPOLICY: 64,
    X.XFRM_MSG_MIGRATE: 64,
    X.XFRM_MSG_POLEXPIRE: X.USER_POLEXPIRE_SIZE,  # struct xfrm_user_polexpire
    X.XFRM_MSG_ACQUIRE: X.USER_ACQUIRE_SIZE,  # struct xfrm_user_acquire
    X.XFRM_MSG_NEWAE: 48,  # struct xfrm_aevent_id
    X.XFRM_MSG_GETAE: 48,
    X.XFRM_MSG_REPORT: X.USER_REPORT_SIZE,  # struct xfrm_user_report
    X.XFRM_MSG_MAPPING: 64,  # struct xfrm_user_mapping
    X.XFRM_MSG_FLUSHSA: 4,  # struct xfrm_usersa_flush { __u8 proto; }, aligned
    X.XFRM_MSG_FLUSHPOLICY: 0,
    X.XFRM_MSG_NEWSADINFO: 4,  # __u32 flags
    X.XFRM_MSG_GETSADINFO: 4,
    36: 4,  # XFRM_MSG_NEWSPDINFO: __u32 flags, then XFRMA_SPD_* attributes
    37: 4,  # XFRM_MSG_GETSPDINFO
}
# NLMSG_DONE carries one int (the dump's error code); anything after it is zeroed
_DONE_KEEP = 4
# XFRMA_UNSPEC (0) and types past the last one we know are not XFRM attributes: their bytes are zeroed
# (the first 4 bytes of a NEWSA misframed as an attribute read as type 0)
_XFRMA_LAST = 40
# struct nlmsgerr { int error; struct nlmsghdr msg; }: what follows is the echoed request, never kept
_ERROR_KEEP = 20


def _scrub_attrs(buf: bytearray, off: int, end: int) -> bool:
    """Zero algorithm keys in the attribute list ``buf[off:end]``; False if the list is malformed."""
    while off + 4 <= end:
        alen, atype = X.NLATTR.unpack_from(buf, off)
        if alen < 4 or off + alen > end:
            return False
        atype &= X.NLA_TYPE_MASK
        key_off = X.ALGO_KEY_OFFSET.get(atype)
        if atype == 0 or atype > _XFRMA_LAST:
            key_off = 0
        if key_off is not None:
            start = off + 4 + key_off
            stop = off + alen
            if start < stop:
                buf[start:stop] = bytes(stop - start)
        off += (alen + 3) & ~3
    return off >= end  # a tail too short for an attribute header is malformed too


def scrub_keys(data: bytes) -> bytes:
    """Return ``data`` with every key byte zeroed and every length unchanged.

    Bytes are kept only where the kernel's layout says what they are: a message whose length runs past
    the datagram, or whose type we do not know, or whose attributes do not parse, is zeroed from its
    payload on; so are the padding between messages and a tail too short for a header. A header that
    claims more than its type's payload (an ``NLMSG_DONE`` whose length covers a following NEWSA) cannot
    hide a key: DONE and ERROR keep only their fixed part, and an attribute walk zeroes keys, attributes
    of no XFRM type, or (when it does not parse) the whole payload.
    """
    buf = bytearray(data)
    off = 0
    size = len(buf)
    while off + 16 <= size:
        length, mtype = X.NLMSGHDR.unpack_from(buf, off)[:2]
        payload = off + 16
        if length < 16 or off + length > size:  # malformed: nothing after this header can be trusted
            buf[payload:] = bytes(size - payload)
            return bytes(buf)
        end = off + length
        if mtype in (X.NLMSG_ERROR, X.NLMSG_DONE):
            keep = min(payload + (_ERROR_KEEP if mtype == X.NLMSG_ERROR else _DONE_KEEP), end)
            buf[keep:end] = bytes(end - keep)
        else:
            start = _ATTR_START.get(mtype)
            # a payload no longer than the fixed struct has no attributes, and no fixed struct holds a key
            if start is None or (payload + start < end and not _scrub_attrs(buf, payload + start, end)):
                buf[payload:end] = bytes(end - payload)
        nxt = off + ((length + 3) & ~3)
        buf[end:min(nxt, size)] = bytes(min(nxt, size) - end)  # NLMSG_ALIGN padding
        off = nxt
    buf[off:] = bytes(max(0, size - off))  # a tail shorter than a header
    return bytes(buf)
