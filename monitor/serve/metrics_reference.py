"""The reference exposition: the same samples through ``prometheus_client.generate_latest``.

``monitor.serve.metrics.render`` writes the text format itself (fast, in a worker thread); the tests and the
metrics bench compare it with this module's, which lets prometheus_client do the formatting. They compare the
parsed families (names, types, help, every sample's labels and value), not the bytes: ours writes counters as
integers (``123``) where ``generate_latest`` writes ``123.0``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from monitor.serve.metrics import (
    _C,
    _HELP,
    HEAP_METRICS,
    HISTORY_METRICS,
    INFO_LABELS,
    TUNNEL_LABELS,
    MonitorSample,
    TunnelSample,
    _aggregate,
    count_states,
)


class MonitorCollector:
    """A ``prometheus_client`` collector over already-gathered samples: the reference for :func:`render`."""

    def __init__(self, tunnels: Iterable[TunnelSample], mon: MonitorSample,
                 counts: Mapping[tuple[str, str], int] | None = None) -> None:
        self.tunnels = list(tunnels)
        self.mon = mon
        self.counts = count_states(self.tunnels) if counts is None else counts

    def collect(self) -> Iterator[Metric]:
        """Yield every metric family (called by ``generate_latest``)."""
        yield from self._tunnel_families()
        yield from self._monitor_families()

    @staticmethod
    def _family(name: str, labels: list[str] | None = None,
                value: float | None = None) -> CounterMetricFamily | GaugeMetricFamily:
        kind, doc = _HELP[name]
        cls = CounterMetricFamily if kind == _C else GaugeMetricFamily
        return cls(name, doc, labels=labels, value=value)

    def _tunnel_families(self) -> Iterator[Metric]:
        fam, tl, dl = self._family, TUNNEL_LABELS, [*TUNNEL_LABELS, "direction"]
        nbytes, pkts = fam("ipsec_tunnel_bytes", dl), fam("ipsec_tunnel_packets", dl)
        rekeys, fails = fam("ipsec_tunnel_rekeys", tl), fam("ipsec_tunnel_rekey_failures", tl)
        state = fam("ipsec_tunnel_state", [*TUNNEL_LABELS, "state"])
        hard = fam("ipsec_tunnel_hard_expiry_seconds", tl)
        replay, integ = fam("ipsec_tunnel_replay_errors", tl), fam("ipsec_tunnel_integrity_errors", tl)
        flaps, down = fam("ipsec_tunnel_flaps", tl), fam("ipsec_tunnel_downtime_seconds", tl)
        info = fam("ipsec_tunnel_info")  # a label set per sample: if_id and mark only where set
        ike = fam("ipsec_tunnel_ike_info", ["id", "netns", "conn", "child"])
        for t in self.tunnels:
            netns, reqid, local, remote, tid, if_id, mark = t.labels
            values = {"id": tid, "if_id": if_id, "local": local, "mark": mark, "netns": netns, "remote": remote,
                      "reqid": reqid}
            info.add_sample("ipsec_tunnel_info", {k: values[k] for k in INFO_LABELS if values[k]
                                                  or k not in ("if_id", "mark")}, 1.0)
            lab = [tid]
            nbytes.add_metric([*lab, "in"], t.bytes_in)
            nbytes.add_metric([*lab, "out"], t.bytes_out)
            pkts.add_metric([*lab, "in"], t.packets_in)
            pkts.add_metric([*lab, "out"], t.packets_out)
            rekeys.add_metric(lab, t.rekeys)
            fails.add_metric(lab, t.rekey_failures)
            state.add_metric([*lab, t.state], 1.0)  # the current state only
            if t.hard_expires_in is not None:
                hard.add_metric(lab, t.hard_expires_in)
            replay.add_metric(lab, t.replay_errors)
            integ.add_metric(lab, t.integrity_errors)
            flaps.add_metric(lab, t.flaps)
            down.add_metric(lab, t.downtime)
            if t.ike is not None:
                ike.add_metric([tid, netns, *t.ike], 1.0)
        yield from (info, nbytes, pkts, rekeys, fails, state, hard, replay, integ, flaps, down, ike)

    def _monitor_families(self) -> Iterator[Metric]:
        m, fam = self.mon, self._family
        agg = fam("ipsec_tunnels", ["netns", "state"])
        for ns, s, n in _aggregate(self.counts, m):
            agg.add_metric([ns, s], n)
        yield agg
        enobufs, resyncs = fam("ipsec_monitor_enobufs", ["netns"]), fam("ipsec_monitor_resyncs", ["netns"])
        for ns in sorted(set(m.enobufs) | set(m.resyncs) | set(m.dumps)):
            enobufs.add_metric([ns], float(m.enobufs.get(ns, 0)))
            resyncs.add_metric([ns], float(m.resyncs.get(ns, 0)))
        yield enobufs
        yield resyncs
        stat = fam("ipsec_xfrm_stat", ["counter", "netns"])
        for ns, counters in sorted(m.xfrm_stat.items()):
            for c, v in sorted(counters.items()):
                stat.add_metric([c, ns], float(v))
        yield stat
        yield fam("ipsec_monitor_event_loop_lag_seconds", value=m.lag)
        dur = fam("ipsec_monitor_last_dump_duration_seconds", ["netns"])
        age = fam("ipsec_monitor_last_dump_age_seconds", ["netns"])
        for ns, d in sorted(m.dumps.items()):
            if d.get("last_dump_duration") is not None:
                dur.add_metric([ns], float(d["last_dump_duration"] or 0.0))
            if d.get("last_dump") is not None:
                age.add_metric([ns], max(0.0, m.now - float(d["last_dump"] or 0.0)))
        yield dur
        yield age
        yield fam("ipsec_monitor_ws_clients", value=m.clients)
        yield fam("ipsec_monitor_ws_gaps", value=m.gaps)
        yield fam("ipsec_monitor_ws_dropped_events", value=m.dropped)
        yield fam("ipsec_monitor_ws_stalled", value=m.stalled)
        for name in HISTORY_METRICS:
            if name in m.history:
                yield fam(name, value=m.history[name])
        for name in HEAP_METRICS:
            if name in m.heap:
                yield fam(name, value=m.heap[name])


def render_prometheus_client(tunnels: Iterable[TunnelSample], mon: MonitorSample,
                             counts: Mapping[tuple[str, str], int] | None = None) -> bytes:
    """The same exposition through ``prometheus_client.generate_latest`` (reference for tests and bench)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MonitorCollector(tunnels, mon, counts))
    return generate_latest(registry)


Family = tuple[str, str, str, list[tuple[str, tuple[tuple[str, str], ...], float]]]


def families(text: str | bytes) -> list[Family]:
    """An exposition parsed by ``prometheus_client``'s parser: ``(name, type, help, [(sample name, sorted labels,
    value)])`` per family, in order (what the differential tests compare)."""
    if isinstance(text, bytes):
        text = text.decode()
    return [(f.name, f.type, f.documentation, [(s.name, tuple(sorted(s.labels.items())), s.value) for s in f.samples])
            for f in text_string_to_metric_families(text)]
