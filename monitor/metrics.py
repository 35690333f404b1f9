"""Prometheus exposition, computed from the correlator at scrape time.

Names are the contract in ARCHITECTURE.md "Prometheus names". Per-tunnel series carry exactly the
labels ``netns, reqid, local, remote`` (plus ``direction`` or ``state``): one set per tunnel, never per
SA or SPI, so the series count is bounded by the tunnel count.

A scrape runs in two steps so that 100k tunnels never block the event loop for long:
:func:`gather` reads the correlator on the loop in chunks (yielding between them), and
:func:`render` turns the immutable samples into text in a worker thread through a
``prometheus_client`` custom collector.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, NamedTuple

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from monitor.hub import STATES, TunnelView

TUNNEL_LABELS = ["netns", "reqid", "local", "remote"]


class TunnelSample(NamedTuple):
    """What the metrics need from one tunnel's public JSON."""

    labels: tuple[str, str, str, str]
    bytes_in: float
    bytes_out: float
    packets_in: float
    packets_out: float
    rekeys: float
    rekey_failures: float
    state: str
    hard_expires_in: float | None
    replay_errors: float
    integrity_errors: float


class MonitorSample(NamedTuple):
    """Process-wide numbers from the daemon and the hub."""

    enobufs: Mapping[str, int]
    resyncs: Mapping[str, int]
    lag: float
    dumps: Mapping[str, Mapping[str, float | None]]
    now: float
    clients: int
    gaps: int
    dropped: int
    stalled: int


def _num(v: Any) -> float:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else 0.0


def _errors(t: Mapping[str, Any], key: str, sa_keys: tuple[str, ...]) -> float:
    """A tunnel-level error total, or the sum over its SAs when only those carry it."""
    if key in t:
        return _num(t[key])
    total = 0.0
    for sa in t.get("sas") or ():
        for k in sa_keys:
            if k in sa:
                total += _num(sa[k])
                break
    return total


def sample(t: Mapping[str, Any]) -> TunnelSample:
    """Pick the metric values out of one tunnel's public JSON."""
    hard = t.get("hard_expires_in")
    return TunnelSample(
        (str(t.get("netns", "")), str(t.get("reqid", "")), str(t.get("local", "")), str(t.get("remote", ""))),
        _num(t.get("bytes_in")), _num(t.get("bytes_out")),
        _num(t.get("packets_in")), _num(t.get("packets_out")),
        _num(t.get("rekeys")), _num(t.get("rekey_failures")),
        str(t.get("state", "")),
        float(hard) if isinstance(hard, int | float) else None,
        _errors(t, "replay_errors", ("replay_errors", "replay")),
        _errors(t, "integrity_errors", ("integrity_errors", "integrity_failed")),
    )


async def gather(view: TunnelView, now: float, chunk: int = 250) -> list[TunnelSample]:
    """Sample every tunnel, yielding to the loop every ``chunk`` tunnels."""
    out: list[TunnelSample] = []
    for i, tid in enumerate(list(view.tunnel_ids())):
        if i and i % chunk == 0:
            await asyncio.sleep(0)
        t = view.tunnel_json(tid, now)
        if t is not None:
            out.append(sample(t))
    return out


