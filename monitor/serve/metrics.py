"""Prometheus exposition, computed from the correlator at scrape time.

Names are the contract in ARCHITECTURE.md "Prometheus names". Per-tunnel series carry only the tunnel
``id`` (plus ``direction`` or ``state``): one set per tunnel, never per SA or SPI, so the series count is
bounded by the tunnel count. The id is unique (route-based tunnels that differ only in their xfrm interface
or mark have it in their id); ``ipsec_tunnel_info{id,netns,reqid,local,remote,if_id,mark} 1`` carries the
rest, to join on ``id`` (``if_id``, ``mark`` only where set). ``ipsec_tunnels{netns,state}`` counts the
tunnels per state whatever ``metrics_tunnels`` (``all``, ``unhealthy``: only tunnels not ``up`` or
``rekeying`` get per-tunnel series, ``none``) says.

A scrape runs in two steps so that 100k tunnels never block the event loop for long:
:func:`gather_columns` reads the correlator on the loop in chunks (yielding between them) into compact
``Columns``, and ``monitor.serve.metrics_text`` writes the text format 0.0.4 from them in a worker thread, in
chunks that ``GET /metrics`` streams (gzip-compressed when the scraper accepts it). A correlator with a
``metrics_row`` method (``monitor.health.correlate.Correlator``) is read through it; any other view (the IKE
view, test fakes) through its public JSON (:func:`sample`). The output is byte for byte what
``prometheus_client.generate_latest`` makes of the same samples (``monitor.serve.metrics_reference``, kept as
the reference the tests compare against).
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Mapping
from itertools import repeat
from operator import itemgetter
from typing import Any, NamedTuple

from monitor.serve.metrics_text import (
    _C,
    _HELP,
    HEAP_METRICS,
    HISTORY_METRICS,
    INFO_LABELS,
    TUNNEL_LABELS,
    Columns,
    encoded_chunks,
    escape,
    go_float,
    head,
    ike_labels,
    info_labels,
    text_chunks,
)
from monitor.serve.protocol import STATE_COLUMN, STATES, TunnelView

__all__ = [
    "HEAP_METRICS",
    "HISTORY_METRICS",
    "INFO_LABELS",
    "MODES",
    "TUNNEL_LABELS",
    "_C",
    "_HELP",
    "Columns",
    "Gathered",
    "MonitorSample",
    "ScrapeCache",
    "TunnelSample",
    "count_states",
    "escape",
    "gather",
    "gather_columns",
    "go_float",
    "info_labels",
    "render",
    "sample",
    "scrape",
    "scrape_chunks",
]
_STATE = STATE_COLUMN  # where counters_row() puts the state
_NS_STATE = itemgetter(0, 7)  # (netns, state) of a metrics_row tuple
#: Values of the ``metrics_tunnels`` setting.
MODES = ("all", "unhealthy", "none")
#: States that ``metrics_tunnels = "unhealthy"`` leaves out of the per-tunnel series.
HEALTHY = frozenset({"up", "rekeying"})


class TunnelSample(NamedTuple):
    """What the metrics need from one tunnel's public JSON."""

    labels: tuple[str, str, str, str, str, str, str]
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
    flaps: float = 0.0
    downtime: float = 0.0
    #: ``(conn, child)`` of the IKE view's ``ike`` block, when the tunnel has one (``ipsec_tunnel_ike_info``).
    ike: tuple[str, str] | None = None


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
    #: ``/proc/net/xfrm_stat`` per netns, the kernel's counter names (``XfrmInNoPols`` ...).
    xfrm_stat: Mapping[str, Mapping[str, int]] = {}
    #: The history store's numbers (``HISTORY_METRICS`` names); empty when history is off.
    history: Mapping[str, float] = {}
    #: The heap trimmer's numbers (``HEAP_METRICS`` names); empty where there is no ``malloc_trim``.
    heap: Mapping[str, float] = {}


