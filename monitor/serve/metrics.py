"""Prometheus exposition, computed from the correlator at scrape time.

Names are the contract in ARCHITECTURE.md "Prometheus names". Per-tunnel series carry exactly the
labels ``id, netns, reqid, local, remote, if_id, mark`` (plus ``direction`` or ``state``): one set per
tunnel, never per SA or SPI, so the series count is bounded by the tunnel count. ``id`` (the tunnel id)
makes every set unique: route-based tunnels that differ only in their xfrm interface or mark (0.0.0.0/0
selectors, VTI) share the other labels; ``if_id`` and ``mark`` are empty where not set (PromQL treats an
empty label as absent). ``ipsec_tunnels{netns,state}`` counts the
tunnels per state whatever ``metrics_tunnels`` (``all``, ``unhealthy``: only tunnels not ``up`` or
``rekeying`` get per-tunnel series, ``none``) says.

A scrape runs in two steps so that 100k tunnels never block the event loop for long:
:func:`gather` reads the correlator on the loop in chunks (yielding between them), and
:func:`render` writes the text format 0.0.4 directly in a worker thread. Its output is byte for byte what
``prometheus_client.generate_latest`` makes of the same samples (``monitor.serve.metrics_reference``, kept
as the reference the tests compare against): labels sorted by name, values escaped (backslash, double
quote, newline) and numbers formatted like ``floatToGoString``. Each tunnel's escaped label string is
built once per scrape and shared by its 16 lines; the one-hot state block is a per-state template.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from monitor.serve.protocol import STATE_COLUMN, STATES, TunnelView

TUNNEL_LABELS = ["netns", "reqid", "local", "remote", "id", "if_id", "mark"]
_STATE = STATE_COLUMN  # where counters_row() puts the state
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


# ------------------------------------------------------------------ text format primitives


def escape(v: str) -> str:
    """A label value escaped for the text format 0.0.4 (backslash, newline, double quote)."""
    return v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


_SPECIAL = {"inf": "+Inf", "-inf": "-Inf", "nan": "NaN"}


def go_float(d: float) -> str:
    """``prometheus_client.utils.floatToGoString`` for a float (tested equal on every float), but cheaper."""
    s = repr(d)
    # Go switches to an exponent when the dot is past index 6 (so len(s) >= 9, never inf or nan).
    if len(s) < 9:
        return _SPECIAL.get(s, s)
    dot = s.find(".")
    if d > 0 and dot > 6:
        return f"{s[0]}.{s[1:dot]}{s[dot + 1:]}".rstrip("0.") + f"e+{dot - 1:02d}"
    return s


def tunnel_labels(labels: tuple[str, str, str, str, str, str, str]) -> str:
    """The escaped label string of a tunnel, labels in name order (as ``generate_latest`` sorts them)."""
    netns, reqid, local, remote, tid, if_id, mark = labels
    return (f'id="{escape(tid)}",if_id="{escape(if_id)}",local="{escape(local)}",mark="{escape(mark)}",'
            f'netns="{escape(netns)}",remote="{escape(remote)}",reqid="{escape(reqid)}"')


def state_block(lab: str, state: str) -> str:
    """The one-hot ``ipsec_tunnel_state`` lines of one tunnel."""
    states = STATES if state in STATES else (*STATES, state)
    return "".join(f'ipsec_tunnel_state{{{lab},state="{escape(s)}"}} {"1.0" if s == state else "0.0"}\n'
                   for s in states)


# The state block of each known state with a NUL where the tunnel's labels go: one str.replace per tunnel.
_STATE_TEMPLATES = {state: state_block("\0", state) for state in STATES}


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


# ------------------------------------------------------------------ the fast renderer

_C, _G = "counter", "gauge"
_HELP = {
    "ipsec_tunnel_bytes": (_C, "Bytes through the tunnel, over all SA generations."),
    "ipsec_tunnel_packets": (_C, "Packets through the tunnel, over all SA generations."),
    "ipsec_tunnel_rekeys": (_C, "Completed rekeys."),
    "ipsec_tunnel_rekey_failures": (_C, "Failed rekeys."),
    "ipsec_tunnel_state": (_G, "Health state of the tunnel (one-hot)."),
    "ipsec_tunnel_hard_expiry_seconds": (_G, "Seconds until the earliest hard expiry of the tunnel's current SAs."),
    "ipsec_tunnel_replay_errors": (_C, "Packets dropped by replay protection."),
    "ipsec_tunnel_integrity_errors": (_C, "Packets failing the integrity check."),
    "ipsec_tunnel_flaps": (_C, "Times the tunnel went down from a working state (kept across restarts with history)."),
    "ipsec_tunnel_downtime_seconds": (_C, "Seconds the tunnel spent down (kept across restarts with history)."),
    "ipsec_tunnel_ike_info": (_G, "1 per tunnel the IKE view names: its strongSwan connection and child (join on id)."),
    "ipsec_tunnels": (_G, "Tunnels per health state (exported whatever metrics_tunnels says)."),
    "ipsec_monitor_enobufs": (_C, "ENOBUFS overruns of the netlink socket."),
    "ipsec_xfrm_stat": (_C, "The kernel's /proc/net/xfrm_stat counters per netns (counter: the kernel's name)."),
    "ipsec_monitor_resyncs": (_C, "Full resync dump cycles run after overruns (several overruns in one cycle: one)."),
    "ipsec_monitor_event_loop_lag_seconds": (_G, "Max event-loop lag over the last few seconds."),
    "ipsec_monitor_last_dump_duration_seconds": (_G, "Duration of the last full dump."),
    "ipsec_monitor_last_dump_age_seconds": (_G, "Seconds since the last full dump ended."),
    "ipsec_monitor_ws_clients": (_G, "Connected websocket clients."),
    "ipsec_monitor_ws_gaps": (_C, "Gap messages sent to slow websocket clients."),
    "ipsec_monitor_ws_dropped_events": (_C, "Events dropped from slow websocket clients' queues."),
    "ipsec_monitor_ws_stalled": (_C, "Websocket clients closed for being stalled (code 4008)."),
    "ipsec_monitor_history_up": (_G, "1 when the history store is writable, 0 when it failed (absent: history off)."),
    "ipsec_monitor_history_events_written": (_C, "Health events written to the history store."),
    "ipsec_monitor_history_write_errors": (_C, "Failed history transactions (full disk, read-only file...)."),
    "ipsec_monitor_history_dropped_events": (_C, "Health events not recorded in the history store."),
    "ipsec_monitor_heap_trims": (_C, "malloc_trim calls after websocket clients left (monitor/serve/heap.py)."),
    "ipsec_monitor_heap_released_bytes": (_C, "Resident memory given back to the kernel by those trims."),
}
#: ``MonitorSample.history`` keys, in exposition order.
HISTORY_METRICS = ("ipsec_monitor_history_up", "ipsec_monitor_history_events_written",
                   "ipsec_monitor_history_write_errors", "ipsec_monitor_history_dropped_events")
#: ``MonitorSample.heap`` keys, in exposition order.
HEAP_METRICS = ("ipsec_monitor_heap_trims", "ipsec_monitor_heap_released_bytes")


def _head(name: str) -> str:
    kind, doc = _HELP[name]
    full = name + "_total" if kind == _C else name
    return f"# HELP {full} {doc}\n# TYPE {full} {kind}\n"


def _tunnel_text(ts: list[TunnelSample]) -> list[str]:
    f = go_float
    labs = [tunnel_labels(t.labels) for t in ts]
    pairs = list(zip(labs, ts, strict=True))
    out = [_head("ipsec_tunnel_bytes")]
    out += [f'ipsec_tunnel_bytes_total{{direction="in",{lab}}} {f(t.bytes_in)}\n'
            f'ipsec_tunnel_bytes_total{{direction="out",{lab}}} {f(t.bytes_out)}\n' for lab, t in pairs]
    out.append(_head("ipsec_tunnel_packets"))
    out += [f'ipsec_tunnel_packets_total{{direction="in",{lab}}} {f(t.packets_in)}\n'
            f'ipsec_tunnel_packets_total{{direction="out",{lab}}} {f(t.packets_out)}\n' for lab, t in pairs]
    out.append(_head("ipsec_tunnel_rekeys"))
    out += [f"ipsec_tunnel_rekeys_total{{{lab}}} {f(t.rekeys)}\n" for lab, t in pairs]
    out.append(_head("ipsec_tunnel_rekey_failures"))
    out += [f"ipsec_tunnel_rekey_failures_total{{{lab}}} {f(t.rekey_failures)}\n" for lab, t in pairs]
    out.append(_head("ipsec_tunnel_state"))
    tmpl = _STATE_TEMPLATES
    out += [tmpl[t.state].replace("\0", lab) if t.state in tmpl else state_block(lab, t.state) for lab, t in pairs]
    out.append(_head("ipsec_tunnel_hard_expiry_seconds"))
    out += [f"ipsec_tunnel_hard_expiry_seconds{{{lab}}} {f(t.hard_expires_in)}\n"
            for lab, t in pairs if t.hard_expires_in is not None]
    out.append(_head("ipsec_tunnel_replay_errors"))
    out += [f"ipsec_tunnel_replay_errors_total{{{lab}}} {f(t.replay_errors)}\n" for lab, t in pairs]
    out.append(_head("ipsec_tunnel_integrity_errors"))
    out += [f"ipsec_tunnel_integrity_errors_total{{{lab}}} {f(t.integrity_errors)}\n" for lab, t in pairs]
    out.append(_head("ipsec_tunnel_flaps"))
    out += [f"ipsec_tunnel_flaps_total{{{lab}}} {f(t.flaps)}\n" for lab, t in pairs]
    out.append(_head("ipsec_tunnel_downtime_seconds"))
    out += [f"ipsec_tunnel_downtime_seconds_total{{{lab}}} {f(t.downtime)}\n" for lab, t in pairs]
    out.append(_head("ipsec_tunnel_ike_info"))
    out += [f'ipsec_tunnel_ike_info{{child="{escape(t.ike[1])}",conn="{escape(t.ike[0])}",id="{escape(t.labels[4])}",'
            f'netns="{escape(t.labels[0])}"}} 1.0\n' for t in ts if t.ike is not None]
    return out


def _monitor_text(m: MonitorSample, counts: Mapping[tuple[str, str], int]) -> list[str]:
    f = go_float
    out = [_head("ipsec_tunnels")]
    out += [f'ipsec_tunnels{{netns="{escape(ns)}",state="{escape(s)}"}} {f(n)}\n' for ns, s, n in _aggregate(counts, m)]
    namespaces = [(ns, escape(ns)) for ns in sorted(set(m.enobufs) | set(m.resyncs) | set(m.dumps))]
    out.append(_head("ipsec_monitor_enobufs"))
    out += [f'ipsec_monitor_enobufs_total{{netns="{e}"}} {f(float(m.enobufs.get(ns, 0)))}\n' for ns, e in namespaces]
    out.append(_head("ipsec_monitor_resyncs"))
    out += [f'ipsec_monitor_resyncs_total{{netns="{e}"}} {f(float(m.resyncs.get(ns, 0)))}\n' for ns, e in namespaces]
    out.append(_head("ipsec_xfrm_stat"))
    out += [f'ipsec_xfrm_stat_total{{counter="{escape(c)}",netns="{escape(ns)}"}} {f(float(v))}\n'
            for ns, counters in sorted(m.xfrm_stat.items()) for c, v in sorted(counters.items())]
    out.append(_head("ipsec_monitor_event_loop_lag_seconds"))
    out.append(f"ipsec_monitor_event_loop_lag_seconds {f(float(m.lag))}\n")
    dumps = sorted(m.dumps.items())
    out.append(_head("ipsec_monitor_last_dump_duration_seconds"))
    out += [f'ipsec_monitor_last_dump_duration_seconds{{netns="{escape(ns)}"}} '
            f'{f(float(d["last_dump_duration"] or 0.0))}\n'
            for ns, d in dumps if d.get("last_dump_duration") is not None]
    out.append(_head("ipsec_monitor_last_dump_age_seconds"))
    out += [f'ipsec_monitor_last_dump_age_seconds{{netns="{escape(ns)}"}} '
            f'{f(max(0.0, m.now - float(d["last_dump"] or 0.0)))}\n'
            for ns, d in dumps if d.get("last_dump") is not None]
    for name, value in (("ipsec_monitor_ws_clients", m.clients), ("ipsec_monitor_ws_gaps", m.gaps),
                        ("ipsec_monitor_ws_dropped_events", m.dropped), ("ipsec_monitor_ws_stalled", m.stalled)):
        head = _head(name)
        out.append(f"{head}{head.split()[2]} {f(float(value))}\n")
    for name in HISTORY_METRICS:
        if name in m.history:
            head = _head(name)
            out.append(f"{head}{head.split()[2]} {f(float(m.history[name]))}\n")
    for name in HEAP_METRICS:
        if name in m.heap:
            head = _head(name)
            out.append(f"{head}{head.split()[2]} {f(float(m.heap[name]))}\n")
    return out


def render(tunnels: Iterable[TunnelSample], mon: MonitorSample,
           counts: Mapping[tuple[str, str], int] | None = None) -> bytes:
    """Prometheus text exposition of the samples (safe to run in a worker thread).

    ``counts`` is :attr:`Gathered.counts`; without it the tunnels are counted from ``tunnels``.
    """
    ts = tunnels if isinstance(tunnels, list) else list(tunnels)
    if counts is None:
        counts = count_states(ts)
    return "".join(_tunnel_text(ts) + _monitor_text(mon, counts)).encode()


async def scrape(view: TunnelView, mon: MonitorSample, mode: str = "all") -> bytes:
    """Gather on the loop (reusing the view's label cache), render in a thread."""
    g = await gather(view, mon.now if mon.now else time.time(), mode=mode, cache=_cache_for(view))
    return await asyncio.get_running_loop().run_in_executor(None, render, g.tunnels, mon, g.counts)
