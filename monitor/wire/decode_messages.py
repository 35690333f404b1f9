"""Per-message-type handlers of the XFRM decoder (pure): ``HANDLERS[nlmsg_type](data, nl, start, end)``.

Each handler gets the whole datagram, the decoded ``nlmsghdr`` and its payload bounds, and returns one
typed event (``monitor.wire.events``). SA records are built by ``monitor.wire.decode_sa``; attributes
and shared structs by ``monitor.wire.decode_fields``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from monitor.errors import MalformedMessage
from monitor.wire import xfrm as X
from monitor.wire.decode_fields import (
    _attrs,
    _mark,
    _need,
    _policy,
    _policy_type,
    _selector,
    _templates,
    _u32,
)
from monitor.wire.decode_sa import _bad, _sa
from monitor.wire.events import (
    Acquire,
    AsyncEvent,
    Done,
    Event,
    LifetimeCur,
    Mark,
    NatMapping,
    NetlinkError,
    NlHeader,
    PolicyAdded,
    PolicyDeleted,
    PolicyExpired,
    PolicyFlushed,
    PolicyId,
    PolicyUpdated,
    Replay,
    Report,
    SAAdded,
    SADeleted,
    SADInfo,
    SAExpired,
    SAFlushed,
    SAId,
    SAUpdated,
)
from monitor.wire.sa_values import _MARK, _REPLAY, _V4, _V6, _from_bytes, _new, _replay_esn, format_address

_Handler = Callable[[bytes, NlHeader, int, int], Event]

_NLMSGHDR = X.NLMSGHDR.unpack_from
_NLATTR = X.NLATTR.unpack_from
_BE32 = X.BE32.unpack_from
_U32 = X.U32.unpack_from
_AEVENT_ID = struct.Struct("=16s4sHB1x16sII").unpack_from  # X.AEVENT_ID with the SPI left raw
_LIFETIME_CUR = X.LIFETIME_CUR.unpack_from
_USERSA_ID = X.USERSA_ID.unpack_from



def _new_sa(data: bytes, nl: NlHeader, start: int, end: int) -> Event:
    _need(end - start, 224, "xfrm_usersa_info")
    sa = _sa(data, start, start + 224, end)
    ev: Event = _new(SAUpdated if nl[0] == X.XFRM_MSG_UPDSA else SAAdded, (nl, sa))
    return ev


def _del_sa(data: bytes, nl: NlHeader, start: int, end: int) -> Event:
    """DELSA: ``struct xfrm_usersa_id`` (24), then ``XFRMA_SA`` (the full SA) and the SA's attributes."""
    _need(end - start, 24, "xfrm_usersa_id")
    daddr, spi, family, proto = _USERSA_ID(data, start)
    sa_at = sa_len = src_at = src_len = -1
    p = start + 24
    while p + 4 <= end:  # find the last XFRMA_SA / XFRMA_SRCADDR, checking every nlattr header
        alen, atype = _NLATTR(data, p)
        if alen < 4 or p + alen > end:
            raise MalformedMessage(f"attribute type {atype} has length {alen}, {end - p} bytes left")
        atype &= X.NLA_TYPE_MASK
        if atype == X.XFRMA_SA:
            sa_at, sa_len = p + 4, alen - 4
        elif atype == X.XFRMA_SRCADDR:
            src_at, src_len = p + 4, alen - 4
        p += (alen + 3) & ~3
    sa = None
    if sa_at >= 0:
        _need(sa_len, 224, "XFRMA_SA")
        sa = _sa(data, sa_at, start + 24, end)
    srcaddr = None
    if src_at >= 0:
        _need(src_len, 16, "XFRMA_SRCADDR")
        srcaddr = format_address(data[src_at : src_at + 16], family)
    addrs = _V6 if family == X.AF_INET6 else _V4
    sa_id = _new(SAId, (addrs.get(daddr) or format_address(daddr, family), _from_bytes(spi, "big"), family, proto))
    ev: Event = _new(SADeleted, (nl, sa_id, sa, srcaddr))
    return ev


def _expire(data: bytes, nl: NlHeader, start: int, end: int) -> Event:
    _need(end - start, X.USER_EXPIRE_SIZE, "xfrm_user_expire")
    sa = _sa(data, start, start + X.USER_EXPIRE_SIZE, end)
    ev: Event = _new(SAExpired, (nl, sa, bool(data[start + 224])))
    return ev


# --- policies ----------------------------------------------------------------------------------


def _new_policy(data: bytes, nl: NlHeader, start: int, end: int) -> Event:
    _need(end - start, X.USERPOLICY_INFO_SIZE, "xfrm_userpolicy_info")
    pol = _policy(data, start, _attrs(data, start + X.USERPOLICY_INFO_SIZE, end))
    return PolicyUpdated(nl, pol) if nl.type == X.XFRM_MSG_UPDPOLICY else PolicyAdded(nl, pol)


