"""Keepalive prober: the pure decision core (which tunnel to probe, when, and whether it is allowed).

Why: cloud VPN endpoints (AWS VGW/TGW, hence CloudConnect) never initiate. An idle tunnel times out and
stays down until the customer side sends traffic again (the seed FAQ: "create a host that sends ICMP
requests ... every 5 seconds"). The prober is that host, built in, **off by default**.

Theory of operation (sans-IO, like the correlator: explicit ``now`` in, no sockets, no clock):

- The operator lists targets (``[[prober.targets]]``): a tunnel id, or a reqid (optionally with a
  netns), or nothing but the target address (then it applies to every tunnel whose remote selectors
  contain that address). Each names the address to probe and optionally the source address.
- ``observe(tunnel_json, now)`` is fed the tunnel's public JSON. The prober remembers when the byte
  counters last moved. A tunnel is *idle* when they have not moved for ``idle_after`` seconds, or when
  the correlator already says ``idle`` or ``down`` (a probe through a trap policy makes the IKE daemon
  initiate: exactly the FAQ's "actively try to re-establish").
- ``due(now)`` returns the probes to send now: idle tunnels whose last probe is at least ``interval``
  old, most idle first, as long as the fleet-wide token bucket has tokens (``rate``/s, ``burst``).
- **Safety rule**: a probe is only ever emitted when one selector of the tunnel covers *both* its
  source (local side) and its target (remote side), with a protocol and port the selector admits.
  Anything else is refused and reported in ``last_error``; it is never sent. Without this rule a probe
  that matches no IPsec policy would leave the host in the clear, towards an arbitrary address.
- The I/O shell (``monitor.probe.runner``) sends what ``due()`` returns and reports back with
  ``on_answer`` / ``on_lost`` / ``on_error``. ``probe_json(id)`` is the tunnel's ``probe`` field.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from monitor.errors import ConfigError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
ProbeKind = Literal["icmp", "udp"]

IPPROTO_ICMP = 1
IPPROTO_UDP = 17
IPPROTO_ICMPV6 = 58
ICMP_ECHO_REQUEST = 8
ICMPV6_ECHO_REQUEST = 128
# Correlator states in which the prober may act without waiting for idle_after of flat counters.
IDLE_STATES = frozenset({"idle", "down"})


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


# --------------------------------------------------------------------------------------------- tunnels


@dataclass(frozen=True, slots=True)
class SelectorView:
    """One traffic selector, oriented from this host: ``local`` side and ``remote`` side."""

    local: IPNetwork
    remote: IPNetwork
    proto: int = 0
    rport: int = 0
    rport_mask: int = 0
    lport: int = 0
    lport_mask: int = 0

    def admits(self, source: IPAddress, target: IPAddress, proto: int, dport: int) -> bool:
        """True if a packet source->target (proto, destination port) falls under this selector."""
        if source.version != self.local.version or target.version != self.remote.version:
            return False
        if source not in self.local or target not in self.remote:
            return False
        if self.proto not in (0, proto):
            return False
        if proto == IPPROTO_UDP:
            # the probe leaves from an ephemeral source port: only a selector that leaves it open admits it
            return self.lport_mask == 0 and (dport & self.rport_mask) == (self.rport & self.rport_mask)
        # ICMP: xfrm_flowi_sport()/xfrm_flowi_dport() match the type against the selector's sport and the
        # code against its dport; an echo request is type 8 (ICMPv6: 128), code 0. Demand an open code.
        echo = ICMP_ECHO_REQUEST if target.version == 4 else ICMPV6_ECHO_REQUEST
        return self.rport_mask == 0 and (echo & self.lport_mask) == (self.lport & self.lport_mask)


@dataclass(frozen=True, slots=True)
class TunnelView:
    """What the prober needs from a tunnel's public JSON."""

    id: str
    netns: str
    reqid: int
    state: str
    bytes_in: int
    bytes_out: int
    selectors: tuple[SelectorView, ...]


def _net(v: object) -> IPNetwork:
    return ipaddress.ip_network(str(v), strict=False)


