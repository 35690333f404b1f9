"""The prober's configuration: ``[prober]`` and its ``[[prober.targets]]`` validated into frozen values (pure).

Each error names the offending key (``prober.targets[2].target``) and raises ``ConfigError``; see
docs/configuration.md. The decision core is ``monitor.probe.prober``, the safety rule
``monitor.probe.safety``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from monitor.errors import ConfigError

if TYPE_CHECKING:
    from monitor.probe.safety import TunnelView

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
ProbeKind = Literal["icmp", "udp"]


@dataclass(frozen=True, slots=True)
class TargetSpec:
    """One ``[[prober.targets]]`` entry: which tunnel(s), and what to send where."""

    target: IPAddress
    tunnel: str | None = None
    reqid: int | None = None
    netns: str | None = None
    source: IPAddress | None = None
    kind: ProbeKind = "icmp"
    port: int = 33434

    def matches(self, view: TunnelView) -> bool:
        """True if this entry applies to the tunnel (by id, by reqid/netns, or by remote selector)."""
        if self.tunnel is not None:
            return view.id == self.tunnel
        if self.netns is not None and view.netns != self.netns:
            return False
        if self.reqid is not None:
            return view.reqid == self.reqid
        return any(self.target in sel.remote for sel in view.selectors if sel.remote.version == self.target.version)


@dataclass(frozen=True, slots=True)
class ProberConfig:
    """The ``[prober]`` table. Times in seconds; ``rate`` in probes per second for the whole monitor."""

    enabled: bool = False
    idle_after: float = 20.0
    interval: float = 10.0
    timeout: float = 2.0
    rate: float = 5.0
    burst: int = 10
    payload: int = 16
    targets: tuple[TargetSpec, ...] = ()

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> ProberConfig:
        """Build from the parsed TOML ``[prober]`` table.

        Raises:
            ConfigError: on an unknown key, a wrong type, or an out-of-range value.
        """
        known = {"enabled", "idle_after", "interval", "timeout", "rate", "burst", "payload", "targets", "kind"}
        unknown = set(raw) - known
        if unknown:
            raise ConfigError(f"[prober]: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
        default_kind = _kind(raw.get("kind", "icmp"), "[prober].kind")
        cfg = cls(
            enabled=_bool(raw.get("enabled", False), "[prober].enabled"),
            idle_after=_positive(raw.get("idle_after", 20.0), "[prober].idle_after"),
            interval=_positive(raw.get("interval", 10.0), "[prober].interval"),
            timeout=_positive(raw.get("timeout", 2.0), "[prober].timeout"),
            rate=_positive(raw.get("rate", 5.0), "[prober].rate"),
            burst=int(_positive(raw.get("burst", 10), "[prober].burst")),
            payload=int(_positive(raw.get("payload", 16), "[prober].payload")),
            targets=tuple(_target(t, i, default_kind) for i, t in enumerate(raw.get("targets", []))),
        )
        if cfg.payload > 1024:
            raise ConfigError("[prober].payload: at most 1024 bytes (a keepalive is small)")
        if cfg.timeout > cfg.interval:
            raise ConfigError("[prober].timeout must not exceed [prober].interval")
        if cfg.enabled and not cfg.targets:
            raise ConfigError("[prober] is enabled but lists no [[prober.targets]]")
        return cfg


def _bool(v: object, where: str) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(f"{where}: expected true or false, got {v!r}")
    return v


def _positive(v: object, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or v <= 0:
        raise ConfigError(f"{where}: expected a positive number, got {v!r}")
    return float(v)


def _kind(v: object, where: str) -> ProbeKind:
    if v == "icmp":
        return "icmp"
    if v == "udp":
        return "udp"
    raise ConfigError(f"{where}: expected 'icmp' or 'udp', got {v!r}")


def _addr(v: object, where: str) -> IPAddress:
    try:
        return ipaddress.ip_address(str(v))
    except ValueError:
        raise ConfigError(f"{where}: not an IP address: {v!r}") from None


def _target(raw: object, i: int, default_kind: ProbeKind) -> TargetSpec:
    where = f"[[prober.targets]] #{i + 1}"
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a table")
    unknown = set(raw) - {"target", "tunnel", "reqid", "netns", "source", "kind", "port"}
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}")
    if "target" not in raw:
        raise ConfigError(f"{where}: 'target' (the address to probe, inside the remote selectors) is required")
    if "tunnel" in raw and ("reqid" in raw or "netns" in raw):
        raise ConfigError(f"{where}: give either 'tunnel' or 'reqid'/'netns', not both")
    reqid = raw.get("reqid")
    if reqid is not None and (isinstance(reqid, bool) or not isinstance(reqid, int) or reqid < 0):
        raise ConfigError(f"{where}.reqid: expected a non-negative integer, got {reqid!r}")
    port = raw.get("port", 33434)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ConfigError(f"{where}.port: expected 1..65535, got {port!r}")
    target = _addr(raw["target"], f"{where}.target")
    source = _addr(raw["source"], f"{where}.source") if "source" in raw else None
    if source is not None and source.version != target.version:
        raise ConfigError(f"{where}: source and target are of different IP versions")
    return TargetSpec(
        target=target,
        tunnel=str(raw["tunnel"]) if "tunnel" in raw else None,
        reqid=reqid,
        netns=str(raw["netns"]) if "netns" in raw else None,
        source=source,
        kind=_kind(raw.get("kind", default_kind), f"{where}.kind"),
        port=port,
    )
