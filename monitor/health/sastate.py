"""Per-SA and per-policy state of the correlator (pure): what is kept of each live SA and each policy.

Numbers and interned strings only, plus the kernel's own immutable records (limits, encapsulation) shared
with the decoder's memo tables and tuples shared between SAs (algorithm names, volume limits): 240 bytes per
``SAState`` (bench/RESULTS.md, "RSS per SA"); ``to_json`` gives the ``sas[]`` and ``selectors[]`` entries of
the tunnel JSON.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from monitor.wire.events import Encap, LifetimeCfg

if TYPE_CHECKING:
    from monitor.health.tunnel import Tunnel

DIR_IN: Final = 1  # XFRM_SA_DIR_IN
DIR_OUT: Final = 2  # XFRM_SA_DIR_OUT
U64_INF = 0xFFFFFFFFFFFFFFFF  # XFRM_INF: no byte/packet limit
_INF = float("inf")
# include/uapi/linux/udp.h: UDP_ENCAP_ESPINUDP_NON_IKE 1, UDP_ENCAP_ESPINUDP 2; TCP_ENCAP_ESPINTCP 7
ENCAP_NAMES = {1: "espinudp-non-ike", 2: "espinudp", 7: "espintcp"}
Algs = tuple[str | None, str | None, str | None]
NO_ALGS: Algs = (None, None, None)
NO_VOL: tuple[float, float] = (_INF, _INF)
_ALGS: dict[Algs, Algs] = {NO_ALGS: NO_ALGS}
_VOLS: dict[tuple[int, int, float], tuple[float, float]] = {}
_MEMO_MAX = 4096  # distinct algorithm combinations / limits on one gateway are few; past this, start over


def algs_of(enc: str | None, auth: str | None, aead: str | None) -> Algs:
    """The shared ``(enc, auth, aead)`` tuple of these names (one per combination, not one per SA)."""
    key = (enc, auth, aead)
    got = _ALGS.get(key)
    if got is None:
        if len(_ALGS) >= _MEMO_MAX:
            _ALGS.clear()
        got = _ALGS[key] = key
    return got


def vol_of(lft: LifetimeCfg, expiring_volume: float) -> tuple[float, float]:
    """``(bytes, packets)`` from which an SA with limits ``lft`` is near its hard volume limit (inf: no limit),
    within ``expiring_volume`` of it; one shared tuple per distinct limit."""
    hb, hp = lft.hard_byte_limit, lft.hard_packet_limit
    if hb >= U64_INF and hp >= U64_INF:
        return NO_VOL
    key = (hb, hp, expiring_volume)
    got = _VOLS.get(key)
    if got is None:
        keep = 1.0 - expiring_volume
        if len(_VOLS) >= _MEMO_MAX:
            _VOLS.clear()
        got = _VOLS[key] = (hb * keep if hb < U64_INF else _INF, hp * keep if hp < U64_INF else _INF)
    return got


class SAState:
    """What the correlator keeps of one live, non-larval SA (numbers and interned strings only)."""

    # 27 slots: 256 bytes per instance with its GC header (pymalloc rounds to 16 bytes: 26 slots were 240).
    # Values are shared wherever they can be: the decoder's memoised records and ints, interned strings,
    # one tuple per algorithm combination and per volume limit (bench/RESULTS.md, "RSS per SA").
    __slots__ = ("add_time", "algs", "bytes", "daddr", "digest", "dir", "encap", "esn", "gen", "hard_at", "integrity",
                 "lastused", "lft", "order", "oseq", "oseq_warned", "packets", "proto", "replay", "saddr", "seq",
                 "soft_expired", "soft_life", "spi", "tunnel", "vol", "window")

    def __init__(self, spi: int, daddr: str, saddr: str, proto: int, tunnel: Tunnel, order: int) -> None:  # noqa: PLR0917 (hot path: positional is cheaper)
        self.spi = spi
        self.daddr = daddr
        self.saddr = saddr
        self.proto = proto
        self.tunnel = tunnel
        self.order = order  # install order: the newest SA of a direction has the largest
        self.dir = 0
        self.bytes = 0
        self.packets = 0
        self.replay = 0
        self.integrity = 0
        self.add_time = 0.0
        self.soft_life = 0  # soft_add_expires_seconds the soft expiry was computed from (``soft_at``)
        self.hard_at = 0.0  # absolute hard expiry, core time (0: none)
        self.lastused = 0
        self.gen = 0  # last SA dump generation (or event during it) that saw this SA
        # 60-bit digest of the last dump record applied in full, while applying it again would change nothing
        # but the dump stamp and the volume re-check (monitor.health.refresh); -1: none, take the full path
        self.digest = -1
        self.soft_expired = False
        self.algs = NO_ALGS  # (enc, auth, aead) names, one shared tuple per combination (``algs_of``)
        # the kernel's own records, shared with the decoder's memo tables (immutable): nothing is copied
        self.lft: LifetimeCfg | None = None  # byte/packet (and time) limits
        self.encap: Encap | None = None  # NAT-T (XFRMA_ENCAP)
        # sequence numbers (XFRMA_REPLAY_VAL / _ESN_VAL), 64-bit with ESN; oseq None: the record had neither.
        # Plain ints (the decoder's own objects when the high words are 0), not the decoded record: a
        # Replay/ReplayEsn tuple (and its bitmap) per SA cost ~100 bytes more.
        self.oseq: int | None = None
        self.seq = 0
        self.esn = False  # XFRM_STATE_ESN: 64-bit sequence numbers
        self.window = 0  # anti-replay window (packets)
        self.oseq_warned = False  # the 32-bit output sequence exhaustion event was emitted
        self.vol = NO_VOL  # (bytes, packets) from which the SA is near its hard volume limit (``vol_of``)

    @property
    def enc(self) -> str | None:
        """Encryption algorithm name (None: none)."""
        return self.algs[0]

    @property
    def auth(self) -> str | None:
        """Authentication algorithm name (``auth_trunc`` or ``auth``; None: none)."""
        return self.algs[1]

    @property
    def aead(self) -> str | None:
        """AEAD algorithm name (None: none)."""
        return self.algs[2]

    def near_volume(self) -> bool:
        """Counters at or past ``vol``: within ``expiring_volume`` of a hard byte or packet limit."""
        vb, vp = self.vol
        return self.bytes >= vb or self.packets >= vp

    @property
    def soft_at(self) -> float:
        """Absolute soft expiry, core time (0: none): ``add_time`` + the soft lifetime (no float kept per SA)."""
        life, add = self.soft_life, self.add_time
        return add + life if life and add else 0.0

    def set_lifetimes(self, add: float, lft: LifetimeCfg) -> None:
        """``add_time`` and the expiries that follow from it and ``lft``'s add-expire seconds."""
        self.add_time = add
        soft, hard = lft.soft_add_expires_seconds, lft.hard_add_expires_seconds
        self.soft_life = soft if add else 0
        self.hard_at = add + hard if hard and add else 0.0

    def limits_json(self) -> dict[str, int | None] | None:
        """Byte and packet limits (None: no limit) and how far the counters are from the hard ones."""
        lft = self.lft
        if lft is None:
            return None
        sb, hb, sp, hp = (None if v >= U64_INF else v for v in lft[:4])
        return {"soft_bytes": sb, "hard_bytes": hb, "soft_packets": sp, "hard_packets": hp,
                "bytes_to_hard": None if hb is None else max(0, hb - self.bytes),
                "packets_to_hard": None if hp is None else max(0, hp - self.packets)}

    def to_json(self, now: float, wall_skew: float = 0.0) -> dict[str, Any]:
        """The public per-SA dict (``sas[]`` of the tunnel JSON); instants in wall time (core + ``wall_skew``)."""
        soft_at = self.soft_at
        return {
            "spi": f"0x{self.spi:08x}",
            "direction": "in" if self.dir == DIR_IN else "out",
            "bytes": self.bytes,
            "packets": self.packets,
            "added": self.add_time + wall_skew if self.add_time else self.add_time,
            "soft_expires_in": round(soft_at - now, 3) if soft_at else None,
            "hard_expires_in": round(self.hard_at - now, 3) if self.hard_at else None,
            "enc": self.algs[0],
            "auth": self.algs[1],
            "aead": self.algs[2],
            "replay_errors": self.replay,
            "integrity_errors": self.integrity,
            "lastused": self.lastused or None,
            "soft_expired": self.soft_expired,
            "encap": None if self.encap is None else {
                "type": ENCAP_NAMES.get(self.encap.type, str(self.encap.type)), "sport": self.encap.sport,
                "dport": self.encap.dport, "oa": self.encap.oa},
            "esn": self.esn,
            "replay_window": self.window,
            "seq": self.seq,
            "oseq": self.oseq or 0,
            "limits": self.limits_json(),
        }