class Gathered(NamedTuple):
    """The result of :func:`gather`: per-tunnel samples and the tunnel count per ``(netns, state)``."""

    tunnels: list[TunnelSample]
    counts: dict[tuple[str, str], int]

    def __repr__(self) -> str:
        # Short: asyncio's task repr (reprlib) would otherwise print every sample of a 100k-tunnel scrape.
        return f"Gathered(<{len(self.tunnels)} tunnels>, <{len(self.counts)} counts>)"


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


def _optional(v: object) -> str:
    """An if_id or mark label value: empty when unset (None or 0)."""
    return "" if v in (None, 0, "") else str(v)


def sample(t: Mapping[str, Any]) -> TunnelSample:
    """Pick the metric values out of one tunnel's public JSON."""
    hard = t.get("hard_expires_in")
    return TunnelSample(
        (str(t.get("netns", "")), str(t.get("reqid", "")), str(t.get("local", "")), str(t.get("remote", "")),
         str(t.get("id", "")), _optional(t.get("if_id")), _optional(t.get("mark"))),
        _num(t.get("bytes_in")), _num(t.get("bytes_out")),
        _num(t.get("packets_in")), _num(t.get("packets_out")),
        _num(t.get("rekeys")), _num(t.get("rekey_failures")),
        str(t.get("state", "")),
        float(hard) if isinstance(hard, int | float) else None,
        _errors(t, "replay_errors", ("replay_errors", "replay")),
        _errors(t, "integrity_errors", ("integrity_errors", "integrity_failed")),
        _num(t.get("flaps")), _num(t.get("downtime")),
        _ike_names(t.get("ike")),
    )


def _ike_names(block: object) -> tuple[str, str] | None:
    if isinstance(block, Mapping) and isinstance(block.get("conn"), str) and isinstance(block.get("child"), str):
        return str(block["conn"]), str(block["child"])
    return None


class ScrapeCache:
    """What one scrape leaves for the next: each tunnel's netns (interned), only touched on the event loop.

    With ``metrics_tunnels`` ``unhealthy``/``none`` it lets :func:`gather` count a known tunnel from its
    ``counters_row`` alone. Escaped label strings are not cached: building one costs ~0.4 µs (40 ms per
    100k tunnels, in the worker thread), keeping them would cost ~400 B per tunnel for as long as it lives.
    """

    def __init__(self) -> None:
        self.netns: dict[str, str] = {}


_CACHES: weakref.WeakKeyDictionary[Any, ScrapeCache] = weakref.WeakKeyDictionary()


def _cache_for(view: TunnelView) -> ScrapeCache:
    try:
        return _CACHES.setdefault(view, ScrapeCache())
    except TypeError:  # not weak-referenceable: no reuse across scrapes
        return ScrapeCache()


async def gather(view: TunnelView, now: float, chunk: int = 250, mode: str = "all",
                 cache: ScrapeCache | None = None) -> Gathered:
    """Sample the tunnels that ``mode`` exports and count all of them per state, yielding every ``chunk``.

    With ``mode`` ``unhealthy`` or ``none``, tunnels already in the cache whose state needs no series
    are counted from the correlator's cheap ``counters_row`` instead of their full JSON.
    """
    if mode not in MODES:
        raise ValueError(f"metrics_tunnels must be one of {', '.join(MODES)}, not {mode!r}")
    cache = cache if cache is not None else ScrapeCache()
    rows = getattr(view, "counters_row", None) if mode != "all" else None
    old: dict[str, str] = cache.netns
    fresh: dict[str, str] = {}
    intern: dict[str, str] = {}
    out: list[TunnelSample] = []
    counts: Counter[tuple[str, str]] = Counter()
    for i, tid in enumerate(list(view.tunnel_ids())):
        if i and i % chunk == 0:
            await asyncio.sleep(0)
        ns = old.get(tid)
        if rows is not None and ns is not None:
            row = rows(tid)
            if row is None:
                continue
            state = str(row[_STATE])
            if mode == "none" or state in HEALTHY:
                fresh[tid] = ns
                counts[(ns, state)] += 1
                continue
        t = view.tunnel_json(tid, now)
        if t is None:
            continue
        s = sample(t)
        ns = intern.setdefault(s.labels[0], s.labels[0])
        fresh[tid] = ns
        counts[(ns, s.state)] += 1
        if mode == "all" or (mode == "unhealthy" and s.state not in HEALTHY):
            out.append(s)
    cache.netns = fresh if rows is not None else {}
    return Gathered(out, dict(counts))