def _selector(raw: Mapping[str, Any]) -> SelectorView | None:
    """Read one entry of the tunnel JSON's ``selectors`` list (tolerant of the known spellings)."""
    direction = str(raw.get("dir", raw.get("direction", "out")))
    if "local" in raw and "remote" in raw:
        local, remote = _net(raw["local"]), _net(raw["remote"])
    elif "src" in raw and "dst" in raw:
        src, dst = _net(raw["src"]), _net(raw["dst"])
        local, remote = (dst, src) if direction == "in" else (src, dst)
    elif "saddr" in raw and "daddr" in raw:
        src = _net(f"{raw['saddr']}/{raw.get('prefixlen_s', 0)}")
        dst = _net(f"{raw['daddr']}/{raw.get('prefixlen_d', 0)}")
        local, remote = (dst, src) if direction == "in" else (src, dst)
    else:
        return None
    remote_key, local_key = ("sport", "dport") if direction == "in" else ("dport", "sport")
    rport, rmask = _port(raw, remote_key)
    lport, lmask = _port(raw, local_key)
    return SelectorView(local, remote, int(raw.get("proto", 0) or 0), rport, rmask, lport, lmask)


def _port(raw: Mapping[str, Any], key: str) -> tuple[int, int]:
    """``(port, mask)`` of one side; a port given without a mask is an exact match (mask 0xffff)."""
    port, mask = int(raw.get(key, 0)), int(raw.get(f"{key}_mask", 0))
    return port, (0xFFFF if mask == 0 and port else mask)


def tunnel_view(tunnel: Mapping[str, Any]) -> TunnelView:
    """Extract a ``TunnelView`` from one tunnel of the public JSON (schema 1).

    Selectors that cannot be read are skipped: fewer selectors only means fewer allowed probes.
    """
    sels: list[SelectorView] = []
    for raw in tunnel.get("selectors") or ():
        if isinstance(raw, Mapping):
            try:
                sel = _selector(raw)
            except (ValueError, TypeError):
                sel = None
            if sel is not None:
                sels.append(sel)
    reqid = tunnel.get("reqid")
    return TunnelView(
        id=str(tunnel["id"]),
        netns=str(tunnel.get("netns", "")),
        reqid=int(reqid) if isinstance(reqid, int) else -1,
        state=str(tunnel.get("state", "")),
        bytes_in=int(tunnel.get("bytes_in") or 0),
        bytes_out=int(tunnel.get("bytes_out") or 0),
        selectors=tuple(sels),
    )


def pick_source(local_addrs: Iterable[IPAddress], view: TunnelView, target: IPAddress) -> IPAddress | None:
    """The first local address that a selector covering ``target`` admits as source, or None."""
    addrs = list(local_addrs)
    for sel in view.selectors:
        if sel.remote.version != target.version or target not in sel.remote:
            continue
        for a in addrs:
            if a.version == sel.local.version and a in sel.local:
                return a
    return None


def check_probe(view: TunnelView, source: IPAddress, target: IPAddress, kind: ProbeKind, port: int) -> str | None:
    """The safety rule. None if some selector of the tunnel admits the probe, else the refusal reason."""
    proto = IPPROTO_UDP if kind == "udp" else (IPPROTO_ICMP if target.version == 4 else IPPROTO_ICMPV6)
    if not view.selectors:
        return f"refused: tunnel {view.id} has no traffic selectors, a probe to {target} would not be protected"
    if any(sel.admits(source, target, proto, port) for sel in view.selectors):
        return None
    if not any(target in sel.remote for sel in view.selectors if sel.remote.version == target.version):
        return f"refused: target {target} is outside the tunnel's remote selectors"
    if not any(source in sel.local for sel in view.selectors if sel.local.version == source.version):
        return f"refused: source {source} is outside the tunnel's local selectors"
    return f"refused: no selector of the tunnel admits {kind} {source} -> {target}"


# ------------------------------------------------------------------------------------------- the core


