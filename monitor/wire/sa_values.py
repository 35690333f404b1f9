"""Raw bytes to immutable values for the SA decoder, memoised (pure).

Fleets repeat addresses, selectors, lifetimes and algorithm headers across thousands of SAs, so each is
converted once: the module-level dicts are bounded memo tables (``_CACHE_MAX``) from raw bytes to
immutable values, so a decode never depends on what was decoded before. None of them is ever keyed by
key material: algorithm headers are cut before ``alg_key``. Records are built with
``tuple.__new__(Cls, values)`` (``_new``), which is what a NamedTuple's own ``__new__`` does, minus a
Python-level call (bench/RESULTS.md).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from socket import AF_INET, AF_INET6, inet_ntop  # address text conversion only (pure)
from typing import Any

from monitor.wire import xfrm as X
from monitor.wire.events import (
    Algo,
    Encap,
    LifetimeCfg,
    ReplayEsn,
    Selector,
    Stats,
)

__all__ = ["format_address"]

_NLATTR = X.NLATTR.unpack_from
_U32 = X.U32.unpack_from

# Address strings repeat across thousands of SAs; memoising inet_ntop is a large win.
_V4: dict[bytes, str] = {}
_V6: dict[bytes, str] = {}
_NAMES: dict[bytes, str] = {}
_CACHE_MAX = 65536


def format_address(raw: bytes, family: int) -> str:
    """Render a 16-byte ``xfrm_address_t`` for ``family`` (AF_INET uses the first 4 bytes)."""
    if family == X.AF_INET6:
        s = _V6.get(raw)
        if s is None:
            s = inet_ntop(AF_INET6, raw)
            if len(_V6) < _CACHE_MAX:
                _V6[raw] = s
        return s
    s = _V4.get(raw)
    if s is None:
        s = inet_ntop(AF_INET, raw[:4])
        if len(_V4) < _CACHE_MAX:
            _V4[raw] = s
    return s


def _name(raw: bytes) -> str:
    s = _NAMES.get(raw)
    if s is None:
        s = raw.split(b"\0", 1)[0].decode("latin-1")
        if len(_NAMES) < _CACHE_MAX:
            _NAMES[raw] = s
    return s



def _selector_raw(raw: bytes, family: int) -> Selector:
    """A ``Selector`` from the 56 raw bytes of ``struct xfrm_selector``, memoised when self-describing."""
    daddr, saddr, sfam, plen_d, plen_s, proto, ifindex, user = _SEL_RAW(raw)
    dport, dmask, sport, smask = _SEL_PORTS_RAW(raw)
    fam = sfam or family
    sel: Selector = _new(
        Selector,
        (format_address(daddr, fam), format_address(saddr, fam), dport, dmask, sport, smask, sfam, plen_d,
         plen_s, proto, ifindex, user),
    )
    if sfam and len(_SELECTORS) < _CACHE_MAX:  # with family 0 the rendering depends on the SA's family
        _SELECTORS[raw] = sel
    return sel


def _lifetime_raw(raw: bytes) -> LifetimeCfg:
    lft: LifetimeCfg = _new(LifetimeCfg, _LIFETIME_CFG(raw))
    if len(_LIFETIMES) < _CACHE_MAX:
        _LIFETIMES[raw] = lft
    return lft


def _stats_raw(raw: bytes) -> Stats:
    st: Stats = _new(Stats, _STATS(raw))
    if len(_STATS_SEEN) < _CACHE_MAX:
        _STATS_SEEN[raw] = st
    return st


def _algo_raw(hdr: bytes, with_icv: bool) -> Algo:
    """``Algo`` from an algorithm header: ``char alg_name[64]; unsigned int alg_key_len;`` [+ icv]."""
    if with_icv:
        name, key_bits, icv = X.ALGO_HDR2.unpack(hdr)
        cache = _ALGOS_ICV
    else:
        name, key_bits = X.ALGO_HDR.unpack(hdr)
        icv = 0
        cache = _ALGOS
    algo: Algo = _new(Algo, (_name(name), key_bits, icv))
    if len(cache) < _CACHE_MAX:
        cache[hdr] = algo
    return algo


_ESN_STRUCTS: dict[int, Callable[[bytes, int], tuple[int, ...]]] = {}


def _replay_esn(data: bytes, q: int, n: int) -> ReplayEsn | None:
    """``struct xfrm_replay_state_esn { bmp_len, oseq, seq, oseq_hi, seq_hi, replay_window; __u32 bmp[]; }``
    at ``q`` (payload of ``n`` >= 24 bytes); None if the bitmap overruns the payload."""
    bmp_len = _U32(data, q)[0]
    if n < 24 + 4 * bmp_len:
        return None
    unpack = _ESN_STRUCTS.get(bmp_len)
    if unpack is None:
        unpack = struct.Struct(f"=4x5I{bmp_len}I").unpack_from
        if len(_ESN_STRUCTS) < 64:
            _ESN_STRUCTS[bmp_len] = unpack
    v = unpack(data, q)
    esn: ReplayEsn = _new(ReplayEsn, (v[0], v[1], v[2], v[3], v[4], v[5:]))
    return esn


# struct xfrm_usersa_info (224): sel 0 (56, raw), id{daddr 56, spi 72 (__be32, raw), proto 76},
# saddr 80, lft 96 (64, raw), curlft 160 (4 x u64), stats 192 (12, raw), seq 204, reqid 208,
# family 212, mode 214, replay_window 215, flags 216, pad 217..223
_USERSA_RAW = struct.Struct("=56s16s4sB3x16s64s4Q12sIIHBBB7x").unpack_from
_LIFETIME_CFG = X.LIFETIME_CFG.unpack
_STATS = struct.Struct("=III").unpack
_SEL_RAW = struct.Struct("=16s16s8xHBBB3xiI").unpack
_SEL_PORTS_RAW = struct.Struct(">32xHHHH16x").unpack
_U64 = X.U64.unpack_from
_REPLAY = X.REPLAY.unpack_from
_MARK = X.MARK.unpack_from
_OFFLOAD = X.USER_OFFLOAD.unpack_from
_ENCAP = X.ENCAP_TMPL.unpack
_from_bytes = int.from_bytes
_new: Any = tuple.__new__  # what a NamedTuple's __new__ calls, minus one Python-level frame

_SELECTORS: dict[bytes, Selector] = {}
_LIFETIMES: dict[bytes, LifetimeCfg] = {}
_STATS_SEEN: dict[bytes, Stats] = {}
_ALGOS: dict[bytes, Algo] = {}  # 68-byte xfrm_algo header -> Algo
_ALGOS_ICV: dict[bytes, Algo] = {}  # 72-byte xfrm_algo_aead / xfrm_algo_auth header -> Algo
_ENCAPS: tuple[dict[bytes, Encap], dict[bytes, Encap]] = ({}, {})  # by [family == AF_INET6]


def _encap_raw(raw: bytes, family: int) -> Encap:
    """``Encap`` from the 24 raw bytes of ``struct xfrm_encap_tmpl``, memoised per address family."""
    etype, esport, edport, eoa = _ENCAP(raw)
    encap: Encap = _new(Encap, (etype, _from_bytes(esport, "big"), _from_bytes(edport, "big"),
                                format_address(eoa, family)))
    cache = _ENCAPS[family == X.AF_INET6]
    if len(cache) < _CACHE_MAX:
        cache[raw] = encap
    return encap


_TAIL = ("enc", "auth", "auth_trunc", "aead", "comp", "encap", "replay", "esn", "lastused", "mark", "if_id",
         "sa_dir", "offload", "set_mark", "set_mark_mask", "extra", "tfcpad", "mtimer", "nat_ka", "pcpu")
_NO_ATTRS: tuple[None, ...] = (None,) * len(_TAIL)
_U32_FIELD = {X.XFRMA_IF_ID: "if_id", X.XFRMA_SET_MARK: "set_mark", X.XFRMA_SET_MARK_MASK: "set_mark_mask",
              X.XFRMA_SA_EXTRA_FLAGS: "extra", X.XFRMA_TFCPAD: "tfcpad", X.XFRMA_MTIMER_THRESH: "mtimer",
              X.XFRMA_NAT_KEEPALIVE_INTERVAL: "nat_ka", X.XFRMA_SA_PCPU: "pcpu"}
_ALGO_FIELD = {X.XFRMA_ALG_CRYPT: "enc", X.XFRMA_ALG_AUTH: "auth", X.XFRMA_ALG_COMP: "comp",
               X.XFRMA_ALG_AEAD: "aead", X.XFRMA_ALG_AUTH_TRUNC: "auth_trunc"}



_ALGO_ICV_TYPES = frozenset({X.XFRMA_ALG_AEAD, X.XFRMA_ALG_AUTH_TRUNC})
_ALGO_TYPES = frozenset({X.XFRMA_ALG_CRYPT, X.XFRMA_ALG_AUTH, X.XFRMA_ALG_COMP})
_SA_U32_TYPES = frozenset(
    {X.XFRMA_SET_MARK, X.XFRMA_SET_MARK_MASK, X.XFRMA_SA_EXTRA_FLAGS, X.XFRMA_TFCPAD, X.XFRMA_MTIMER_THRESH,
     X.XFRMA_NAT_KEEPALIVE_INTERVAL, X.XFRMA_SA_PCPU}
)
