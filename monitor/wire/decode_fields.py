"""The attribute walk and the field readers shared by the decoder's message handlers (pure).

``struct nlattr`` lists are indexed once per message (``_attrs``: type -> (payload offset, length), the
last one of a type wins, as the kernel's ``nla_parse`` does); each reader checks its payload length
against the kernel struct it unpacks and raises ``MalformedMessage`` when short. Key bytes inside
``XFRMA_ALG_*`` attributes are never read: only the algorithm name and the key length.
"""

from __future__ import annotations

from monitor.errors import MalformedMessage
from monitor.wire import xfrm as X
from monitor.wire.events import (
    Algo,
    LifetimeCfg,
    LifetimeCur,
    Mark,
    Policy,
    Replay,
    ReplayEsn,
    SAId,
    Selector,
    Template,
)
from monitor.wire.sa_values import _REPLAY, _name, _new, _replay_esn, format_address

_AttrMap = dict[int, tuple[int, int]]  # attribute type -> (payload offset, payload length)

_NLATTR = X.NLATTR.unpack_from
_SELECTOR = X.SELECTOR.unpack_from
_SEL_PORTS = X.SEL_PORTS.unpack_from
_BE32 = X.BE32.unpack_from
_U32 = X.U32.unpack_from
_ALGO_HDR = X.ALGO_HDR.unpack_from
_ALGO_HDR2 = X.ALGO_HDR2.unpack_from



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


def _sa_id(data: bytes, off: int) -> SAId:
    daddr, spi, family, proto = X.USERSA_ID.unpack_from(data, off)
    return SAId(format_address(daddr, family), _BE32(spi)[0], family, proto)


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


