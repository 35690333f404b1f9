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
- **Safety rule** (``monitor.probe.safety``): a probe is only ever emitted when one selector of the
  tunnel covers *both* its source and its target; anything else is refused and reported in
  ``last_error``, never sent. The configuration is validated in ``monitor.probe.targets``.
- The I/O shell (``monitor.probe.runner``) sends what ``due()`` returns and reports back with
  ``on_answer`` / ``on_lost`` / ``on_error``. ``probe_json(id)`` is the tunnel's ``probe`` field.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from monitor.probe.safety import TunnelView, check_probe, pick_source, tunnel_view
from monitor.probe.targets import IPAddress, ProbeKind, ProberConfig, TargetSpec

# Correlator states in which the prober may act without waiting for idle_after of flat counters.
IDLE_STATES = frozenset({"idle", "down"})


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