def _del_policy(data: bytes, nl: NlHeader, start: int, end: int) -> Event:
    _need(end - start, 64, "xfrm_userpolicy_id")
    attrs = _attrs(data, start + 64, end)
    index, pdir = X.USERPOLICY_ID.unpack_from(data, start)
    pol = None
    a = attrs.get(X.XFRMA_POLICY)
    if a is not None:
        _need(a[1], X.USERPOLICY_INFO_SIZE, "XFRMA_POLICY")
        pol = _policy(data, a[0], attrs)
    return PolicyDeleted(nl, PolicyId(_selector(data, start, X.AF_INET), index, pdir), pol)


def _polexpire(data: bytes, nl: NlHeader, start: int, end: int) -> Event:
    _need(end - start, X.USER_POLEXPIRE_SIZE, "xfrm_user_polexpire")
    pol = _policy(data, start, _attrs(data, start + X.USER_POLEXPIRE_SIZE, end))
    return PolicyExpired(nl, pol, bool(data[start + X.USERPOLICY_INFO_SIZE]))


def _flush_policy(data: bytes, nl: NlHeader, start: int, end: int) -> Event:
    return PolicyFlushed(nl, _policy_type(data, _attrs(data, start, end)))


def _flush_sa(data: bytes, nl: NlHeader, start: int, end: int) -> Event:
    _need(end - start, 1, "xfrm_usersa_flush")
    return SAFlushed(nl, data[start])


# --- other messages ----------------------------------------------------------------------------


def _acquire(data: bytes, nl: NlHeader, start: int, end: int) -> Event:
    _need(end - start, X.USER_ACQUIRE_SIZE, "xfrm_user_acquire")
    attrs = _attrs(data, start + X.USER_ACQUIRE_SIZE, end)
    daddr, spi, proto, saddr = X.USER_ACQUIRE.unpack_from(data, start)
    policy = _policy(data, start + 96, {})
    family = policy.sel.family or X.AF_INET
    aalgos, ealgos, calgos, seq = X.USER_ACQUIRE_TAIL.unpack_from(data, start + 264)
    sa_dir = None
    a = attrs.get(X.XFRMA_SA_DIR)
    if a is not None:
        _need(a[1], 1, "sa_dir")
        sa_dir = data[a[0]]
    return Acquire(
        nl,
        format_address(daddr, family),
        _BE32(spi)[0],
        proto,
        format_address(saddr, family),
        _selector(data, start + 40, family),
        policy,
        aalgos,
        ealgos,
        calgos,
        seq,
        _templates(data, attrs),
        _policy_type(data, attrs),
        _mark(data, attrs),
        _u32(data, attrs, X.XFRMA_IF_ID),
        sa_dir,
    )


def _aevent(data: bytes, nl: NlHeader, start: int, end: int) -> Event:
    """NEWAE: ``struct xfrm_aevent_id`` (48) then REPLAY(_ESN)_VAL, LTIME_VAL, [REPLAY_THRESH],
    [ETIMER_THRESH], MARK, IF_ID (``build_aevent()``), read in one pass like the SA attributes."""
    _need(end - start, 48, "xfrm_aevent_id")
    daddr, spi, family, proto, saddr, flags, reqid = _AEVENT_ID(data, start)
    replay = esn = lifetime = rthresh = ethresh = mark = if_id = None
    bad: dict[int, str] | None = None
    p = start + 48
    while p + 4 <= end:
        alen, atype = _NLATTR(data, p)
        if alen < 4 or p + alen > end:
            raise MalformedMessage(f"attribute type {atype} has length {alen}, {end - p} bytes left")
        atype &= X.NLA_TYPE_MASK
        n = alen - 4
        q = p + 4
        p += (alen + 3) & ~3
        if bad is not None:
            bad.pop(atype, None)
        if atype == X.XFRMA_REPLAY_VAL:
            if n >= 12:
                replay = _new(Replay, _REPLAY(data, q))
            else:
                bad = _bad(bad, atype, f"xfrm_replay_state: payload of {n} bytes, need 12")
        elif atype == X.XFRMA_LTIME_VAL:
            if n >= 32:
                lifetime = _new(LifetimeCur, _LIFETIME_CUR(data, q))
            else:
                bad = _bad(bad, atype, f"xfrm_lifetime_cur: payload of {n} bytes, need 32")
        elif atype == X.XFRMA_REPLAY_ESN_VAL:
            esn = _replay_esn(data, q, n) if n >= 24 else None
            if esn is None:
                bad = _bad(bad, atype, f"xfrm_replay_state_esn: {n}-byte payload is too short")
        elif atype == X.XFRMA_MARK:
            if n >= 8:
                mark = _new(Mark, _MARK(data, q))
            else:
                bad = _bad(bad, atype, f"xfrm_mark: payload of {n} bytes, need 8")
        elif atype in (X.XFRMA_IF_ID, X.XFRMA_REPLAY_THRESH, X.XFRMA_ETIMER_THRESH):
            if n < 4:
                bad = _bad(bad, atype, f"u32 attribute: payload of {n} bytes, need 4")
            elif atype == X.XFRMA_IF_ID:
                if_id = _U32(data, q)[0]
            elif atype == X.XFRMA_REPLAY_THRESH:
                rthresh = _U32(data, q)[0]
            else:
                ethresh = _U32(data, q)[0]
    if bad:
        raise MalformedMessage(next(iter(bad.values())))
    addrs = _V6 if family == X.AF_INET6 else _V4
    ev: Event = _new(AsyncEvent, (
        nl, _new(SAId, (addrs.get(daddr) or format_address(daddr, family), _from_bytes(spi, "big"), family, proto)),
        addrs.get(saddr) or format_address(saddr, family), flags, reqid, replay, esn, lifetime, rthresh, ethresh,
        mark, if_id,
    ))
    return ev


