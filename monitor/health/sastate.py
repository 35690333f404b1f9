"""Per-SA and per-policy state of the correlator (pure): what is kept of each live SA and each policy.

Numbers and interned strings only, plus the kernel's own immutable records (limits, encapsulation,
sequence numbers) shared with the decoder's memo tables; ``to_json`` gives the ``sas[]`` and ``selectors[]``
entries of the tunnel JSON.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from monitor.wire.events import Encap, LifetimeCfg, Replay, ReplayEsn

if TYPE_CHECKING:
    from monitor.health.tunnel import Tunnel

DIR_IN: Final = 1  # XFRM_SA_DIR_IN
DIR_OUT: Final = 2  # XFRM_SA_DIR_OUT
U64_INF = 0xFFFFFFFFFFFFFFFF  # XFRM_INF: no byte/packet limit
_INF = float("inf")
# include/uapi/linux/udp.h: UDP_ENCAP_ESPINUDP_NON_IKE 1, UDP_ENCAP_ESPINUDP 2; TCP_ENCAP_ESPINTCP 7
ENCAP_NAMES = {1: "espinudp-non-ike", 2: "espinudp", 7: "espintcp"}


class SAState:
    """What the correlator keeps of one live, non-larval SA (numbers and interned strings only)."""

    __slots__ = ("add_time", "aead", "auth", "bytes", "daddr", "digest", "dir", "enc", "encap", "esn", "gen", "hard_at",
                 "integrity", "lastused", "lft", "order", "oseq_warned", "packets", "proto", "replay", "saddr",
                 "seqs", "soft_at", "soft_expired", "spi", "tunnel", "vol_bytes", "vol_packets", "window")

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
        self.soft_at = 0.0  # absolute wall-clock soft expiry (0: none)
        self.hard_at = 0.0  # absolute wall-clock hard expiry (0: none)
        self.lastused = 0
        self.gen = 0  # last SA dump generation (or event during it) that saw this SA
        # 60-bit digest of the last dump record applied in full, while applying it again would change nothing
        # but the dump stamp and the volume re-check (monitor.health.refresh); -1: none, take the full path
        self.digest = -1
        self.soft_expired = False
        self.enc: str | None = None
        self.auth: str | None = None
        self.aead: str | None = None
        # the kernel's own records, shared with the decoder's memo tables (immutable): nothing is copied
        self.lft: LifetimeCfg | None = None  # byte/packet (and time) limits
        self.encap: Encap | None = None  # NAT-T (XFRMA_ENCAP)
        self.seqs: Replay | ReplayEsn | None = None  # sequence numbers: XFRMA_REPLAY_VAL / _ESN_VAL
        self.esn = False  # XFRM_STATE_ESN: 64-bit sequence numbers
        self.window = 0  # anti-replay window (packets)
        self.oseq_warned = False  # the 32-bit output sequence exhaustion event was emitted
        self.vol_bytes = _INF  # bytes / packets from which the SA is near its hard volume limit
        self.vol_packets = _INF

    def oseq(self) -> int:
        """The output sequence number (64-bit with ESN)."""
        s = self.seqs
        if s is None:
            return 0
        return (s.oseq_hi << 32 | s.oseq) if isinstance(s, ReplayEsn) else s.oseq

    def seq(self) -> int:
        """The highest input sequence number seen (64-bit with ESN)."""
        s = self.seqs
        if s is None:
            return 0
        return (s.seq_hi << 32 | s.seq) if isinstance(s, ReplayEsn) else s.seq

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
        return {
            "spi": f"0x{self.spi:08x}",
            "direction": "in" if self.dir == DIR_IN else "out",
            "bytes": self.bytes,
            "packets": self.packets,
            "added": self.add_time + wall_skew if self.add_time else self.add_time,
            "soft_expires_in": round(self.soft_at - now, 3) if self.soft_at else None,
            "hard_expires_in": round(self.hard_at - now, 3) if self.hard_at else None,
            "enc": self.enc,
            "auth": self.auth,
            "aead": self.aead,
            "replay_errors": self.replay,
            "integrity_errors": self.integrity,
            "lastused": self.lastused or None,
            "soft_expired": self.soft_expired,
            "encap": None if self.encap is None else {
                "type": ENCAP_NAMES.get(self.encap.type, str(self.encap.type)), "sport": self.encap.sport,
                "dport": self.encap.dport, "oa": self.encap.oa},
            "esn": self.esn,
            "replay_window": self.window,
            "seq": self.seq(),
            "oseq": self.oseq(),
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
