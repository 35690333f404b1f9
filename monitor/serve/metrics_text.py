"""The Prometheus text format 0.0.4 of one scrape, written in chunks (pure: no I/O, no clock, no loop).

**Labels (issue 15).** Every per-tunnel series is labelled with the tunnel ``id`` only (plus ``direction`` or
``state``); the tunnel's attributes are on one info series per tunnel,
``ipsec_tunnel_info{id,netns,local,remote,reqid[,if_id][,mark]} 1`` (the kube-state-metrics / node_exporter
convention: join them where they are wanted, ``* on (instance, id) group_left (local, remote)
ipsec_tunnel_info``). The id is unique per monitor and already names the netns, reqid, both addresses and any
``if_id``/``mark`` (``monitor.health.tunnel.tunnel_id``), so no two tunnels share a series. ``if_id`` and ``mark``
are left out of the info series when unset (PromQL treats an empty label as absent). This cut the text from
~2.2 KB to ~1 KB per tunnel; two thirds of a scrape's CPU is proportional to the text's bytes (the text, then
its gzip).

A scrape's tunnels are held as :class:`Columns`: the correlator's ``metrics_row`` tuple of each tunnel (a
snapshot: it holds only immutable values), taken on the event loop. :func:`text_chunks` writes the families
one after the other (the format wants each family's lines together) in slices of ``chunk`` tunnels, so the
whole body never exists at once; :func:`encoded_chunks` turns them into bytes, gzip-compressed on request, in
pieces of a few hundred KB for ``aiohttp.StreamResponse.write``.

Counters are integers and written as such (``123``, which the format allows as well as ``123.0``: an
``int`` is formatted ~6x faster than a float the way Go writes it); gauges (``hard_expiry``, ``downtime``) are
written like ``prometheus_client``'s ``floatToGoString``. The tests compare the parsed output with
``prometheus_client.generate_latest`` of the same samples (``monitor.serve.metrics_reference``).

``ipsec_tunnel_state`` carries the current state only: one series per tunnel, value 1, ``state`` the label
(``ipsec_tunnel_state{state="down"}`` selects the down tunnels; ``count by (state) (ipsec_tunnel_state)``
counts them).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Any, Protocol

try:  # ISA-L's deflate: the same gzip stream, ~3.7x less CPU per byte than zlib at level 1 (bench/RESULTS.md)
    from isal import isal_zlib as _deflate
except ImportError:  # pragma: no cover - a dependency; zlib where its wheel is missing
    _deflate = zlib  # type: ignore[misc,unused-ignore]

#: The labels of every per-tunnel series (besides ``direction`` or ``state``).
TUNNEL_LABELS = ["id"]
#: The labels of ``ipsec_tunnel_info`` (``if_id`` and ``mark`` only where set), in name order.
INFO_LABELS = ["id", "if_id", "local", "mark", "netns", "remote", "reqid"]
#: A :class:`Columns` row, ``Correlator.metrics_row``'s tuple: where each field is.
ROW = ("netns", "reqid", "local", "remote", "id", "if_id", "mark", "state", "bytes_in", "bytes_out", "packets_in",
       "packets_out", "rekeys", "rekey_failures", "hard_expires_in", "replay_errors", "integrity_errors", "flaps",
       "downtime")
_ID, _STATE, _HARD = ROW.index("id"), ROW.index("state"), ROW.index("hard_expires_in")

_C, _G = "counter", "gauge"
_HELP = {
    "ipsec_tunnel_bytes": (_C, "Bytes through the tunnel, over all SA generations."),
    "ipsec_tunnel_packets": (_C, "Packets through the tunnel, over all SA generations."),
    "ipsec_tunnel_rekeys": (_C, "Completed rekeys."),
    "ipsec_tunnel_rekey_failures": (_C, "Failed rekeys."),
    "ipsec_tunnel_state": (_G, "Health state of the tunnel: one series per tunnel, its current state, value 1."),
    "ipsec_tunnel_hard_expiry_seconds": (_G, "Seconds until the earliest hard expiry of the tunnel's current SAs."),
    "ipsec_tunnel_replay_errors": (_C, "Packets dropped by replay protection."),
    "ipsec_tunnel_integrity_errors": (_C, "Packets failing the integrity check."),
    "ipsec_tunnel_flaps": (_C, "Times the tunnel went down from a working state (kept across restarts with history)."),
    "ipsec_tunnel_downtime_seconds": (_C, "Seconds the tunnel spent down (kept across restarts with history)."),
    "ipsec_tunnel_info": (_G, "1 per tunnel: its attributes as labels (join the other ipsec_tunnel_* series on id)."),
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


def info_labels(row: tuple[Any, ...]) -> str:
    """The escaped label string of a tunnel's ``ipsec_tunnel_info`` series (``row``: a :data:`ROW` tuple), labels
    in name order (as ``generate_latest`` sorts them), without ``if_id``/``mark`` when they are unset."""
    netns, reqid, local, remote, tid, if_id, mark = row[:7]
    lab = (f'id="{tid}",if_id="{if_id}",local="{local}",mark="{mark}",netns="{netns}",remote="{remote}",reqid="{reqid}"'
           if if_id and mark else
           f'id="{tid}",if_id="{if_id}",local="{local}",netns="{netns}",remote="{remote}",reqid="{reqid}"' if if_id else
           f'id="{tid}",local="{local}",mark="{mark}",netns="{netns}",remote="{remote}",reqid="{reqid}"' if mark else
           f'id="{tid}",local="{local}",netns="{netns}",remote="{remote}",reqid="{reqid}"')
    # Nothing to escape (the common case: three scans of one string instead of a replace per label): the
    # quotes are only the delimiters, and there is no backslash or newline.
    if lab.count('"') == 2 * (5 + bool(if_id) + bool(mark)) and "\\" not in lab and "\n" not in lab:
        return lab
    pairs = [("id", tid), ("if_id", if_id), ("local", local), ("mark", mark), ("netns", netns), ("remote", remote),
             ("reqid", reqid)]
    return ",".join(f'{k}="{escape(str(v))}"' for k, v in pairs if v or k not in ("if_id", "mark"))


def ike_labels(tid: str, netns: str, conn: str, child: str) -> str:
    """The escaped label string of one ``ipsec_tunnel_ike_info`` series."""
    return f'child="{escape(child)}",conn="{escape(conn)}",id="{escape(tid)}",netns="{escape(netns)}"'


def head(name: str) -> str:
    """The ``# HELP`` and ``# TYPE`` lines of a family (counters get their ``_total``)."""
    kind, doc = _HELP[name]
    full = name + "_total" if kind == _C else name
    return f"# HELP {full} {doc}\n# TYPE {full} {kind}\n"