def count_states(tunnels: Iterable[TunnelSample]) -> dict[tuple[str, str], int]:
    """Tunnels per ``(netns, state)`` (what :func:`gather` counts) for samples built without it."""
    return dict(Counter((t.labels[0], t.state) for t in tunnels))


def _aggregate(counts: Mapping[tuple[str, str], int], mon: MonitorSample) -> list[tuple[str, str, float]]:
    """``(netns, state, count)`` for every netns seen, every known state (0 included), sorted."""
    namespaces = {ns for ns, _ in counts} | set(mon.dumps)
    out: list[tuple[str, str, float]] = []
    for ns in sorted(namespaces):
        extra = sorted({s for n, s in counts if n == ns and s not in STATES})
        out.extend((ns, s, float(counts.get((ns, s), 0))) for s in (*STATES, *extra))
    return out


# ------------------------------------------------------------------ rendering


def _monitor_text(m: MonitorSample, counts: Mapping[tuple[str, str], int]) -> list[str]:
    f = go_float
    out = [head("ipsec_tunnels")]
    out += [f'ipsec_tunnels{{netns="{escape(ns)}",state="{escape(s)}"}} {f(n)}\n' for ns, s, n in _aggregate(counts, m)]
    namespaces = [(ns, escape(ns)) for ns in sorted(set(m.enobufs) | set(m.resyncs) | set(m.dumps))]
    out.append(head("ipsec_monitor_enobufs"))
    out += [f'ipsec_monitor_enobufs_total{{netns="{e}"}} {f(float(m.enobufs.get(ns, 0)))}\n' for ns, e in namespaces]
    out.append(head("ipsec_monitor_resyncs"))
    out += [f'ipsec_monitor_resyncs_total{{netns="{e}"}} {f(float(m.resyncs.get(ns, 0)))}\n' for ns, e in namespaces]
    out.append(head("ipsec_xfrm_stat"))
    out += [f'ipsec_xfrm_stat_total{{counter="{escape(c)}",netns="{escape(ns)}"}} {f(float(v))}\n'
            for ns, counters in sorted(m.xfrm_stat.items()) for c, v in sorted(counters.items())]
    out.append(head("ipsec_monitor_event_loop_lag_seconds"))
    out.append(f"ipsec_monitor_event_loop_lag_seconds {f(float(m.lag))}\n")
    dumps = sorted(m.dumps.items())
    out.append(head("ipsec_monitor_last_dump_duration_seconds"))
    out += [f'ipsec_monitor_last_dump_duration_seconds{{netns="{escape(ns)}"}} '
            f'{f(float(d["last_dump_duration"] or 0.0))}\n'
            for ns, d in dumps if d.get("last_dump_duration") is not None]
    out.append(head("ipsec_monitor_last_dump_age_seconds"))
    out += [f'ipsec_monitor_last_dump_age_seconds{{netns="{escape(ns)}"}} '
            f'{f(max(0.0, m.now - float(d["last_dump"] or 0.0)))}\n'
            for ns, d in dumps if d.get("last_dump") is not None]
    for name, value in (("ipsec_monitor_ws_clients", m.clients), ("ipsec_monitor_ws_gaps", m.gaps),
                        ("ipsec_monitor_ws_dropped_events", m.dropped), ("ipsec_monitor_ws_stalled", m.stalled)):
        hd = head(name)
        out.append(f"{hd}{hd.split()[2]} {f(float(value))}\n")
    for name in HISTORY_METRICS:
        if name in m.history:
            hd = head(name)
            out.append(f"{hd}{hd.split()[2]} {f(float(m.history[name]))}\n")
    for name in HEAP_METRICS:
        if name in m.heap:
            hd = head(name)
            out.append(f"{hd}{hd.split()[2]} {f(float(m.heap[name]))}\n")
    return out


def _count(v: float) -> int:
    """A counter's value as the ``int`` it is (the text writes counters as integers)."""
    return int(v)


