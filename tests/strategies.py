"""Hypothesis strategies for every XFRM event type (reusable by any test module).

Every strategy here produces events that the encoder can write and the decoder reads back
*exactly*: addresses are generated as the canonical strings ``inet_ntop`` prints, IPv4 and IPv6
are both covered, and fields that the wire cannot express (for example an ``Acquire``'s embedded
policy carries no attributes) are left at the decoder's defaults.

Usage::

    from tests.strategies import events, sa_events, sas
    @given(events())
    def test_x(ev): ...

``sas_with_keys()`` gives an SA together with a ``{XFRMA_ALG_*: key bytes}`` map of random keys
of the right lengths, for the key-scrubbing tests.
"""

from __future__ import annotations

import socket
from typing import Any, TypeVar

from hypothesis import strategies as st

from monitor.wire import xfrm as X
from monitor.wire.events import (
    SA,
    Acquire,
    Algo,
    AsyncEvent,
    Done,
    Encap,
    Event,
    LifetimeCfg,
    LifetimeCur,
    Mark,
    NatMapping,
    NetlinkError,
    NlHeader,
    Offload,
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
    Stats,
    Template,
    Unknown,
)

__all__ = [
    "KNOWN_TYPES",
    "acquires",
    "addresses",
    "algos",
    "async_events",
    "events",
    "families",
    "nl_headers",
    "policies",
    "sa_events",
    "sas",
    "sas_with_keys",
    "selectors",
    "templates",
]

T = TypeVar("T")

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, 0xFFFFFFFFFFFFFFFF)
i32 = st.integers(-(2**31), 2**31 - 1)

families = st.sampled_from([X.AF_INET, X.AF_INET6])

#: message types the decoder dispatches on; anything else must come back as ``Unknown``
KNOWN_TYPES = frozenset(
    {
        X.NLMSG_ERROR,
        X.NLMSG_DONE,
        X.XFRM_MSG_NEWSA,
        X.XFRM_MSG_UPDSA,
        X.XFRM_MSG_DELSA,
        X.XFRM_MSG_EXPIRE,
        X.XFRM_MSG_ACQUIRE,
        X.XFRM_MSG_NEWPOLICY,
        X.XFRM_MSG_UPDPOLICY,
        X.XFRM_MSG_DELPOLICY,
        X.XFRM_MSG_POLEXPIRE,
        X.XFRM_MSG_FLUSHSA,
        X.XFRM_MSG_FLUSHPOLICY,
        X.XFRM_MSG_NEWAE,
        X.XFRM_MSG_MAPPING,
        X.XFRM_MSG_REPORT,
        X.XFRM_MSG_NEWSADINFO,
    }
)

# Real kernel algorithm names first, so shrunk examples look familiar; then arbitrary names
# (no NUL byte: the kernel's char[64] is NUL-terminated; up to 64 chars fill the array exactly).
_ALG_NAMES = st.one_of(
    st.sampled_from(
        ["rfc4106(gcm(aes))", "cbc(aes)", "hmac(sha256)", "hmac(sha1)", "rfc7539esp(chacha20,poly1305)",
         "deflate", "ecb(cipher_null)", "digest_null"]
    ),
    st.text(st.characters(min_codepoint=1, max_codepoint=255), max_size=64),
)


def nl_headers(msg_type: int) -> st.SearchStrategy[NlHeader]:
    """A netlink header of ``msg_type`` with arbitrary flags, sequence number and port id."""
    return st.builds(NlHeader, st.just(msg_type), u16, u32, u32)


def addresses(family: int) -> st.SearchStrategy[str]:
    """Canonical address strings for ``family`` (exactly what ``inet_ntop`` prints)."""
    if family == X.AF_INET6:
        return st.binary(min_size=16, max_size=16).map(lambda b: socket.inet_ntop(socket.AF_INET6, b))
    return st.binary(min_size=4, max_size=4).map(lambda b: socket.inet_ntop(socket.AF_INET, b))


@st.composite
def selectors(draw: st.DrawFn, family: int | None = None) -> Selector:
    """A ``struct xfrm_selector`` of an IPv4 or IPv6 family (never 0, which would be ambiguous)."""
    fam = draw(families) if family is None else family
    return Selector(
        draw(addresses(fam)), draw(addresses(fam)), draw(u16), draw(u16), draw(u16), draw(u16),
        fam, draw(u8), draw(u8), draw(u8), draw(i32), draw(u32),
    )


lifetime_cfgs = st.builds(LifetimeCfg, u64, u64, u64, u64, u64, u64, u64, u64)
lifetime_curs = st.builds(LifetimeCur, u64, u64, u64, u64)
stats = st.builds(Stats, u32, u32, u32)
marks = st.builds(Mark, u32, u32)
replays = st.builds(Replay, u32, u32, u32)
replay_esns = st.builds(ReplayEsn, u32, u32, u32, u32, u32, st.lists(u32, max_size=8).map(tuple))
offloads = st.builds(Offload, i32, u8)