class Columns:
    """One scrape's per-tunnel series (see the module docstring). Filled on the event loop by
    ``monitor.serve.metrics.gather_columns``, read by :func:`text_chunks` in a worker thread afterwards."""

    __slots__ = ("ike", "rows")

    def __init__(self) -> None:
        #: One :data:`ROW` tuple per tunnel (counters ``int``; ``hard_expires_in`` None when there is none).
        self.rows: list[tuple[Any, ...]] = []
        #: ``ipsec_tunnel_ike_info`` label strings, for the tunnels the IKE view names.
        self.ike: list[str] = []

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, row: tuple[Any, ...], ike: str | None = None) -> None:
        """One tunnel: its :data:`ROW` tuple (and its ``ipsec_tunnel_ike_info`` label string, if any)."""
        self.rows.append(row)
        if ike is not None:
            self.ike.append(ike)


def _ids(rows: list[tuple[Any, ...]]) -> list[str]:
    """The escaped ids of ``rows`` (the correlator's ids never need it: they are URL-path safe)."""
    ids = [r[_ID] for r in rows]
    joined = "".join(ids)
    if '"' in joined or "\\" in joined or "\n" in joined:
        return [escape(i) for i in ids]
    return ids


def _tunnel_text(cols: Columns, chunk: int) -> Iterator[str]:
    rows, n, f = cols.rows, len(cols.rows), go_float
    slices = [(rows[lo:lo + chunk], _ids(rows[lo:lo + chunk])) for lo in range(0, n, chunk)]

    def one(name: str, k: int) -> Iterator[str]:
        yield head(name)
        p = f'{name}_total{{id="'
        for part, ids in slices:
            yield "".join([f'{p}{i}"}} {r[k]}\n' for r, i in zip(part, ids, strict=True)])

    def pair(name: str, k: int) -> Iterator[str]:
        yield head(name)
        p, q = f'{name}_total{{direction="in",id="', f'{name}_total{{direction="out",id="'
        for part, ids in slices:
            yield "".join([f'{p}{i}"}} {r[k]}\n{q}{i}"}} {r[k + 1]}\n' for r, i in zip(part, ids, strict=True)])

    yield head("ipsec_tunnel_info")
    for part, _ in slices:
        yield "".join([f"ipsec_tunnel_info{{{info_labels(r)}}} 1\n" for r in part])
    yield from pair("ipsec_tunnel_bytes", 8)
    yield from pair("ipsec_tunnel_packets", 10)
    yield from one("ipsec_tunnel_rekeys", 12)
    yield from one("ipsec_tunnel_rekey_failures", 13)
    yield head("ipsec_tunnel_state")
    for part, ids in slices:
        states = {s: escape(s) for s in {r[_STATE] for r in part}}
        yield "".join([f'ipsec_tunnel_state{{id="{i}",state="{states[r[_STATE]]}"}} 1\n'
                       for r, i in zip(part, ids, strict=True)])
    yield head("ipsec_tunnel_hard_expiry_seconds")
    for part, ids in slices:
        yield "".join([f'ipsec_tunnel_hard_expiry_seconds{{id="{i}"}} {f(r[_HARD])}\n'
                       for r, i in zip(part, ids, strict=True) if r[_HARD] is not None])
    yield from one("ipsec_tunnel_replay_errors", 15)
    yield from one("ipsec_tunnel_integrity_errors", 16)
    yield from one("ipsec_tunnel_flaps", 17)
    yield head("ipsec_tunnel_downtime_seconds")
    for part, ids in slices:
        yield "".join([f'ipsec_tunnel_downtime_seconds_total{{id="{i}"}} {f(r[18])}\n'
                       for r, i in zip(part, ids, strict=True)])
    yield head("ipsec_tunnel_ike_info")
    yield "".join([f"ipsec_tunnel_ike_info{{{lab}}} 1\n" for lab in cols.ike])


