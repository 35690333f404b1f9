"""Typed, immutable records decoded from NETLINK_XFRM messages.

Every record is a ``NamedTuple``: immutable, hashable, and about five times cheaper to build than a
frozen dataclass, which matters at 300k+ messages/s (see ``bench/RESULTS.md``). Every event's first
field is its netlink header, so events of different message types never compare equal.

Key material is deliberately absent: an algorithm is kept as its name and key length in bits only.
Addresses are strings (``"192.0.2.1"``, ``"2001:db8::1"``); SPIs are ints (print with ``0x%08x``).
"""

from __future__ import annotations

from typing import NamedTuple


class NlHeader(NamedTuple):
    """``struct nlmsghdr`` without its length (which the encoder recomputes)."""

    type: int
    flags: int = 0
    seq: int = 0
    pid: int = 0


class Selector(NamedTuple):
    """``struct xfrm_selector``: which traffic an SA or policy applies to."""

    daddr: str
    saddr: str
    dport: int = 0
    dport_mask: int = 0
    sport: int = 0
    sport_mask: int = 0
    family: int = 2
    prefixlen_d: int = 0
    prefixlen_s: int = 0
    proto: int = 0
    ifindex: int = 0
    user: int = 0


class LifetimeCfg(NamedTuple):
    """``struct xfrm_lifetime_cfg``; ``XFRM_INF`` (2**64-1) means no limit."""

    soft_byte_limit: int = 0xFFFFFFFFFFFFFFFF
    hard_byte_limit: int = 0xFFFFFFFFFFFFFFFF
    soft_packet_limit: int = 0xFFFFFFFFFFFFFFFF
    hard_packet_limit: int = 0xFFFFFFFFFFFFFFFF
    soft_add_expires_seconds: int = 0
    hard_add_expires_seconds: int = 0
    soft_use_expires_seconds: int = 0
    hard_use_expires_seconds: int = 0


class LifetimeCur(NamedTuple):
    """``struct xfrm_lifetime_cur``: counters and wall-clock add/first-use times (seconds)."""

    bytes: int = 0
    packets: int = 0
    add_time: int = 0
    use_time: int = 0


class Stats(NamedTuple):
    """``struct xfrm_stats``: drop counters."""

    replay_window: int = 0
    replay: int = 0
    integrity_failed: int = 0


class Algo(NamedTuple):
    """An algorithm attribute without its key: name, key length in bits, and ICV/truncation bits."""

    name: str
    key_bits: int
    icv_bits: int = 0


class Encap(NamedTuple):
    """``struct xfrm_encap_tmpl`` (NAT-T: type 2 = ESPINUDP)."""

    type: int
    sport: int
    dport: int
    oa: str


class Mark(NamedTuple):
    """``struct xfrm_mark``."""

    value: int
    mask: int


class Replay(NamedTuple):
    """``struct xfrm_replay_state``; ``oseq`` counts packets sent."""

    oseq: int
    seq: int
    bitmap: int


class ReplayEsn(NamedTuple):
    """``struct xfrm_replay_state_esn`` with its bitmap words."""

    oseq: int
    seq: int
    oseq_hi: int
    seq_hi: int
    replay_window: int
    bmp: tuple[int, ...] = ()


class Offload(NamedTuple):
    """``struct xfrm_user_offload``."""

    ifindex: int
    flags: int


class Template(NamedTuple):
    """``struct xfrm_user_tmpl``: what SA a policy wants (``reqid`` ties it to the SAs)."""

    daddr: str
    spi: int
    proto: int
    family: int
    saddr: str
    reqid: int
    mode: int
    share: int = 0
    optional: int = 0
    aalgos: int = 0xFFFFFFFF
    ealgos: int = 0xFFFFFFFF
    calgos: int = 0xFFFFFFFF


class SA(NamedTuple):
    """``struct xfrm_usersa_info`` plus the attributes a monitor needs (never the keys)."""

    sel: Selector
    daddr: str
    spi: int
    proto: int
    saddr: str
    lft: LifetimeCfg
    cur: LifetimeCur
    stats: Stats
    seq: int
    reqid: int
    family: int
    mode: int
    replay_window: int
    flags: int
    enc: Algo | None = None
    auth: Algo | None = None
    auth_trunc: Algo | None = None
    aead: Algo | None = None
    comp: Algo | None = None
    encap: Encap | None = None
    replay: Replay | None = None
    replay_esn: ReplayEsn | None = None
    lastused: int | None = None
    mark: Mark | None = None
    if_id: int | None = None
    sa_dir: int | None = None
    offload: Offload | None = None
    set_mark: int | None = None
    set_mark_mask: int | None = None
    extra_flags: int | None = None
    tfcpad: int | None = None
    mtimer_thresh: int | None = None
    nat_keepalive_interval: int | None = None
    pcpu: int | None = None

    @property
    def larval(self) -> bool:
        """True for ALLOCSPI/ACQUIRE placeholders: they carry no algorithm attributes.

        Only meaningful for NEWSA/UPDSA/DELSA records: the kernel's EXPIRE carries no algorithm
        attributes for any SA, so use ``spi == 0`` or ``reqid == 0`` there.
        """
        return self.enc is None and self.aead is None and self.auth is None and self.auth_trunc is None