class PolicyInfo:
    """One tunnel policy: direction, index and its selector as display strings."""

    __slots__ = ("dir", "dport", "dst", "gen", "index", "proto", "sport", "src", "tunnel")

    def __init__(self, index: int, pdir: int, *, src: str, dst: str, proto: int, sport: int, dport: int,
                 tunnel: Tunnel) -> None:
        self.index = index
        self.dir = pdir  # XFRM_POLICY_IN 0, OUT 1, FWD 2
        self.src = src
        self.dst = dst
        self.proto = proto
        self.sport = sport
        self.dport = dport
        self.tunnel = tunnel
        self.gen = 0

    def selector_json(self) -> dict[str, Any]:
        """``{src, dst, proto, sport, dport}`` as seen from the local side (out-policy orientation)."""
        if self.dir == 1:
            return {"src": self.src, "dst": self.dst, "proto": self.proto, "sport": self.sport,
                    "dport": self.dport}
        return {"src": self.dst, "dst": self.src, "proto": self.proto, "sport": self.dport,
                "dport": self.sport}


# "expiring" means the hard limit is near and the rekey that should have come first did not. With
# strongSwan's defaults (rekey 3240-3600 s, hard 3960 s) the 120 s margin applies; for short lifetimes
# (tests, aggressive configs: hard 25 s) a fixed 120 s margin would flag every healthy SA, so the
# margin is capped at a quarter of the SA's whole hard lifetime.
EXPIRING_LIFETIME_FRACTION = 0.25


def expiry_margin(a: SAState | None, b: SAState | None, configured: float) -> tuple[float, float]:
    """The earlier hard expiry of ``a`` and ``b`` (0: none) and the ``expiring`` margin that applies to it."""
    if a is None or not a.hard_at:
        first = b if b is not None and b.hard_at else None
    elif b is not None and b.hard_at and b.hard_at < a.hard_at:
        first = b
    else:
        first = a
    if first is None:
        return 0.0, configured
    life = first.hard_at - first.add_time if first.add_time else 0.0
    if life > 0:
        capped = EXPIRING_LIFETIME_FRACTION * life
        return first.hard_at, capped if capped < configured else configured
    return first.hard_at, configured