class MonitorCollector:
    """A ``prometheus_client`` collector over already-gathered samples."""

    def __init__(self, tunnels: Iterable[TunnelSample], mon: MonitorSample) -> None:
        self.tunnels = list(tunnels)
        self.mon = mon

    def collect(self) -> Iterator[Metric]:
        """Yield every metric family (called by ``generate_latest``)."""
        yield from self._tunnel_families()
        yield from self._monitor_families()

    def _tunnel_families(self) -> Iterator[Metric]:
        dl = [*TUNNEL_LABELS, "direction"]
        nbytes = CounterMetricFamily("ipsec_tunnel_bytes", "Bytes through the tunnel, over all SA generations.",
                                     labels=dl)
        pkts = CounterMetricFamily("ipsec_tunnel_packets", "Packets through the tunnel, over all SA generations.",
                                   labels=dl)
        rekeys = CounterMetricFamily("ipsec_tunnel_rekeys", "Completed rekeys.", labels=TUNNEL_LABELS)
        fails = CounterMetricFamily("ipsec_tunnel_rekey_failures", "Failed rekeys.", labels=TUNNEL_LABELS)
        state = GaugeMetricFamily("ipsec_tunnel_state", "Health state of the tunnel (one-hot).",
                                  labels=[*TUNNEL_LABELS, "state"])
        hard = GaugeMetricFamily("ipsec_tunnel_hard_expiry_seconds",
                                 "Seconds until the earliest hard expiry of the tunnel's current SAs.",
                                 labels=TUNNEL_LABELS)
        replay = CounterMetricFamily("ipsec_tunnel_replay_errors", "Packets dropped by replay protection.",
                                     labels=TUNNEL_LABELS)
        integ = CounterMetricFamily("ipsec_tunnel_integrity_errors", "Packets failing the integrity check.",
                                    labels=TUNNEL_LABELS)
        for t in self.tunnels:
            lab = list(t.labels)
            nbytes.add_metric([*lab, "in"], t.bytes_in)
            nbytes.add_metric([*lab, "out"], t.bytes_out)
            pkts.add_metric([*lab, "in"], t.packets_in)
            pkts.add_metric([*lab, "out"], t.packets_out)
            rekeys.add_metric(lab, t.rekeys)
            fails.add_metric(lab, t.rekey_failures)
            states = STATES if t.state in STATES else (*STATES, t.state)
            for s in states:
                state.add_metric([*lab, s], 1.0 if s == t.state else 0.0)
            if t.hard_expires_in is not None:
                hard.add_metric(lab, t.hard_expires_in)
            replay.add_metric(lab, t.replay_errors)
            integ.add_metric(lab, t.integrity_errors)
        yield from (nbytes, pkts, rekeys, fails, state, hard, replay, integ)

    def _monitor_families(self) -> Iterator[Metric]:
        m = self.mon
        enobufs = CounterMetricFamily("ipsec_monitor_enobufs", "ENOBUFS overruns of the netlink socket.",
                                      labels=["netns"])
        resyncs = CounterMetricFamily("ipsec_monitor_resyncs", "Full resync dumps after an overrun.",
                                      labels=["netns"])
        for ns in sorted(set(m.enobufs) | set(m.resyncs) | set(m.dumps)):
            enobufs.add_metric([ns], float(m.enobufs.get(ns, 0)))
            resyncs.add_metric([ns], float(m.resyncs.get(ns, 0)))
        yield enobufs
        yield resyncs
        yield GaugeMetricFamily("ipsec_monitor_event_loop_lag_seconds",
                                "Max event-loop lag over the last few seconds.", value=m.lag)
        dur = GaugeMetricFamily("ipsec_monitor_last_dump_duration_seconds", "Duration of the last full dump.",
                                labels=["netns"])
        age = GaugeMetricFamily("ipsec_monitor_last_dump_age_seconds", "Seconds since the last full dump ended.",
                                labels=["netns"])
        for ns, d in sorted(m.dumps.items()):
            if d.get("last_dump_duration") is not None:
                dur.add_metric([ns], float(d["last_dump_duration"] or 0.0))
            if d.get("last_dump") is not None:
                age.add_metric([ns], max(0.0, m.now - float(d["last_dump"] or 0.0)))
        yield dur
        yield age
        yield GaugeMetricFamily("ipsec_monitor_ws_clients", "Connected websocket clients.", value=m.clients)
        yield CounterMetricFamily("ipsec_monitor_ws_gaps", "Gap messages sent to slow websocket clients.",
                                  value=m.gaps)
        yield CounterMetricFamily("ipsec_monitor_ws_dropped_events",
                                  "Events dropped from slow websocket clients' queues.", value=m.dropped)
        yield CounterMetricFamily("ipsec_monitor_ws_stalled",
                                  "Websocket clients closed for being stalled (code 4008).", value=m.stalled)


def render(tunnels: Iterable[TunnelSample], mon: MonitorSample) -> bytes:
    """Prometheus text exposition of the samples (safe to run in a worker thread)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MonitorCollector(tunnels, mon))
    return generate_latest(registry)


async def scrape(view: TunnelView, mon: MonitorSample) -> bytes:
    """Gather on the loop, render in a thread."""
    tunnels = await gather(view, mon.now if mon.now else time.time())
    return await asyncio.get_running_loop().run_in_executor(None, render, tunnels, mon)
