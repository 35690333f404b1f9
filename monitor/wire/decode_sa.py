"""The SA hot path of the decoder: ``struct xfrm_usersa_info`` plus its attributes to ``SA``.

Split from ``monitor.wire.decode`` because it is where the time goes: every dump record and every SA
notification comes through ``_sa``. Values come from the memo tables of ``monitor.wire.sa_values``;
a block whose attribute layout was seen before is read by the reader that ``monitor.wire.sa_layout``
compiled for it, and any other block is walked here (``_sa_attrs``), which also compiles its layout.
"""

from __future__ import annotations

from typing import Any

from monitor.errors import MalformedMessage
from monitor.wire import sa_layout
from monitor.wire import xfrm as X
from monitor.wire.events import (
    SA,
    LifetimeCur,
    Mark,
    Offload,
    Replay,
)
from monitor.wire.sa_values import (
    _ALGO_ICV_TYPES,
    _ALGO_TYPES,
    _ALGOS,
    _ALGOS_ICV,
    _ENCAPS,
    _LIFETIMES,
    _MARK,
    _NLATTR,
    _NO_ATTRS,
    _OFFLOAD,
    _REPLAY,
    _SA_U32_TYPES,
    _SELECTORS,
    _STATS_SEEN,
    _U32,
    _U64,
    _USERSA_RAW,
    _V4,
    _V6,
    _algo_raw,
    _encap_raw,
    _from_bytes,
    _lifetime_raw,
    _new,
    _replay_esn,
    _selector_raw,
    _stats_raw,
    format_address,
)

# --- SAs: the hot path ---------------------------------------------------------------------------
#
# Profile of the first version (cProfile, NEWSA dump of AES-GCM SAs): 10 NamedTuple constructions
# through their Python-level ``__new__`` per SA, an attribute dict built and then probed 15 times,
# two unpacks plus two address lookups per selector. What follows instead (see bench/RESULTS.md):
#
# * one ``unpack_from`` of ``struct xfrm_usersa_info`` that leaves the selector, lifetime config and
#   stats as raw ``bytes``; identical raw slices map to one shared immutable object (fleets repeat
#   selectors and lifetimes), so most SAs build none of them;
# * records built with ``tuple.__new__(Cls, values)``, which is exactly what a NamedTuple's own
#   ``__new__`` does, minus a Python-level call;
# * attributes decoded in a single walk; a malformed attribute is remembered and raised after the
#   walk unless a later attribute of the same type replaces it (the last one of a type wins, as the
#   kernel's ``nla_parse`` does and as the first version's attribute dict did);
# * algorithm headers (name + key length [+ ICV], never the key that follows) memoised to ``Algo``.

def _bad(pending: dict[int, str] | None, atype: int, what: str) -> dict[int, str]:
    """Remember a malformed attribute; raised after the walk unless a later one of its type replaces it."""
    if pending is None:
        pending = {}
    pending[atype] = what
    return pending


def _sa(data: bytes, off: int, astart: int, aend: int) -> SA:
    """Build an ``SA`` from ``struct xfrm_usersa_info`` at ``off`` and the attributes in ``[astart, aend)``.

    ``data`` must be ``bytes`` (``decode_datagram`` guarantees it). Attributes other than the SA's
    (``XFRMA_SA``, ``XFRMA_SRCADDR`` in a DELSA) are skipped.
    """
    (sel_raw, daddr_raw, spi_raw, proto, saddr_raw, lft_raw, c_bytes, c_packets, c_add, c_use, stats_raw, seq,
     reqid, family, mode, replay_window, flags) = _USERSA_RAW(data, off)
    sel = _SELECTORS.get(sel_raw)
    if sel is None:
        sel = _selector_raw(sel_raw, family)
    addrs = _V6 if family == X.AF_INET6 else _V4
    head = (
        sel, addrs.get(daddr_raw) or format_address(daddr_raw, family), _from_bytes(spi_raw, "big"), proto,
        addrs.get(saddr_raw) or format_address(saddr_raw, family), _LIFETIMES.get(lft_raw) or _lifetime_raw(lft_raw),
        _new(LifetimeCur, (c_bytes, c_packets, c_add, c_use)), _STATS_SEEN.get(stats_raw) or _stats_raw(stats_raw),
        seq, reqid, family, mode, replay_window, flags,
    )
    size = aend - astart
    if size < 4:
        sa: SA = _new(SA, head + _NO_ATTRS)
        return sa
    layouts = sa_layout.LAYOUTS.get(size)
    if layouts is not None:
        for sig, expected, build in layouts:
            if sig(data, astart) == expected:
                tail = build(data, astart, family)
                if tail is not None:
                    sa = _new(SA, head + tail)
                    return sa  # noqa: RET504 - annotated above: _new is untyped
                break
    sa = _new(SA, head + _sa_attrs(data, astart, aend, family))
    return sa  # noqa: RET504 - annotated above: _new is untyped


