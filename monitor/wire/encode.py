"""Pure NETLINK_XFRM encoder: typed events in, byte-exact kernel layouts out.

The inverse of ``monitor.wire.decode``: ``decode_datagram(encode(ev)) == [ev]`` for every event the
decoder produces. Attribute order follows the kernel's ``copy_to_user_state_extra()``
(``net/xfrm/xfrm_user.c``) so that synthetic dumps look like real ones, byte for byte in size.

Events carry no key bytes, so algorithm keys are zero-filled to the stated key length unless the
caller passes real ones in ``keys`` (used by tests that prove keys never leak).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import singledispatch
from socket import AF_INET, AF_INET6, inet_pton  # address text conversion only (pure)

from monitor.wire import xfrm as X
from monitor.wire.events import (
    SA,
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

__all__ = ["KeyMap", "encode", "encode_allocspi", "encode_datagram", "encode_dump_request", "encode_sa", "pack_address"]

KeyMap = Mapping[int, bytes]  # XFRMA_ALG_* attribute type -> key bytes


def pack_address(addr: str, family: int) -> bytes:
    """Pack an address string into a 16-byte ``xfrm_address_t``."""
    if family == X.AF_INET6:
        return inet_pton(AF_INET6, addr)
    return inet_pton(AF_INET, addr) + bytes(12)


def _attr(atype: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return X.NLATTR.pack(n, atype) + payload + bytes((-n) % 4)


def _msg(nl: NlHeader, body: bytes) -> bytes:
    n = 16 + len(body)
    return X.NLMSGHDR.pack(n, nl.type, nl.flags, nl.seq, nl.pid) + body + bytes((-n) % 4)


def _selector(sel: Selector) -> bytes:
    fam = sel.family or (X.AF_INET6 if ":" in sel.daddr else X.AF_INET)
    return (
        pack_address(sel.daddr, fam)
        + pack_address(sel.saddr, fam)
        + X.SEL_PORTS.pack(sel.dport, sel.dport_mask, sel.sport, sel.sport_mask)
        + X.SELECTOR.pack(b"", b"", sel.family, sel.prefixlen_d, sel.prefixlen_s, sel.proto, sel.ifindex,
                          sel.user)[40:]
    )


def _usersa_info(sa: SA) -> bytes:
    body = X.USERSA_INFO.pack(
        pack_address(sa.daddr, sa.family),
        sa.proto,
        pack_address(sa.saddr, sa.family),
        *sa.lft,
        *sa.cur,
        *sa.stats,
        sa.seq,
        sa.reqid,
        sa.family,
        sa.mode,
        sa.replay_window,
        sa.flags,
    )
    spi = X.BE32.pack(sa.spi)
    return _selector(sa.sel) + body[56:72] + spi + body[76:]


def _algo(atype: int, algo: Algo, keys: KeyMap | None) -> bytes:
    key_len = (algo.key_bits + 7) // 8
    key = (keys or {}).get(atype, bytes(key_len))
    if len(key) != key_len:
        raise ValueError(f"key for attribute {atype} must be {key_len} bytes, got {len(key)}")
    name = algo.name.encode("latin-1")
    if atype in (X.XFRMA_ALG_AEAD, X.XFRMA_ALG_AUTH_TRUNC):
        return _attr(atype, X.ALGO_HDR2.pack(name, algo.key_bits, algo.icv_bits) + key)
    return _attr(atype, X.ALGO_HDR.pack(name, algo.key_bits) + key)


def _u32(atype: int, value: int | None) -> bytes:
    return b"" if value is None else _attr(atype, X.U32.pack(value))


def _replay_attrs(replay: Replay | None, esn: ReplayEsn | None) -> bytes:
    out = b""
    if esn is not None:
        out += _attr(X.XFRMA_REPLAY_ESN_VAL,
                     X.REPLAY_ESN.pack(len(esn.bmp), esn.oseq, esn.seq, esn.oseq_hi, esn.seq_hi, esn.replay_window)
                     + b"".join(X.U32.pack(w) for w in esn.bmp))
    if replay is not None:
        out += _attr(X.XFRMA_REPLAY_VAL, X.REPLAY.pack(*replay))
    return out


def encode_sa_attrs(sa: SA, keys: KeyMap | None = None) -> bytes:
    """The attributes the kernel appends after an SA, in ``copy_to_user_state_extra()`` order."""
    out = _u32(X.XFRMA_SA_EXTRA_FLAGS, sa.extra_flags)
    if sa.lastused is not None:
        out += _attr(X.XFRMA_LASTUSED, X.U64.pack(sa.lastused))
    if sa.aead is not None:
        out += _algo(X.XFRMA_ALG_AEAD, sa.aead, keys)
    if sa.auth is not None:
        out += _algo(X.XFRMA_ALG_AUTH, sa.auth, keys)
    if sa.auth_trunc is not None:
        out += _algo(X.XFRMA_ALG_AUTH_TRUNC, sa.auth_trunc, keys)
    if sa.enc is not None:
        out += _algo(X.XFRMA_ALG_CRYPT, sa.enc, keys)
    if sa.comp is not None:
        out += _algo(X.XFRMA_ALG_COMP, sa.comp, keys)
    if sa.encap is not None:
        e = sa.encap
        out += _attr(X.XFRMA_ENCAP, X.ENCAP_TMPL.pack(e.type, X.BE16.pack(e.sport), X.BE16.pack(e.dport),
                                                      pack_address(e.oa, sa.family)))
    out += _u32(X.XFRMA_TFCPAD, sa.tfcpad)
    if sa.mark is not None:
        out += _attr(X.XFRMA_MARK, X.MARK.pack(*sa.mark))
    out += _u32(X.XFRMA_SET_MARK, sa.set_mark) + _u32(X.XFRMA_SET_MARK_MASK, sa.set_mark_mask)
    out += _replay_attrs(sa.replay, sa.replay_esn)
    if sa.offload is not None:
        out += _attr(X.XFRMA_OFFLOAD_DEV, X.USER_OFFLOAD.pack(*sa.offload))
    out += _u32(X.XFRMA_IF_ID, sa.if_id) + _u32(X.XFRMA_MTIMER_THRESH, sa.mtimer_thresh)
    out += _u32(X.XFRMA_SA_PCPU, sa.pcpu)
    if sa.sa_dir is not None:
        out += _attr(X.XFRMA_SA_DIR, bytes([sa.sa_dir]))
    return out + _u32(X.XFRMA_NAT_KEEPALIVE_INTERVAL, sa.nat_keepalive_interval)


def encode_sa(nl: NlHeader, sa: SA, keys: KeyMap | None = None) -> bytes:
    """A NEWSA/UPDSA message (``nl.type`` decides which)."""
    return _msg(nl, _usersa_info(sa) + encode_sa_attrs(sa, keys))


def _template(t: Template) -> bytes:
    return X.USER_TMPL.pack(pack_address(t.daddr, t.family), X.BE32.pack(t.spi), t.proto, t.family,
                            pack_address(t.saddr, t.family), t.reqid, t.mode, t.share, t.optional,
                            t.aalgos, t.ealgos, t.calgos)


def _userpolicy_info(p: Policy) -> bytes:
    tail = X.USERPOLICY_INFO.pack(*p.lft, *p.cur, p.priority, p.index, p.dir, p.action, p.flags, p.share)
    return _selector(p.sel) + tail[56:]


def _policy_attrs(templates: tuple[Template, ...], policy_type: int | None, mark: Mark | None,
                  if_id: int | None) -> bytes:
    # dump_one_policy(): copy_to_user_tmpl, sec_ctx, policy_type, mark, if_id
    out = _attr(X.XFRMA_TMPL, b"".join(_template(t) for t in templates)) if templates else b""
    if policy_type is not None:
        out += _attr(X.XFRMA_POLICY_TYPE, X.USERPOLICY_TYPE.pack(policy_type, 0, 0))
    if mark is not None:
        out += _attr(X.XFRMA_MARK, X.MARK.pack(*mark))
    return out + _u32(X.XFRMA_IF_ID, if_id)


def _sa_id(i: SAId) -> bytes:
    return X.USERSA_ID.pack(pack_address(i.daddr, i.family), X.BE32.pack(i.spi), i.family, i.proto)


def _policy_id(i: PolicyId) -> bytes:
    return _selector(i.sel) + X.USERPOLICY_ID.pack(i.index, i.dir)[56:]


@singledispatch
def _encode(ev: object, keys: KeyMap | None) -> bytes:
    raise TypeError(f"cannot encode {type(ev).__name__}")


@_encode.register
def _(ev: SAAdded, keys: KeyMap | None) -> bytes:
    return encode_sa(ev.nl, ev.sa, keys)


@_encode.register
def _(ev: SAUpdated, keys: KeyMap | None) -> bytes:
    return encode_sa(ev.nl, ev.sa, keys)


@_encode.register
def _(ev: SADeleted, keys: KeyMap | None) -> bytes:
    body = _sa_id(ev.id)
    if ev.saddr is not None:
        body += _attr(X.XFRMA_SRCADDR, pack_address(ev.saddr, ev.id.family))
    if ev.sa is not None:
        # xfrm_notify_sa(): XFRMA_SA first, then the same extras as NEWSA
        body += _attr(X.XFRMA_SA, _usersa_info(ev.sa)) + encode_sa_attrs(ev.sa, keys)
    return _msg(ev.nl, body)


@_encode.register
def _(ev: SAExpired, keys: KeyMap | None) -> bytes:
    sa = ev.sa
    # build_expire(): usersa_info + hard, then MARK, SET_MARK, IF_ID, SA_PCPU, SA_DIR
    body = _usersa_info(sa) + bytes([1 if ev.hard else 0]) + bytes(7)
    body += _replay_attrs(sa.replay, sa.replay_esn)
    if sa.mark is not None:
        body += _attr(X.XFRMA_MARK, X.MARK.pack(*sa.mark))
    body += _u32(X.XFRMA_SET_MARK, sa.set_mark) + _u32(X.XFRMA_SET_MARK_MASK, sa.set_mark_mask)
    body += _u32(X.XFRMA_IF_ID, sa.if_id) + _u32(X.XFRMA_SA_PCPU, sa.pcpu)
    if sa.sa_dir is not None:
        body += _attr(X.XFRMA_SA_DIR, bytes([sa.sa_dir]))
    for atype, algo in ((X.XFRMA_ALG_AEAD, sa.aead), (X.XFRMA_ALG_AUTH, sa.auth),
                        (X.XFRMA_ALG_AUTH_TRUNC, sa.auth_trunc), (X.XFRMA_ALG_CRYPT, sa.enc),
                        (X.XFRMA_ALG_COMP, sa.comp)):
        if algo is not None:  # the kernel sends none; kept so that any SA round-trips
            body += _algo(atype, algo, keys)
    if sa.lastused is not None:
        body += _attr(X.XFRMA_LASTUSED, X.U64.pack(sa.lastused))
    if sa.encap is not None:
        e = sa.encap
        body += _attr(X.XFRMA_ENCAP, X.ENCAP_TMPL.pack(e.type, X.BE16.pack(e.sport), X.BE16.pack(e.dport),
                                                       pack_address(e.oa, sa.family)))
    if sa.offload is not None:
        body += _attr(X.XFRMA_OFFLOAD_DEV, X.USER_OFFLOAD.pack(*sa.offload))
    body += _u32(X.XFRMA_SA_EXTRA_FLAGS, sa.extra_flags) + _u32(X.XFRMA_TFCPAD, sa.tfcpad)
    body += _u32(X.XFRMA_MTIMER_THRESH, sa.mtimer_thresh)
    return _msg(ev.nl, body + _u32(X.XFRMA_NAT_KEEPALIVE_INTERVAL, sa.nat_keepalive_interval))


@_encode.register
def _(ev: Acquire, keys: KeyMap | None) -> bytes:
    fam = ev.policy.sel.family or X.AF_INET  # as the decoder: id and saddr use the policy family
    body = (
        pack_address(ev.daddr, fam) + X.BE32.pack(ev.spi) + bytes([ev.proto]) + bytes(3)
        + pack_address(ev.saddr, fam) + _selector(ev.sel) + _userpolicy_info(ev.policy)
        + X.USER_ACQUIRE_TAIL.pack(ev.aalgos, ev.ealgos, ev.calgos, ev.seq)
    )
    body += _policy_attrs(ev.templates, ev.policy_type, ev.mark, ev.if_id)
    if ev.sa_dir is not None:
        body += _attr(X.XFRMA_SA_DIR, bytes([ev.sa_dir]))
    return _msg(ev.nl, body)


def _policy_msg(nl: NlHeader, p: Policy) -> bytes:
    return _msg(nl, _userpolicy_info(p) + _policy_attrs(p.templates, p.policy_type, p.mark, p.if_id))


@_encode.register
def _(ev: PolicyAdded, keys: KeyMap | None) -> bytes:
    return _policy_msg(ev.nl, ev.policy)


@_encode.register
def _(ev: PolicyUpdated, keys: KeyMap | None) -> bytes:
    return _policy_msg(ev.nl, ev.policy)


@_encode.register
def _(ev: PolicyDeleted, keys: KeyMap | None) -> bytes:
    body = _policy_id(ev.id)
    if ev.policy is not None:
        p = ev.policy
        body += _attr(X.XFRMA_POLICY, _userpolicy_info(p))
        body += _policy_attrs(p.templates, p.policy_type, p.mark, p.if_id)
    return _msg(ev.nl, body)


@_encode.register
def _(ev: PolicyExpired, keys: KeyMap | None) -> bytes:
    p = ev.policy
    body = _userpolicy_info(p) + bytes([1 if ev.hard else 0]) + bytes(7)
    return _msg(ev.nl, body + _policy_attrs(p.templates, p.policy_type, p.mark, p.if_id))


@_encode.register
def _(ev: SAFlushed, keys: KeyMap | None) -> bytes:
    return _msg(ev.nl, bytes([ev.proto]))


@_encode.register
def _(ev: PolicyFlushed, keys: KeyMap | None) -> bytes:
    body = b""
    if ev.policy_type is not None:
        body = _attr(X.XFRMA_POLICY_TYPE, X.USERPOLICY_TYPE.pack(ev.policy_type, 0, 0))
    return _msg(ev.nl, body)


@_encode.register
def _(ev: AsyncEvent, keys: KeyMap | None) -> bytes:
    i = ev.id
    body = X.AEVENT_ID.pack(pack_address(i.daddr, i.family), X.BE32.pack(i.spi), i.family, i.proto,
                            pack_address(ev.saddr, i.family), ev.flags, ev.reqid)
    # build_aevent(): REPLAY(_ESN)_VAL, LTIME_VAL, [REPLAY_THRESH], [ETIMER_THRESH], MARK, IF_ID
    body += _replay_attrs(ev.replay, ev.replay_esn)
    if ev.lifetime is not None:
        body += _attr(X.XFRMA_LTIME_VAL, X.LIFETIME_CUR.pack(*ev.lifetime))
    body += _u32(X.XFRMA_REPLAY_THRESH, ev.replay_thresh) + _u32(X.XFRMA_ETIMER_THRESH, ev.etimer_thresh)
    if ev.mark is not None:
        body += _attr(X.XFRMA_MARK, X.MARK.pack(*ev.mark))
    return _msg(ev.nl, body + _u32(X.XFRMA_IF_ID, ev.if_id))


@_encode.register
def _(ev: NatMapping, keys: KeyMap | None) -> bytes:
    i = ev.id
    body = X.USER_MAPPING.pack(pack_address(i.daddr, i.family), X.BE32.pack(i.spi), i.family, i.proto,
                               ev.reqid, pack_address(ev.old_saddr, i.family),
                               pack_address(ev.new_saddr, i.family))
    return _msg(ev.nl, body + X.MAPPING_PORTS.pack(ev.old_sport, ev.new_sport))


@_encode.register
def _(ev: Report, keys: KeyMap | None) -> bytes:
    body = bytes([ev.proto]) + bytes(3) + _selector(ev.sel)
    if ev.coaddr is not None:
        body += _attr(X.XFRMA_COADDR, pack_address(ev.coaddr, ev.sel.family or X.AF_INET))
    return _msg(ev.nl, body)


@_encode.register
def _(ev: SADInfo, keys: KeyMap | None) -> bytes:
    body = X.U32.pack(ev.flags) + _u32(X.XFRMA_SAD_CNT, ev.count)
    if ev.hash_count is not None or ev.hash_max is not None:
        body += _attr(X.XFRMA_SAD_HINFO, X.SADHINFO.pack(ev.hash_count or 0, ev.hash_max or 0))
    return _msg(ev.nl, body)


@_encode.register
def _(ev: NetlinkError, keys: KeyMap | None) -> bytes:
    r = ev.request
    return _msg(ev.nl, X.I32.pack(ev.error) + X.NLMSGHDR.pack(16, r.type, r.flags, r.seq, r.pid))


@_encode.register
def _(ev: Done, keys: KeyMap | None) -> bytes:
    return _msg(ev.nl, X.I32.pack(0))


@_encode.register
def _(ev: Unknown, keys: KeyMap | None) -> bytes:
    return _msg(ev.nl, ev.payload)


def encode(ev: Event, keys: KeyMap | None = None) -> bytes:
    """Encode one event as one netlink message (4-byte aligned).

    Args:
        ev: any event ``decode_datagram`` can return.
        keys: optional real key bytes per ``XFRMA_ALG_*`` type; zeros of the right length otherwise.
    """
    return _encode(ev, keys)


def encode_datagram(events: Iterable[Event], keys: KeyMap | None = None) -> bytes:
    """Concatenate several messages into one datagram, as a dump ``recv`` returns them."""
    return b"".join(_encode(ev, keys) for ev in events)


def encode_dump_request(msg_type: int, seq: int, proto: int | None = None) -> bytes:
    """A GETSA/GETPOLICY dump request: ``nlmsghdr`` then optional attributes, no struct."""
    body = b"" if proto is None else _attr(X.XFRMA_PROTO, bytes([proto]))
    return _msg(NlHeader(msg_type, X.NLM_F_REQUEST | X.NLM_F_DUMP, seq, 0), body)


def encode_allocspi(nl: NlHeader, sa: SA, spi_min: int, spi_max: int) -> bytes:
    """An ALLOCSPI request (the kernel replies with the new larval SA as a unicast NEWSA).

    ``struct xfrm_userspi_info { struct xfrm_usersa_info info; __u32 min; __u32 max; }`` (232 bytes);
    ``sa.spi`` is ignored, ``min == max`` asks for exactly that SPI.
    """
    return _msg(nl, _usersa_info(sa) + X.U32.pack(spi_min) + X.U32.pack(spi_max))


def default_lifetime() -> tuple[LifetimeCfg, LifetimeCur]:
    """Unlimited lifetimes and zero counters, as a freshly allocated SA has."""
    return LifetimeCfg(), LifetimeCur()
