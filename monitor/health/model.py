"""Health vocabulary: configuration, health events, reason codes and hint texts (data only).

Everything a consumer (websocket, REST, metrics, ``monitor check``) needs to interpret the
correlator's output lives here: the event types it emits, the reason codes that explain a tunnel's
state, and the hint codes that suggest what an operator should look at. The texts quote the
operator problems of the CloudConnect FAQ (``shared/context/ipsec-cloudconnect-faq.txt``): the AWS
side never initiates, idle tunnels go down, the far side must allow the device ranges, and AWS
Transit Gateway refuses overlapping CIDRs.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

from monitor.errors import ConfigError

__all__ = [
    "EVENT_TYPES",
    "HINTS",
    "REASONS",
    "XFRM_STAT_HINTS",
    "HealthConfig",
    "HealthEvent",
    "Reason",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthConfig:
    """Thresholds of the health model. All durations are seconds.

    Raises:
        ConfigError: a negative duration or an unparsable address or range.
    """

    idle_after: float = 300.0
    """A tunnel whose byte counters did not move in either direction for this long is ``idle``."""
    one_way_after: float = 60.0
    """Outbound bytes moved within this window while inbound stayed flat for this long: ``one-way``."""
    acquire_grace: float = 30.0
    """An ACQUIRE not followed by an SA pair within this time is ``negotiation_failed``
    (the kernel's own ``net.core.xfrm_acq_expires`` default is 30 s)."""
    expiring_margin: float = 120.0
    """Hard expiry closer than this with no successor SA: ``expiring`` (capped at a quarter of the SA's
    hard lifetime, so short test lifetimes do not read as permanently expiring)."""
    errors_window: float = 300.0
    """The ``errors`` state lasts this long after the last increase of a replay/integrity counter."""
    expiring_volume: float = 0.1
    """An SA within this fraction of its hard byte or packet limit, with no successor, is ``expiring``
    (libreswan installs byte limits only; strongSwan's ``life_bytes``/``life_packets``)."""
    oseq_margin: int = 100_000_000
    """An outbound SA without ESN whose 32-bit output sequence number is within this many packets of 2^32
    gets a hint and an event: at 2^32 the kernel drops every packet until the SA is replaced."""
    tombstone_ttl: float = 60.0
    """A deleted SA is not resurrected by a stale dump record or notification for this long."""
    forget_after: float = 3600.0
    """A down tunnel with no policy left is dropped from the view after this long. Tunnels that
    still have a policy (configured but down) are never dropped."""
    supersede_grace: float = 5.0
    """A tunnel that had SAs, whose policies were all removed and which lost a direction, is held in its
    state this long before it is called ``down``: an IKE daemon that re-negotiates under a new reqid
    (libreswan replacing a first Child SA) deletes the old SAs and policies before it installs the new
    ones, and the old tunnel is then ``superseded``, not down. 0: no hold."""
    hint_ttl: float = 600.0
    """An ``xfrm_stat`` hint stays attached this long after the counter last increased."""
    lint_interval: float = 5.0
    """Policy lint (overlaps, uncovered ranges) runs at most this often per netns."""
    recent_rekey: float = 60.0
    """A rekey younger than this makes ``XfrmInNoStates`` blame the tunnel (a rekey race)."""
    local_addresses: frozenset[str] = field(default_factory=frozenset)
    """Outer addresses known to be local (optional; they are also learned from policies and SA_DIR)."""
    peer_kind: str = "generic"
    """What the peers are, for the advice in ``no_traffic``/``no_sa`` texts: ``generic`` (neutral) or
    ``aws`` (AWS VPN endpoints, which never initiate)."""
    expected_remote_ranges: tuple[str, ...] = ()
    """Remote (device) ranges every netns with tunnels should cover with a policy, e.g. the FAQ's
    ``10.192.0.0/12``, ``100.64.0.0/10`` ..."""
    reserved_local_ranges: tuple[str, ...] = ()
    """Ranges the peers reserve for themselves, which no local selector may use (the FAQ's provider uses
    ``10.100.0.0/16`` internally): a local selector overlapping one gets a ``reserved_range`` hint."""
    max_local_ranges: int = 0
    """Most distinct local selector ranges one peer accepts (the FAQ's provider: 3 CIDRs per VPC); more
    towards one remote gateway give a ``too_many_local_ranges`` hint. 0: no limit."""

    def __post_init__(self) -> None:
        # TOML and JSON give lists: store them as the immutable types the fields declare
        raw: tuple[object, ...] = (self.local_addresses, self.expected_remote_ranges, self.reserved_local_ranges)
        if any(isinstance(v, str) for v in raw):
            raise ConfigError("local_addresses, expected_remote_ranges and reserved_local_ranges must be lists, "
                              "not strings")
        object.__setattr__(self, "local_addresses", frozenset(self.local_addresses))
        object.__setattr__(self, "expected_remote_ranges", tuple(self.expected_remote_ranges))
        object.__setattr__(self, "reserved_local_ranges", tuple(self.reserved_local_ranges))
        limit = self.max_local_ranges
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ConfigError(f"[health] max_local_ranges must be a non-negative integer, not {limit!r}")
        for name in ("idle_after", "one_way_after", "acquire_grace", "expiring_margin", "errors_window",
                     "tombstone_ttl", "forget_after", "supersede_grace", "hint_ttl", "lint_interval", "recent_rekey"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"[health] {name} must be a non-negative, finite number of seconds, not {value!r}")
        if not (isinstance(self.expiring_volume, int | float) and 0 <= self.expiring_volume < 1):
            raise ConfigError(f"[health] expiring_volume must be a fraction in [0, 1), not {self.expiring_volume!r}")
        margin = self.oseq_margin
        if isinstance(margin, bool) or not isinstance(margin, int) or not 0 <= margin < 2**32:
            raise ConfigError(f"[health] oseq_margin must be a number of packets below 2^32, not {self.oseq_margin!r}")
        if self.peer_kind not in PEER_ADVICE:
            raise ConfigError(f"[health] peer_kind must be one of {', '.join(PEER_ADVICE)}, not {self.peer_kind!r}")
        for addr in self.local_addresses:
            try:
                ipaddress.ip_address(addr)
            except ValueError:
                raise ConfigError(f"local address {addr!r} is not an IP address") from None
        for what, nets in (("expected remote", self.expected_remote_ranges),
                           ("reserved local", self.reserved_local_ranges)):
            for net in nets:
                try:
                    ipaddress.ip_network(net, strict=False)
                except (ValueError, TypeError):
                    raise ConfigError(f"{what} range {net!r} is not a CIDR range") from None


class HealthEvent(NamedTuple):
    """One health event. ``seq`` is global and strictly increasing; ``tunnel`` is None for netns-wide
    events (``resync``). ``ts`` is wall-clock time (for display and records); ``mono`` the core's own
    clock (monotonic; the capture's clock for a replay), for ordering and durations."""

    seq: int
    ts: float
    type: str
    tunnel: str | None
    netns: str
    detail: dict[str, Any]
    mono: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The public dict: ``{seq, ts, type, tunnel, netns, detail}``."""
        return {"seq": self.seq, "ts": self.ts, "type": self.type, "tunnel": self.tunnel,
                "netns": self.netns, "detail": self.detail}


class Reason(NamedTuple):
    """A machine-readable code with a human-readable text."""

    code: str
    text: str

    def to_json(self) -> dict[str, str]:
        """``{code, text}``."""
        return {"code": self.code, "text": self.text}


# --- event types (issue 4, section 5) -------------------------------------------------------------
TUNNEL_UP: Final = "tunnel_up"
TUNNEL_DOWN: Final = "tunnel_down"
STATE_CHANGED: Final = "state_changed"
REKEY_STARTED: Final = "rekey_started"
REKEY_COMPLETED: Final = "rekey_completed"
REKEY_FAILED: Final = "rekey_failed"
SA_ADDED: Final = "sa_added"
SA_DELETED: Final = "sa_deleted"
SA_EXPIRED: Final = "sa_expired"
ACQUIRE: Final = "acquire"
NEGOTIATION_FAILED: Final = "negotiation_failed"
NAT_MAPPING_CHANGED: Final = "nat_mapping_changed"
REPLAY_ERRORS: Final = "replay_errors"
INTEGRITY_ERRORS: Final = "integrity_errors"
POLICY_ADDED: Final = "policy_added"
POLICY_REMOVED: Final = "policy_removed"
RESYNC: Final = "resync"
COUNTER_ANOMALY: Final = "counter_anomaly"
OSEQ_EXHAUSTION: Final = "oseq_exhaustion"
TUNNEL_SUPERSEDED: Final = "tunnel_superseded"
TUNNEL_JOINED: Final = "tunnel_joined"

EVENT_TYPES: Final = frozenset({
    TUNNEL_UP, TUNNEL_DOWN, STATE_CHANGED, REKEY_STARTED, REKEY_COMPLETED, REKEY_FAILED, SA_ADDED,
    SA_DELETED, SA_EXPIRED, ACQUIRE, NEGOTIATION_FAILED, NAT_MAPPING_CHANGED, REPLAY_ERRORS,
    INTEGRITY_ERRORS, POLICY_ADDED, POLICY_REMOVED, RESYNC, COUNTER_ANOMALY, OSEQ_EXHAUSTION, TUNNEL_SUPERSEDED,
    TUNNEL_JOINED,
})

# --- reasons: why a tunnel is in its state ---------------------------------------------------------
#: Advice appended to ``no_traffic`` and ``no_sa``, by the peer's kind (``[health] peer_kind``).
PEER_ADVICE: Final[dict[str, str]] = {
    "generic": (
        "If the peer never initiates (a responder-only gateway), keep traffic flowing or let this side "
        "restart the tunnel (DPD action restart, start action start or trap)."
    ),
    "aws": (
        "The AWS side never initiates: keep traffic flowing (for example a ping every 5 s from the "
        "application server) or make the customer side restart the tunnel (DPD action restart, "
        "start action start)."
    ),
}
REASONS: Final[dict[str, str]] = {
    "established": "Both directions have a live SA.",
    "no_traffic": "No bytes in either direction for {idle_after:g} s. {peer_advice}",
    "inbound_flat": (
        "Outbound bytes grow but nothing has arrived for {one_way_after:g} s: the peer is not "
        "answering, or the far side's selectors or allowed ranges do not include the sources."
    ),
    "outbound_flat": (
        "Inbound bytes grow but nothing has been sent for {one_way_after:g} s: this side receives and "
        "never answers, for example a return route that leaves outside the tunnel or a local firewall."
    ),
    "soft_expired": "Soft lifetime reached: the IKE daemon is negotiating a new SA pair.",
    "hard_expiry_near": "Hard expiry in under {expiring_margin:g} s and no new SA pair is installed.",
    "hard_volume_near": "The SA is near its hard byte or packet limit and no new SA pair is installed.",
    "replay_errors": "Replay-protection drops are increasing (duplicated or badly reordered packets).",
    "integrity_errors": "Integrity-check failures are increasing (wrong keys, corruption or an attack).",
    "no_sa": "Policies are configured but no SA is installed. {peer_advice}",
    "missing_in": "No inbound SA: only the outbound direction is installed.",
    "missing_out": "No outbound SA: only the inbound direction is installed.",
    "hard_expired": "The SA reached its hard lifetime without a replacement; the kernel deleted it.",
    "sa_deleted": "The IKE daemon deleted the SAs with no replacement (IKE delete, DPD or shutdown).",
    "flushed": "All SAs of the netns were flushed.",
    "missing_from_dump": "The SAs are gone: a full dump no longer reports them (their deletion event was not seen).",
    "negotiation_failed": "Traffic triggered an ACQUIRE but no SA was negotiated within {acquire_grace:g} s.",
    "netns_removed": "The network namespace was removed.",
    "superseded": "Replaced by another tunnel with the same outer addresses that took over its policies under a "
                  "new reqid (the IKE daemon re-negotiated the connection): this one is gone, not down.",
}

# --- hints: what to look at -------------------------------------------------------------------------
HINTS: Final[dict[str, str]] = {
    "one_way": (
        "Check that the peer answers and that the far side's selectors / allowed ranges include "
        "the sources (the FAQ's device ranges)."
    ),
    "one_way_out": (
        "Check that the local hosts answer and that their replies are routed into the tunnel (a return "
        "route or source address outside the local selectors sends them in the clear or nowhere)."
    ),
    "oseq_exhaustion": (
        "SA {spi} has no ESN and its 32-bit output sequence number is at {oseq}: at 2^32 the kernel drops "
        "every packet until the SA is replaced. Enable ESN (esn = yes) or rekey sooner (life_packets)."
    ),
    "selector_overlap": "Selectors overlap with {other} ({ranges}); AWS Transit Gateway refuses "
                        "overlapping CIDRs and overlaps misroute traffic.",
    "uncovered_remote_range": "Expected remote range {range} is not covered by any policy.",
    "reserved_range": "Local selector {selector} overlaps {reserved}, which the peer reserves for itself "
                      "(reserved_local_ranges): traffic to it will not reach this side.",
    "too_many_local_ranges": "{count} local ranges towards peer {peer} ({ranges}); the peer accepts at most "
                             "{limit} (max_local_ranges).",
    "direction_unknown": "Neither SA_DIR, policies nor configured local addresses tell which end is "
                         "local; local/remote and in/out are a guess.",
    "repeated_acquire": "Traffic keeps hitting the policy with no SA ({count} ACQUIREs).",
    "nat_mapping": "The NAT-T peer address/port changed (NAT rebinding).",
}

XFRM_STAT_HINTS: Final[dict[str, str]] = {
    "XfrmInNoStates": "Inbound ESP with an SPI no SA matches: the peer uses an SA we deleted or never "
                      "installed (a rekey race, or the peer restarted).",
    "XfrmOutNoStates": "Outbound traffic matched a policy with no SA: the tunnel is down and the customer "
                       "side must (re)initiate.",
    "XfrmInNoPols": "Decrypted inbound packets matched no policy: the selectors do not cover the sources.",
    "XfrmInTmplMismatch": "Inbound packets did not match the policy template (wrong SA/selector pairing).",
    "XfrmOutPolBlock": "Outbound packets were dropped by a block policy.",
    "XfrmInStateProtoError": "Inbound protocol errors (bad ESP: wrong keys or corrupted packets).",
    "XfrmInStateSeqError": "Inbound sequence errors (replay window).",
    "XfrmInStateExpired": "Inbound packets hit an expired SA.",
    "XfrmOutStateExpired": "Outbound packets hit an expired SA.",
    "XfrmInStateMismatch": "Inbound packets matched an SA with the wrong selector.",
    "XfrmInStateInvalid": "Inbound packets hit an invalid SA.",
    "XfrmOutStateInvalid": "Outbound packets hit an invalid SA.",
    "XfrmInError": "Generic inbound IPsec errors.",
    "XfrmOutError": "Generic outbound IPsec errors.",
    "XfrmInBufferError": "Inbound buffer errors (out of memory).",
    "XfrmInHdrError": "Inbound header errors.",
    "XfrmOutBundleGenError": "Outbound bundle creation errors.",
    "XfrmOutBundleCheckError": "Outbound bundle check errors.",
    "XfrmOutStateProtoError": "Outbound protocol errors.",
    "XfrmOutStateModeError": "Outbound mode errors.",
    "XfrmOutStateSeqError": "Outbound sequence-number overflow.",
    "XfrmInPolBlock": "Inbound packets were dropped by a block policy.",
    "XfrmInPolError": "Inbound policy errors.",
    "XfrmOutPolError": "Outbound policy errors.",
    "XfrmAcquireError": "ACQUIRE could not be delivered (no IKE daemon listening?).",
    "XfrmFwdHdrError": "Forwarded packets had header errors.",
}


def reason(code: str, config: HealthConfig, **fmt: object) -> Reason:
    """Build the ``Reason`` for ``code``, filling thresholds from ``config`` and ``fmt``."""
    values: dict[str, object] = {
        "idle_after": config.idle_after, "one_way_after": config.one_way_after,
        "expiring_margin": config.expiring_margin, "acquire_grace": config.acquire_grace,
        "peer_advice": PEER_ADVICE[config.peer_kind],
    }
    values.update(fmt)
    return Reason(code, REASONS[code].format(**values))


def hint(code: str, **fmt: object) -> Reason:
    """Build the hint ``code`` (a ``Reason``) with its text filled from ``fmt``."""
    if code in XFRM_STAT_HINTS:
        return Reason(code, XFRM_STAT_HINTS[code])
    return Reason(code, HINTS[code].format(**fmt))