def algos(with_icv: bool, max_key_bits: int = 1024) -> st.SearchStrategy[Algo]:
    """An algorithm without its key; ``icv_bits`` only for AEAD / AUTH_TRUNC (the others have none)."""
    return st.builds(Algo, _ALG_NAMES, st.integers(0, max_key_bits), u32 if with_icv else st.just(0))


@st.composite
def templates(draw: st.DrawFn) -> Template:
    """A ``struct xfrm_user_tmpl`` of an IPv4 or IPv6 family."""
    fam = draw(families)
    return Template(
        draw(addresses(fam)), draw(u32), draw(u8), fam, draw(addresses(fam)), draw(u32), draw(u8),
        draw(u8), draw(u8), draw(u32), draw(u32), draw(u32),
    )


def _opt(strategy: st.SearchStrategy[T]) -> st.SearchStrategy[T | None]:
    return st.none() | strategy


@st.composite
def sas(draw: st.DrawFn, family: int | None = None) -> SA:
    """A full SA with any subset of the optional attributes (the selector may differ in family)."""
    fam = draw(families) if family is None else family
    return SA(
        sel=draw(selectors()),
        daddr=draw(addresses(fam)),
        spi=draw(u32),
        proto=draw(u8),
        saddr=draw(addresses(fam)),
        lft=draw(lifetime_cfgs),
        cur=draw(lifetime_curs),
        stats=draw(stats),
        seq=draw(u32),
        reqid=draw(u32),
        family=fam,
        mode=draw(u8),
        replay_window=draw(u8),
        flags=draw(u8),
        enc=draw(_opt(algos(False))),
        auth=draw(_opt(algos(False))),
        auth_trunc=draw(_opt(algos(True))),
        aead=draw(_opt(algos(True))),
        comp=draw(_opt(algos(False))),
        encap=draw(_opt(st.builds(Encap, u16, u16, u16, addresses(fam)))),
        replay=draw(_opt(replays)),
        replay_esn=draw(_opt(replay_esns)),
        lastused=draw(_opt(u64)),
        mark=draw(_opt(marks)),
        if_id=draw(_opt(u32)),
        sa_dir=draw(_opt(u8)),
        offload=draw(_opt(offloads)),
        set_mark=draw(_opt(u32)),
        set_mark_mask=draw(_opt(u32)),
        extra_flags=draw(_opt(u32)),
        tfcpad=draw(_opt(u32)),
        mtimer_thresh=draw(_opt(u32)),
        nat_keepalive_interval=draw(_opt(u32)),
        pcpu=draw(_opt(u32)),
    )


_ALGO_FIELDS = (
    ("enc", X.XFRMA_ALG_CRYPT),
    ("auth", X.XFRMA_ALG_AUTH),
    ("auth_trunc", X.XFRMA_ALG_AUTH_TRUNC),
    ("aead", X.XFRMA_ALG_AEAD),
    ("comp", X.XFRMA_ALG_COMP),
)


@st.composite
def sas_with_keys(draw: st.DrawFn) -> tuple[SA, dict[int, bytes]]:
    """An SA with at least one keyed algorithm, and random keys (at least 4 bytes) for each."""
    sa = draw(sas())
    changes: dict[str, Any] = {}
    keys: dict[int, bytes] = {}
    for field, atype in _ALGO_FIELDS:
        algo = getattr(sa, field)
        if algo is None:
            continue
        nbytes = draw(st.integers(4, 64))
        changes[field] = algo._replace(key_bits=nbytes * 8)
        keys[atype] = draw(st.binary(min_size=nbytes, max_size=nbytes))
    if not keys:
        changes["enc"] = Algo("cbc(aes)", 256)
        keys[X.XFRMA_ALG_CRYPT] = draw(st.binary(min_size=32, max_size=32))
    return sa._replace(**changes), keys


@st.composite
def sa_ids(draw: st.DrawFn) -> SAId:
    """A ``struct xfrm_usersa_id``."""
    fam = draw(families)
    return SAId(draw(addresses(fam)), draw(u32), fam, draw(u8))


@st.composite
def policies(draw: st.DrawFn, with_attrs: bool = True) -> Policy:
    """A policy; ``with_attrs=False`` for the one embedded in an ACQUIRE (it has no attributes)."""
    base = Policy(
        draw(selectors()), draw(lifetime_cfgs), draw(lifetime_curs), draw(u32), draw(u32), draw(u8),
        draw(u8), draw(u8), draw(u8),
    )
    if not with_attrs:
        return base
    return base._replace(
        templates=tuple(draw(st.lists(templates(), max_size=3))),
        policy_type=draw(_opt(u8)),
        mark=draw(_opt(marks)),
        if_id=draw(_opt(u32)),
    )