def _sa_attrs(data: bytes, astart: int, aend: int, family: int) -> tuple[Any, ...]:
    """Walk the SA's attributes: the 20 optional ``SA`` fields from ``enc`` to ``pcpu``, in order.

    Also compiles the block's layout (see ``monitor.wire.sa_layout``) when every attribute is valid, so
    that the next block of the same shape takes the fast path.
    """
    enc = auth = auth_trunc = aead = comp = encap = replay = esn = None
    lastused = mark = if_id = sa_dir = offload = set_mark = set_mark_mask = extra = None
    tfcpad = mtimer = nat_ka = pcpu = None
    bad: dict[int, str] | None = None
    shape: list[tuple[int, int]] | None = [] if sa_layout.layouts_count[0] < sa_layout.LAYOUTS_MAX else None
    p = astart
    while p + 4 <= aend:
        alen, atype = _NLATTR(data, p)
        if alen < 4 or p + alen > aend:
            raise MalformedMessage(f"attribute type {atype} has length {alen}, {aend - p} bytes left")
        if shape is not None:
            shape.append((alen, atype))
        atype &= 0x3FFF  # NLA_TYPE_MASK: drop NLA_F_NESTED / NLA_F_NET_BYTEORDER
        n = alen - 4
        q = p + 4
        p += (alen + 3) & ~3
        if bad is not None:
            bad.pop(atype, None)
        if atype == 10:  # XFRMA_REPLAY_VAL: struct xfrm_replay_state { __u32 oseq, seq, bitmap; }
            if n >= 12:
                replay = _new(Replay, _REPLAY(data, q))
            else:
                bad = _bad(bad, atype, f"xfrm_replay_state: payload of {n} bytes, need 12")
        elif atype == 15:  # XFRMA_LASTUSED: __u64 seconds
            if n >= 8:
                lastused = _U64(data, q)[0]
            else:
                bad = _bad(bad, atype, f"lastused: payload of {n} bytes, need 8")
        elif atype in _ALGO_ICV_TYPES:  # XFRMA_ALG_AEAD / XFRMA_ALG_AUTH_TRUNC: name[64], key_len, icv_len, key[]
            if n < 72:
                bad = _bad(bad, atype, f"xfrm_algo_auth/aead: payload of {n} bytes, need 72")
                continue
            hdr = data[q : q + 72]
            algo = _ALGOS_ICV.get(hdr) or _algo_raw(hdr, True)
            if 72 + ((algo.key_bits + 7) >> 3) > n:
                bad = _bad(bad, atype, f"algorithm key of {algo.key_bits} bits overruns its {n}-byte attribute")
            elif atype == 18:
                aead = algo
            else:
                auth_trunc = algo
        elif atype in _ALGO_TYPES:  # XFRMA_ALG_CRYPT / AUTH / COMP: struct xfrm_algo { name[64], key_len, key[] }
            if n < 68:
                bad = _bad(bad, atype, f"xfrm_algo: payload of {n} bytes, need 68")
                continue
            hdr = data[q : q + 68]
            algo = _ALGOS.get(hdr) or _algo_raw(hdr, False)
            if 68 + ((algo.key_bits + 7) >> 3) > n:
                bad = _bad(bad, atype, f"algorithm key of {algo.key_bits} bits overruns its {n}-byte attribute")
            elif atype == 2:
                enc = algo
            elif atype == 1:
                auth = algo
            else:
                comp = algo
        elif atype == 23:  # XFRMA_REPLAY_ESN_VAL
            if n < 24:
                bad = _bad(bad, atype, f"xfrm_replay_state_esn: payload of {n} bytes, need 24")
                continue
            esn = _replay_esn(data, q, n)
            if esn is None:
                need = 24 + 4 * _U32(data, q)[0]
                bad = _bad(bad, atype, f"xfrm_replay_state_esn bitmap: {n}-byte payload, need {need}")
        elif atype == 4:  # XFRMA_ENCAP: struct xfrm_encap_tmpl (24)
            if n < 24:
                bad = _bad(bad, atype, f"xfrm_encap_tmpl: payload of {n} bytes, need 24")
                continue
            raw = data[q : q + 24]
            encap = _ENCAPS[family == X.AF_INET6].get(raw) or _encap_raw(raw, family)
        elif atype == 31:  # XFRMA_IF_ID: __u32
            if n >= 4:
                if_id = _U32(data, q)[0]
            else:
                bad = _bad(bad, atype, f"u32 attribute: payload of {n} bytes, need 4")
        elif atype == 33:  # XFRMA_SA_DIR: __u8
            if n >= 1:
                sa_dir = data[q]
            else:
                bad = _bad(bad, atype, "sa_dir: payload of 0 bytes, need 1")
        elif atype == 21:  # XFRMA_MARK: struct xfrm_mark { __u32 v, m; }
            if n >= 8:
                mark = _new(Mark, _MARK(data, q))
            else:
                bad = _bad(bad, atype, f"xfrm_mark: payload of {n} bytes, need 8")
        elif atype == 28:  # XFRMA_OFFLOAD_DEV: struct xfrm_user_offload { int ifindex; __u8 flags; }
            if n >= 8:
                offload = _new(Offload, _OFFLOAD(data, q))
            else:
                bad = _bad(bad, atype, f"xfrm_user_offload: payload of {n} bytes, need 8")
        elif atype in _SA_U32_TYPES:  # rarer __u32 attributes
            if n < 4:
                bad = _bad(bad, atype, f"u32 attribute: payload of {n} bytes, need 4")
                continue
            v = _U32(data, q)[0]
            if atype == 29:
                set_mark = v
            elif atype == 30:
                set_mark_mask = v
            elif atype == 24:
                extra = v
            elif atype == 22:
                tfcpad = v
            elif atype == 32:
                mtimer = v
            elif atype == 34:
                nat_ka = v
            else:
                pcpu = v
    if bad:
        raise MalformedMessage(next(iter(bad.values())))
    if shape:
        sa_layout.compile_layout(aend - astart, shape, esn)
    return (enc, auth, auth_trunc, aead, comp, encap, replay, esn, lastused, mark, if_id, sa_dir, offload,
            set_mark, set_mark_mask, extra, tfcpad, mtimer, nat_ka, pcpu)