def _mapping(data: bytes, nl: NlHeader, start: int, end: int) -> Event:
    _need(end - start, 64, "xfrm_user_mapping")
    daddr, spi, family, proto, reqid, old, new = X.USER_MAPPING.unpack_from(data, start)
    old_port, new_port = X.MAPPING_PORTS.unpack_from(data, start + 60)
    return NatMapping(
        nl,
        SAId(format_address(daddr, family), _BE32(spi)[0], family, proto),
        reqid,
        format_address(old, family),
        format_address(new, family),
        old_port,
        new_port,
    )


def _report(data: bytes, nl: NlHeader, start: int, end: int) -> Event:
    _need(end - start, X.USER_REPORT_SIZE, "xfrm_user_report")
    attrs = _attrs(data, start + X.USER_REPORT_SIZE, end)
    sel = _selector(data, start + 4, X.AF_INET)
    coaddr = None
    a = attrs.get(X.XFRMA_COADDR)
    if a is not None:
        _need(a[1], 16, "XFRMA_COADDR")
        coaddr = format_address(data[a[0] : a[0] + 16], sel.family or X.AF_INET)
    return Report(nl, data[start], sel, coaddr)


def _sadinfo(data: bytes, nl: NlHeader, start: int, end: int) -> Event:
    _need(end - start, 4, "sadinfo flags")
    attrs = _attrs(data, start + 4, end)
    hcount = hmax = None
    a = attrs.get(X.XFRMA_SAD_HINFO)
    if a is not None:
        _need(a[1], 8, "xfrmu_sadhinfo")
        hcount, hmax = X.SADHINFO.unpack_from(data, a[0])
    return SADInfo(nl, _U32(data, start)[0], _u32(data, attrs, X.XFRMA_SAD_CNT), hcount, hmax)


def _error(data: bytes, nl: NlHeader, start: int, end: int) -> Event:
    _need(end - start, 20, "nlmsgerr")
    err = X.I32.unpack_from(data, start)[0]
    _len, rtype, rflags, rseq, rpid = _NLMSGHDR(data, start + 4)
    return NetlinkError(nl, err, NlHeader(rtype, rflags, rseq, rpid))


def _done(data: bytes, nl: NlHeader, start: int, end: int) -> Event:
    return Done(nl)


HANDLERS: dict[int, _Handler] = {
    X.XFRM_MSG_NEWSA: _new_sa,
    X.XFRM_MSG_UPDSA: _new_sa,
    X.XFRM_MSG_DELSA: _del_sa,
    X.XFRM_MSG_EXPIRE: _expire,
    X.XFRM_MSG_ACQUIRE: _acquire,
    X.XFRM_MSG_NEWPOLICY: _new_policy,
    X.XFRM_MSG_UPDPOLICY: _new_policy,
    X.XFRM_MSG_DELPOLICY: _del_policy,
    X.XFRM_MSG_POLEXPIRE: _polexpire,
    X.XFRM_MSG_FLUSHSA: _flush_sa,
    X.XFRM_MSG_FLUSHPOLICY: _flush_policy,
    X.XFRM_MSG_NEWAE: _aevent,
    X.XFRM_MSG_MAPPING: _mapping,
    X.XFRM_MSG_REPORT: _report,
    X.XFRM_MSG_NEWSADINFO: _sadinfo,
    X.NLMSG_ERROR: _error,
    X.NLMSG_DONE: _done,
}