@st.composite
def acquires(draw: st.DrawFn) -> Acquire:
    """An ACQUIRE; its addresses use the embedded policy's selector family, as the decoder does."""
    policy = draw(policies(with_attrs=False))
    fam = policy.sel.family
    return Acquire(
        draw(nl_headers(X.XFRM_MSG_ACQUIRE)), draw(addresses(fam)), draw(u32), draw(u8),
        draw(addresses(fam)), draw(selectors()), policy, draw(u32), draw(u32), draw(u32), draw(u32),
        tuple(draw(st.lists(templates(), max_size=3))), draw(_opt(u8)), draw(_opt(marks)),
        draw(_opt(u32)), draw(_opt(u8)),
    )


@st.composite
def async_events(draw: st.DrawFn) -> AsyncEvent:
    """A NEWAE with any subset of its attributes."""
    i = draw(sa_ids())
    return AsyncEvent(
        draw(nl_headers(X.XFRM_MSG_NEWAE)), i, draw(addresses(i.family)), draw(u32), draw(u32),
        draw(_opt(replays)), draw(_opt(replay_esns)), draw(_opt(lifetime_curs)),
        draw(_opt(u32)), draw(_opt(u32)), draw(_opt(marks)), draw(_opt(u32)),
    )


@st.composite
def _sa_deleted(draw: st.DrawFn) -> SADeleted:
    i = draw(sa_ids())
    saddr = draw(_opt(addresses(i.family)))
    return SADeleted(draw(nl_headers(X.XFRM_MSG_DELSA)), i, draw(_opt(sas())), saddr)


@st.composite
def _mapping(draw: st.DrawFn) -> NatMapping:
    i = draw(sa_ids())
    return NatMapping(
        draw(nl_headers(X.XFRM_MSG_MAPPING)), i, draw(u32), draw(addresses(i.family)),
        draw(addresses(i.family)), draw(u16), draw(u16),
    )


@st.composite
def _report(draw: st.DrawFn) -> Report:
    sel = draw(selectors())
    return Report(draw(nl_headers(X.XFRM_MSG_REPORT)), draw(u8), sel,
                  draw(_opt(addresses(sel.family))))


@st.composite
def _sadinfo(draw: st.DrawFn) -> SADInfo:
    hinfo = draw(st.none() | st.tuples(u32, u32))
    hc, hm = (None, None) if hinfo is None else hinfo
    return SADInfo(draw(nl_headers(X.XFRM_MSG_NEWSADINFO)), draw(u32), draw(_opt(u32)), hc, hm)


def sa_events() -> st.SearchStrategy[Event]:
    """The SA-carrying events: NEWSA, UPDSA, DELSA, EXPIRE."""
    return st.one_of(
        st.builds(SAAdded, nl_headers(X.XFRM_MSG_NEWSA), sas()),
        st.builds(SAUpdated, nl_headers(X.XFRM_MSG_UPDSA), sas()),
        _sa_deleted(),
        st.builds(SAExpired, nl_headers(X.XFRM_MSG_EXPIRE), sas(), st.booleans()),
    )


def events() -> st.SearchStrategy[Event]:
    """Any event the decoder can produce, one strategy per message type."""
    unknown_types = u16.filter(lambda t: t not in KNOWN_TYPES)
    return st.one_of(
        sa_events(),
        acquires(),
        st.builds(PolicyAdded, nl_headers(X.XFRM_MSG_NEWPOLICY), policies()),
        st.builds(PolicyUpdated, nl_headers(X.XFRM_MSG_UPDPOLICY), policies()),
        st.builds(
            PolicyDeleted,
            nl_headers(X.XFRM_MSG_DELPOLICY),
            st.builds(PolicyId, selectors(), u32, u8),
            st.none() | policies(),
        ),
        st.builds(PolicyExpired, nl_headers(X.XFRM_MSG_POLEXPIRE), policies(), st.booleans()),
        st.builds(SAFlushed, nl_headers(X.XFRM_MSG_FLUSHSA), u8),
        st.builds(PolicyFlushed, nl_headers(X.XFRM_MSG_FLUSHPOLICY), st.none() | u8),
        async_events(),
        _mapping(),
        _report(),
        _sadinfo(),
        st.builds(NetlinkError, nl_headers(X.NLMSG_ERROR), i32, st.builds(NlHeader, u16, u16, u32, u32)),
        st.builds(Done, nl_headers(X.NLMSG_DONE)),
        st.builds(Unknown, unknown_types.flatmap(nl_headers), st.binary(max_size=64)),
    )