class SAId(NamedTuple):
    """``struct xfrm_usersa_id``."""

    daddr: str
    spi: int
    family: int
    proto: int


class Policy(NamedTuple):
    """``struct xfrm_userpolicy_info`` plus templates, type, mark and if_id."""

    sel: Selector
    lft: LifetimeCfg
    cur: LifetimeCur
    priority: int
    index: int  # type: ignore[assignment]  # shadows tuple.index, named as in the kernel struct
    dir: int
    action: int
    flags: int
    share: int
    templates: tuple[Template, ...] = ()
    policy_type: int | None = None
    mark: Mark | None = None
    if_id: int | None = None


class PolicyId(NamedTuple):
    """``struct xfrm_userpolicy_id``."""

    sel: Selector
    index: int  # type: ignore[assignment]  # shadows tuple.index, named as in the kernel struct
    dir: int


# --- events: one per message type; ``nl.type`` tells NEWSA from UPDSA and so on ---------------


class SAAdded(NamedTuple):
    """NEWSA: a notification, a dump record (``nl.flags & NLM_F_MULTI``) or a GETSA reply."""

    nl: NlHeader
    sa: SA


class SAUpdated(NamedTuple):
    """UPDSA (strongSwan and libreswan install inbound SAs this way)."""

    nl: NlHeader
    sa: SA


class SADeleted(NamedTuple):
    """DELSA: the SA id, plus the full SA with its final counters (``XFRMA_SA``) when present."""

    nl: NlHeader
    id: SAId
    sa: SA | None
    saddr: str | None = None  # XFRMA_SRCADDR, requests only


class SAExpired(NamedTuple):
    """EXPIRE: soft (rekey now) or hard (the kernel deleted the SA; no DELSA follows)."""

    nl: NlHeader
    sa: SA
    hard: bool


class Acquire(NamedTuple):
    """ACQUIRE: outbound traffic hit a policy with no SA; the IKE daemon should negotiate."""

    nl: NlHeader
    daddr: str
    spi: int
    proto: int
    saddr: str
    sel: Selector
    policy: Policy
    aalgos: int
    ealgos: int
    calgos: int
    seq: int
    templates: tuple[Template, ...] = ()
    policy_type: int | None = None
    mark: Mark | None = None
    if_id: int | None = None
    sa_dir: int | None = None


class PolicyAdded(NamedTuple):
    """NEWPOLICY: a notification or a GETPOLICY dump record."""

    nl: NlHeader
    policy: Policy


class PolicyUpdated(NamedTuple):
    """UPDPOLICY."""

    nl: NlHeader
    policy: Policy


class PolicyDeleted(NamedTuple):
    """DELPOLICY: the policy id plus the full policy (``XFRMA_POLICY``) when present."""

    nl: NlHeader
    id: PolicyId
    policy: Policy | None


class PolicyExpired(NamedTuple):
    """POLEXPIRE."""

    nl: NlHeader
    policy: Policy
    hard: bool


class SAFlushed(NamedTuple):
    """FLUSHSA: one message for the whole flush; no per-SA DELSA is sent."""

    nl: NlHeader
    proto: int


class PolicyFlushed(NamedTuple):
    """FLUSHPOLICY."""

    nl: NlHeader
    policy_type: int | None = None


class AsyncEvent(NamedTuple):
    """NEWAE: replay/lifetime counters of one SA (no key material)."""

    nl: NlHeader
    id: SAId
    saddr: str
    flags: int
    reqid: int
    replay: Replay | None = None
    replay_esn: ReplayEsn | None = None
    lifetime: LifetimeCur | None = None
    replay_thresh: int | None = None
    etimer_thresh: int | None = None
    mark: Mark | None = None
    if_id: int | None = None


class NatMapping(NamedTuple):
    """MAPPING: the NAT-T peer's address or port changed."""

    nl: NlHeader
    id: SAId
    reqid: int
    old_saddr: str
    new_saddr: str
    old_sport: int
    new_sport: int


class Report(NamedTuple):
    """REPORT (Mobile IPv6)."""

    nl: NlHeader
    proto: int
    sel: Selector
    coaddr: str | None = None


class SADInfo(NamedTuple):
    """NEWSADINFO: SA count and hash table sizing."""

    nl: NlHeader
    flags: int
    count: int | None  # type: ignore[assignment]  # shadows tuple.count; XFRMA_SAD_CNT
    hash_count: int | None
    hash_max: int | None


class NetlinkError(NamedTuple):
    """NLMSG_ERROR: ``error`` is 0 for an ACK, else a negative errno; ``request`` is the echoed header."""

    nl: NlHeader
    error: int
    request: NlHeader


class Done(NamedTuple):
    """NLMSG_DONE: the end of a multi-part dump."""

    nl: NlHeader


class Unknown(NamedTuple):
    """A message type this decoder does not know (kept so nothing is silently lost)."""

    nl: NlHeader
    payload: bytes


Event = (
    SAAdded
    | SAUpdated
    | SADeleted
    | SAExpired
    | Acquire
    | PolicyAdded
    | PolicyUpdated
    | PolicyDeleted
    | PolicyExpired
    | SAFlushed
    | PolicyFlushed
    | AsyncEvent
    | NatMapping
    | Report
    | SADInfo
    | NetlinkError
    | Done
    | Unknown
)