def text_chunks(cols: Columns, monitor_text: list[str], chunk: int = 2000) -> Iterator[str]:
    """The exposition as a sequence of strings: the per-tunnel families, ``chunk`` tunnels at a time, then
    ``monitor_text`` (``ipsec_tunnels`` and the process-wide families)."""
    yield from _tunnel_text(cols, chunk)
    yield "".join(monitor_text)


GZIP_LEVEL = 1  # the cheapest level of zlib (isal: its level 1 of 0-3): most of the size win, least CPU
#: The deflate implementation in use: ``isal.isal_zlib`` when installed (a dependency), else ``zlib``.
DEFLATE = _deflate.__name__


class _Compressor(Protocol):
    def compress(self, data: bytes, /) -> bytes: ...
    def flush(self) -> bytes: ...


def compressor() -> _Compressor:
    """A gzip stream compressor (wbits 31: gzip header and trailer) at :data:`GZIP_LEVEL`."""
    z: _Compressor = _deflate.compressobj(GZIP_LEVEL, _deflate.DEFLATED, 31)
    return z


def encoded_chunks(texts: Iterator[str], gzip: bool, size: int = 1 << 18) -> Iterator[bytes]:
    """``texts`` UTF-8 encoded in pieces of at least ``size`` characters (the last may be shorter), each piece
    gzip-compressed (one gzip stream over all of them) when ``gzip`` is true. Never yields ``b""``."""
    z = compressor() if gzip else None
    buf: list[str] = []
    held = 0
    for t in texts:
        buf.append(t)
        held += len(t)
        if held >= size:
            data = "".join(buf).encode()
            buf, held = [], 0
            out = z.compress(data) if z is not None else data
            if out:
                yield out
    data = "".join(buf).encode()
    out = (z.compress(data) + z.flush()) if z is not None else data
    if out:
        yield out