@dataclass(slots=True)
class TokenBucket:
    """``rate`` tokens per second up to ``capacity``; pure (``now`` is given)."""

    rate: float
    capacity: float
    tokens: float = field(init=False)
    last: float | None = None

    def __post_init__(self) -> None:
        self.tokens = self.capacity  # a fresh bucket is full

    def take(self, now: float) -> bool:
        """Take one token if there is one at ``now``."""
        if self.last is not None:
            self.tokens = min(self.capacity, self.tokens + max(0.0, now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def next_token_at(self, now: float) -> float:
        """When a token will next be available (``now`` if one is)."""
        if self.last is None or self.tokens >= 1.0:
            return now
        have = min(self.capacity, self.tokens + max(0.0, now - self.last) * self.rate)
        return now if have >= 1.0 else now + (1.0 - have) / self.rate


@dataclass(frozen=True, slots=True)
class Probe:
    """One probe to send. ``seq`` is unique per prober (ICMP sequence / UDP payload tag)."""

    tunnel: str
    netns: str
    source: IPAddress | None
    target: IPAddress
    kind: ProbeKind
    port: int
    seq: int
    sent_at: float
    payload: int


@dataclass(slots=True)
class ProbeStats:
    """Per-tunnel results, the tunnel JSON's ``probe`` field."""

    target: str
    kind: ProbeKind
    sent: int = 0
    answered: int = 0
    lost: int = 0
    refused: int = 0
    last_sent: float | None = None
    last_answer: float | None = None
    last_rtt_ms: float | None = None
    last_error: str | None = None
    outstanding: int | None = None  # seq of the probe in flight

    def to_json(self) -> dict[str, Any]:
        """The public ``probe`` object."""
        return {
            "target": self.target,
            "kind": self.kind,
            "sent": self.sent,
            "answered": self.answered,
            "lost": self.lost,
            "refused": self.refused,
            "last_sent": self.last_sent,
            "last_answer": self.last_answer,
            "last_rtt_ms": self.last_rtt_ms,
            "last_error": self.last_error,
        }


@dataclass(slots=True)
class _Tracked:
    view: TunnelView
    spec: TargetSpec
    stats: ProbeStats
    last_activity: float
    next_allowed: float = 0.0


@dataclass(slots=True)
class Prober:
    """Decides which tunnels to probe; keeps per-tunnel probe results. Pure: every method takes ``now``."""

    config: ProberConfig
    bucket: TokenBucket = field(init=False)
    _tracked: dict[str, _Tracked] = field(init=False, default_factory=dict)
    _seq: int = field(init=False, default=0)
    _changed: set[str] = field(init=False, default_factory=set)

    def __post_init__(self) -> None:
        self.bucket = TokenBucket(rate=self.config.rate, capacity=float(self.config.burst))

    def spec_for(self, view: TunnelView) -> TargetSpec | None:
        """The first configured target entry that applies to this tunnel."""
        return next((s for s in self.config.targets if s.matches(view)), None)

    def observe(self, tunnel: Mapping[str, Any], now: float) -> bool:
        """Feed one tunnel's public JSON. Returns True if the tunnel is (now) tracked by the prober."""
        if not self.config.enabled:
            return False
        view = tunnel_view(tunnel)
        tr = self._tracked.get(view.id)
        spec = self.spec_for(view)
        if spec is None:
            self._tracked.pop(view.id, None)
            return False
        if tr is None or tr.spec != spec:
            stats = ProbeStats(target=str(spec.target), kind=spec.kind) if tr is None else tr.stats
            stats.target, stats.kind = str(spec.target), spec.kind
            self._tracked[view.id] = _Tracked(view, spec, stats, last_activity=now)
            return True
        if (view.bytes_in, view.bytes_out) != (tr.view.bytes_in, tr.view.bytes_out):
            tr.last_activity = now
        tr.view = view
        return True

    def forget(self, tunnel_id: str) -> None:
        """The tunnel is gone from the view."""
        self._tracked.pop(tunnel_id, None)

    def take_changed(self) -> set[str]:
        """Ids of tunnels whose ``probe`` field changed since the last call (to publish them)."""
        out, self._changed = self._changed, set()
        return out

    def tracked(self) -> list[str]:
        """Ids of the tunnels the prober looks after."""
        return list(self._tracked)

    def idle_for(self, tunnel_id: str, now: float) -> float | None:
        """Seconds since the tunnel's counters last moved (as observed), or None if not tracked."""
        tr = self._tracked.get(tunnel_id)
        return None if tr is None else now - tr.last_activity

    def _is_idle(self, tr: _Tracked, now: float) -> bool:
        return tr.view.state in IDLE_STATES or now - tr.last_activity >= self.config.idle_after

    def due(self, now: float, local_addrs: Mapping[str, Iterable[IPAddress]] | None = None) -> list[Probe]:
        """The probes to send at ``now``, most idle tunnel first, within the rate limit.

        Args:
            now: the current time.
            local_addrs: per netns, the host's addresses there; used to pick a source address when the
                target entry names none. A tunnel with no usable source is reported, not probed.

        Returns:
            The probes; each is already counted as ``sent`` (call ``on_answer``/``on_lost``/``on_error``).
        """
        ready = [
            tr
            for tr in self._tracked.values()
            if tr.stats.outstanding is None and now >= tr.next_allowed and self._is_idle(tr, now)
        ]
        ready.sort(key=lambda tr: (tr.last_activity, tr.view.id))
        out: list[Probe] = []
        for tr in ready:
            spec = tr.spec
            source = spec.source
            if source is None:
                addrs = (local_addrs or {}).get(tr.view.netns, ())
                source = pick_source(addrs, tr.view, spec.target)
            reason = (
                check_probe(tr.view, source, spec.target, spec.kind, spec.port)
                if source is not None
                else f"refused: no local address of netns {tr.view.netns!r} is inside the tunnel's local "
                "selectors (set 'source')"
            )
            if reason is not None:
                tr.stats.refused += 1
                tr.stats.last_error = reason
                self._changed.add(tr.view.id)
                tr.next_allowed = now + self.config.interval
                continue
            if not self.bucket.take(now):
                break
            assert source is not None
            self._seq = (self._seq + 1) & 0xFFFF
            probe = Probe(tr.view.id, tr.view.netns, source, spec.target, spec.kind, spec.port,
                          self._seq, now, self.config.payload)
            tr.stats.sent += 1
            tr.stats.last_sent = now
            tr.stats.outstanding = probe.seq
            tr.next_allowed = now + self.config.interval
            self._changed.add(tr.view.id)
            out.append(probe)
        return out

    def _current(self, probe: Probe) -> _Tracked | None:
        tr = self._tracked.get(probe.tunnel)
        if tr is None or tr.stats.outstanding != probe.seq:
            return None
        tr.stats.outstanding = None
        self._changed.add(probe.tunnel)
        return tr

    def on_answer(self, probe: Probe, now: float) -> None:
        """The probe was answered at ``now`` (echo reply, UDP reply, or ICMP port unreachable)."""
        tr = self._current(probe)
        if tr is not None:
            tr.stats.answered += 1
            tr.stats.last_answer = now
            tr.stats.last_rtt_ms = round((now - probe.sent_at) * 1000.0, 3)
            tr.stats.last_error = None

    def on_lost(self, probe: Probe, now: float) -> None:
        """No answer within ``timeout``."""
        tr = self._current(probe)
        if tr is not None:
            tr.stats.lost += 1
            tr.stats.last_error = f"no answer from {probe.target} within {self.config.timeout:g}s"

    def on_error(self, probe: Probe, message: str, now: float) -> None:
        """Sending failed locally (permission, no route, ...)."""
        tr = self._current(probe)
        if tr is not None:
            tr.stats.lost += 1
            tr.stats.last_error = message

    def next_deadline(self, now: float) -> float | None:
        """When ``due()`` may next return something (ignoring counter changes not yet observed)."""
        times = []
        for tr in self._tracked.values():
            if tr.stats.outstanding is not None:
                continue
            idle_at = now if tr.view.state in IDLE_STATES else tr.last_activity + self.config.idle_after
            times.append(max(tr.next_allowed, idle_at))
        if not times:
            return None
        return max(min(times), self.bucket.next_token_at(now))

    def probe_json(self, tunnel_id: str) -> dict[str, Any] | None:
        """The tunnel's ``probe`` field, or None if the prober does not look after it."""
        tr = self._tracked.get(tunnel_id)
        return None if tr is None else tr.stats.to_json()

    def annotate(self, tunnel: dict[str, Any]) -> dict[str, Any]:
        """Hook for the daemon: set ``tunnel["probe"]`` (None when not probed) and return the dict."""
        tunnel["probe"] = self.probe_json(str(tunnel.get("id")))
        return tunnel