def row(t: TunnelSample) -> tuple[Any, ...]:
    """A sample as the ``metrics_row`` tuple :class:`Columns` holds."""
    c = _count
    return (*t.labels, t.state, c(t.bytes_in), c(t.bytes_out), c(t.packets_in), c(t.packets_out), c(t.rekeys),
            c(t.rekey_failures), t.hard_expires_in, c(t.replay_errors), c(t.integrity_errors), c(t.flaps),
            float(t.downtime))


def columns(tunnels: Iterable[TunnelSample]) -> Columns:
    """Samples as :class:`Columns` (what :func:`gather_columns` builds straight from the correlator)."""
    cols = Columns()
    for t in tunnels:
        ike = None if t.ike is None else ike_labels(t.labels[4], t.labels[0], *t.ike)
        cols.add(row(t), ike)
    return cols


def render(tunnels: Iterable[TunnelSample], mon: MonitorSample,
           counts: Mapping[tuple[str, str], int] | None = None) -> bytes:
    """Prometheus text exposition of the samples, whole (safe to run in a worker thread).

    ``counts`` is :attr:`Gathered.counts`; without it the tunnels are counted from ``tunnels``.
    """
    ts = tunnels if isinstance(tunnels, list) else list(tunnels)
    if counts is None:
        counts = count_states(ts)
    return "".join(text_chunks(columns(ts), _monitor_text(mon, counts))).encode()


async def gather_columns(view: TunnelView, now: float, chunk: int = 500, mode: str = "all",
                         cache: ScrapeCache | None = None) -> tuple[Columns, dict[tuple[str, str], int]]:
    """What :func:`gather` reads, straight into :class:`Columns` (and the count per ``(netns, state)``).

    A view whose class has ``metrics_row(tid, now)`` (the correlator) is read through it: the same values as
    its JSON, about a tenth of the cost, and its tuple is kept as it is (a snapshot of immutable values: the
    labels and numbers are written from it in the worker thread). Other views (the IKE view adds a block to the
    JSON; test fakes) go through :func:`gather`.
    """
    if getattr(type(view), "metrics_row", None) is None:
        g = await gather(view, now, chunk, mode, cache)
        return columns(g.tunnels), g.counts
    if mode not in MODES:
        raise ValueError(f"metrics_tunnels must be one of {', '.join(MODES)}, not {mode!r}")
    row_of = view.metrics_row  # type: ignore[attr-defined]
    cols = Columns()
    rows = cols.rows
    counts: Counter[tuple[str, str]] = Counter()
    everything, nothing = mode == "all", mode == "none"
    ids = list(view.tunnel_ids())
    for lo in range(0, len(ids), chunk):  # a slice at a time through C-level loops (map, Counter.update)
        if lo:
            await asyncio.sleep(0)
        part = ids[lo:lo + chunk]
        got = [r for r in map(row_of, part, repeat(now, len(part))) if r is not None]
        counts.update(map(_NS_STATE, got))
        if everything:
            rows.extend(got)
        elif not nothing:
            rows.extend([r for r in got if r[7] not in HEALTHY])
    return cols, dict(counts)


async def scrape_chunks(view: TunnelView, mon: MonitorSample, mode: str = "all",
                        gzip: bool = False) -> AsyncIterator[bytes]:
    """One scrape as byte chunks (gzip-compressed when asked): gathered on the loop, written and compressed in
    a worker thread one chunk at a time, so neither the body nor its compressed form is ever whole."""
    cols, counts = await gather_columns(view, mon.now if mon.now else time.time(), mode=mode,
                                        cache=_cache_for(view))
    loop = asyncio.get_running_loop()
    it = encoded_chunks(text_chunks(cols, _monitor_text(mon, counts)), gzip)
    while (piece := await loop.run_in_executor(None, next, it, None)) is not None:
        yield piece


async def scrape(view: TunnelView, mon: MonitorSample, mode: str = "all") -> bytes:
    """One whole scrape, uncompressed (``GET /metrics`` streams :func:`scrape_chunks` instead)."""
    return b"".join([piece async for piece in scrape_chunks(view, mon, mode)])
