"""Pure NETLINK_XFRM decoder: one datagram of bytes in, a list of typed events out.

Theory of operation
-------------------
A datagram holds one or more netlink messages, each ``struct nlmsghdr`` followed by a fixed
struct and then ``struct nlattr`` attributes, all 4-byte aligned (``NLMSG_ALIGN``/``NLA_ALIGN``).
A dump arrives as several datagrams of ``NLM_F_MULTI`` records closed by ``NLMSG_DONE``; each
datagram decodes on its own, so no state is kept between calls.

Message types dispatch through ``_HANDLERS`` (a table, as in aioquic). Unknown types become
``Unknown`` events. Any inconsistency (a length past the end, a short struct, a bad attribute
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
from collections.abc import Callable

from monitor.errors import MalformedMessage
from monitor.wire import xfrm as X
from monitor.wire.decode_sa import (
    _MARK,
    _REPLAY,
    _V4,
    _V6,
    _bad,
    _from_bytes,
    _name,
    _new,
    _replay_esn,
    _sa,
    format_address,
)
from monitor.wire.events import (
    Acquire,
    Algo,
    AsyncEvent,
    Done,
    Event,
    LifetimeCfg,
    LifetimeCur,
    Mark,
    NatMapping,
    NetlinkError,
    NlHeader,
    Policy,
    PolicyAdded,
    PolicyDeleted,
    PolicyExpired,
    PolicyFlushed,
    PolicyId,
    PolicyUpdated,
    Replay,
    ReplayEsn,
    Report,
    SAAdded,
    SADeleted,
    SADInfo,
    SAExpired,
    SAFlushed,
    SAId,
    SAUpdated,
    Selector,
    Template,
    Unknown,
)

__all__ = ["decode_datagram", "format_address", "iter_messages"]

_AttrMap = dict[int, tuple[int, int]]  # attribute type -> (payload offset, payload length)
_Handler = Callable[[bytes, NlHeader, int, int], Event]

_NLMSGHDR = X.NLMSGHDR.unpack_from
_NLATTR = X.NLATTR.unpack_from
_SELECTOR = X.SELECTOR.unpack_from
_SEL_PORTS = X.SEL_PORTS.unpack_from
_BE32 = X.BE32.unpack_from
_U32 = X.U32.unpack_from
_ALGO_HDR = X.ALGO_HDR.unpack_from
_ALGO_HDR2 = X.ALGO_HDR2.unpack_from
_AEVENT_ID = struct.Struct("=16s4sHB1x16sII").unpack_from  # X.AEVENT_ID with the SPI left raw
_LIFETIME_CUR = X.LIFETIME_CUR.unpack_from
_USERSA_ID = X.USERSA_ID.unpack_from


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
                handler = _HANDLERS.get(mtype)
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


# --- attribute walking -------------------------------------------------------------------------


def _attrs(data: bytes, off: int, end: int) -> _AttrMap:
    """Index the ``struct nlattr`` list in ``data[off:end]`` by type (the last one of a type wins)."""
    attrs: _AttrMap = {}
    while off + 4 <= end:
        alen, atype = _NLATTR(data, off)
        if alen < 4 or off + alen > end:
            raise MalformedMessage(f"attribute type {atype} has length {alen}, {end - off} bytes left")
        attrs[atype & X.NLA_TYPE_MASK] = (off + 4, alen - 4)
        off += (alen + 3) & ~3
    return attrs


def _need(length: int, size: int, what: str) -> None:
    if length < size:
        raise MalformedMessage(f"{what}: payload of {length} bytes, need {size}")


def _u32(data: bytes, attrs: _AttrMap, atype: int) -> int | None:
    a = attrs.get(atype)
    if a is None:
        return None
    _need(a[1], 4, "u32 attribute")
    return int(_U32(data, a[0])[0])


def _algo(data: bytes, a: tuple[int, int], with_icv: bool) -> Algo:
    off, length = a
    if with_icv:
        _need(length, 72, "xfrm_algo_auth/aead")
        name, key_bits, icv = _ALGO_HDR2(data, off)
        key_off = 72
    else:
        _need(length, 68, "xfrm_algo")
        name, key_bits = _ALGO_HDR(data, off)
        icv = 0
        key_off = 68
    if key_off + (key_bits + 7) // 8 > length:
        raise MalformedMessage(f"algorithm key of {key_bits} bits overruns its {length}-byte attribute")
    return Algo(_name(name), key_bits, icv)


def _mark(data: bytes, attrs: _AttrMap) -> Mark | None:
    a = attrs.get(X.XFRMA_MARK)
    if a is None:
        return None
    _need(a[1], 8, "xfrm_mark")
    return Mark(*X.MARK.unpack_from(data, a[0]))


def _replay(data: bytes, attrs: _AttrMap) -> tuple[Replay | None, ReplayEsn | None]:
    replay = esn = None
    a = attrs.get(X.XFRMA_REPLAY_VAL)
    if a is not None:
        _need(a[1], 12, "xfrm_replay_state")
        replay = _new(Replay, _REPLAY(data, a[0]))
    a = attrs.get(X.XFRMA_REPLAY_ESN_VAL)
    if a is not None:
        _need(a[1], 24, "xfrm_replay_state_esn")
        esn = _replay_esn(data, a[0], a[1])
        if esn is None:
            need = 24 + 4 * _U32(data, a[0])[0]
            raise MalformedMessage(f"xfrm_replay_state_esn bitmap: {a[1]}-byte payload, need {need}")
    return replay, esn


def _selector(data: bytes, off: int, family: int) -> Selector:
    daddr, saddr, sfam, plen_d, plen_s, proto, ifindex, user = _SELECTOR(data, off)
    dport, dmask, sport, smask = _SEL_PORTS(data, off + 32)
    fam = sfam or family
    return Selector(
        format_address(daddr, fam),
        format_address(saddr, fam),
        dport,
        dmask,
        sport,
        smask,
        sfam,
        plen_d,
        plen_s,
        proto,
        ifindex,
        user,
    )


def _templates(data: bytes, attrs: _AttrMap) -> tuple[Template, ...]:
    a = attrs.get(X.XFRMA_TMPL)
    if a is None:
        return ()
    off, length = a
    if length % 64:
        raise MalformedMessage(f"XFRMA_TMPL of {length} bytes is not a whole number of xfrm_user_tmpl")
    out = []
    for t in range(off, off + length, 64):
        daddr, spi, proto, family, saddr, reqid, mode, share, optional, aalgos, ealgos, calgos = (
            X.USER_TMPL.unpack_from(data, t)
        )
        out.append(
            Template(
                format_address(daddr, family),
                _BE32(spi)[0],
                proto,
                family,
                format_address(saddr, family),
                reqid,
                mode,
                share,
                optional,
                aalgos,
                ealgos,
                calgos,
            )
        )
    return tuple(out)


def _policy_type(data: bytes, attrs: _AttrMap) -> int | None:
    a = attrs.get(X.XFRMA_POLICY_TYPE)
    if a is None:
        return None
    _need(a[1], 6, "xfrm_userpolicy_type")
    return int(X.USERPOLICY_TYPE.unpack_from(data, a[0])[0])


def _new_sa(data: bytes, nl: NlHeader, start: int, end: int) -> Event:
    _need(end - start, 224, "xfrm_usersa_info")
    sa = _sa(data, start, start + 224, end)
    ev: Event = _new(SAUpdated if nl[0] == X.XFRM_MSG_UPDSA else SAAdded, (nl, sa))
    return ev


def _sa_id(data: bytes, off: int) -> SAId:
    daddr, spi, family, proto = X.USERSA_ID.unpack_from(data, off)
    return SAId(format_address(daddr, family), _BE32(spi)[0], family, proto)


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


def _policy(data: bytes, off: int, attrs: _AttrMap) -> Policy:
    l0, l1, l2, l3, l4, l5, l6, l7, cb, cp, ca, cu, prio, index, pdir, action, flags, share = (
        X.USERPOLICY_INFO.unpack_from(data, off)
    )
    return Policy(
        _selector(data, off, X.AF_INET),
        LifetimeCfg(l0, l1, l2, l3, l4, l5, l6, l7),
        LifetimeCur(cb, cp, ca, cu),
        prio,
        index,
        pdir,
        action,
        flags,
        share,
        _templates(data, attrs),
        _policy_type(data, attrs),
        _mark(data, attrs),
        _u32(data, attrs, X.XFRMA_IF_ID),
    )


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


_HANDLERS: dict[int, _Handler] = {
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
