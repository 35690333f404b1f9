"""The Prometheus text format 0.0.4 of one scrape, written in chunks (pure: no I/O, no clock, no loop).

A scrape's tunnels are held as :class:`Columns`: one escaped label string per tunnel (built once, shared by the
tunnel's lines), its state, and its values in ``array('d')`` columns, which is about 350 bytes per tunnel
instead of the ~2 KB of the text it becomes. :func:`text_chunks` writes the families one after the other (the
format wants each family's lines together) in slices of ``chunk`` tunnels, so the whole body never exists at
once; :func:`encoded_chunks` turns them into bytes, gzip-compressed on request, in pieces of a few hundred KB
for ``aiohttp.StreamResponse.write``.

The output is byte for byte what ``prometheus_client.generate_latest`` makes of the same samples
(``monitor.serve.metrics_reference``): labels sorted by name, values escaped (backslash, double quote,
newline) and numbers formatted like ``floatToGoString``.

``ipsec_tunnel_state`` carries the current state only: one series per tunnel, value 1, ``state`` the label
(``ipsec_tunnel_state{state="down"} == 1`` selects the down tunnels as it did when every state was exported
with 0 or 1; ``count by (state) (ipsec_tunnel_state)`` counts them).
"""

from __future__ import annotations

import zlib
from array import array
from collections.abc import Iterator
from typing import Any

TUNNEL_LABELS = ["netns", "reqid", "local", "remote", "id", "if_id", "mark"]
#: The value columns of :class:`Columns`, in ``TunnelSample`` order.
VALUES = ("bytes_in", "bytes_out", "packets_in", "packets_out", "rekeys", "rekey_failures", "hard_expires_in",
          "replay_errors", "integrity_errors", "flaps", "downtime")
_HARD = VALUES.index("hard_expires_in")

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


def tunnel_labels(labels: tuple[str, str, str, str, str, str, str]) -> str:
    """The escaped label string of a tunnel, labels in name order (as ``generate_latest`` sorts them)."""
    netns, reqid, local, remote, tid, if_id, mark = labels
    lab = f'id="{tid}",if_id="{if_id}",local="{local}",mark="{mark}",netns="{netns}",remote="{remote}",reqid="{reqid}"'
    # Nothing to escape (the common case: three scans of one string instead of 21 replaces): the 14 quotes
    # are the delimiters, and there is no backslash or newline.
    if lab.count('"') == 14 and "\\" not in lab and "\n" not in lab:
        return lab
    return (f'id="{escape(tid)}",if_id="{escape(if_id)}",local="{escape(local)}",mark="{escape(mark)}",'
            f'netns="{escape(netns)}",remote="{escape(remote)}",reqid="{escape(reqid)}"')


def ike_labels(tid: str, netns: str, conn: str, child: str) -> str:
    """The escaped label string of one ``ipsec_tunnel_ike_info`` series."""
    return f'child="{escape(child)}",conn="{escape(conn)}",id="{escape(tid)}",netns="{escape(netns)}"'


def head(name: str) -> str:
    """The ``# HELP`` and ``# TYPE`` lines of a family (counters get their ``_total``)."""
    kind, doc = _HELP[name]
    full = name + "_total" if kind == _C else name
    return f"# HELP {full} {doc}\n# TYPE {full} {kind}\n"


class Columns:
    """One scrape's per-tunnel series, compact (see the module docstring). Filled on the event loop by
    ``monitor.serve.metrics.gather_columns``, read by :func:`text_chunks` in a worker thread afterwards."""

    __slots__ = ("hard", "ike", "labels", "states", "values")

    #: Values per tunnel in :attr:`values`.
    stride = len(VALUES)

    def __init__(self) -> None:
        self.labels: list[str] = []
        self.states: list[str] = []
        #: Every tunnel's values in :data:`VALUES` order, one after the other (``stride`` per tunnel; one C call
        #: per tunnel to fill, a strided slice per family to read). A missing hard expiry is stored as 0.0 ...
        self.values: array[float] = array("d")
        #: ... and marked 0 here: 1 where the tunnel has one).
        self.hard = bytearray()
        #: ``ipsec_tunnel_ike_info`` label strings, for the tunnels the IKE view names.
        self.ike: list[str] = []

    def __len__(self) -> int:
        return len(self.labels)

    def add(self, labels: str, state: str, values: tuple[Any, ...], ike: str | None = None) -> None:
        """One tunnel: its escaped label string, state and the numbers in :data:`VALUES` order (None: absent)."""
        self.labels.append(labels)
        self.states.append(state)
        if values[_HARD] is None:
            self.values.extend((*values[:_HARD], 0.0, *values[_HARD + 1:]))
            self.hard.append(0)
        else:
            self.values.extend(values)
            self.hard.append(1)
        if ike is not None:
            self.ike.append(ike)


def _tunnel_text(cols: Columns, chunk: int) -> Iterator[str]:
    f, labs, n, w = go_float, cols.labels, len(cols), Columns.stride
    flat = cols.values

    def col(k: int, lo: int, hi: int) -> array[float]:
        return flat[lo * w + k:hi * w:w]
    spans = [(lo, min(n, lo + chunk)) for lo in range(0, n, chunk)]

    def one(name: str, k: int) -> Iterator[str]:
        yield head(name)
        full = name + "_total" if _HELP[name][0] == _C else name
        for lo, hi in spans:
            yield "".join([f"{full}{{{lab}}} {f(x)}\n" for lab, x in zip(labs[lo:hi], col(k, lo, hi), strict=True)])

    def pair(name: str, k: int) -> Iterator[str]:
        yield head(name)
        for lo, hi in spans:
            yield "".join([f'{name}_total{{direction="in",{lab}}} {f(a)}\n'
                           f'{name}_total{{direction="out",{lab}}} {f(b)}\n'
                           for lab, a, b in zip(labs[lo:hi], col(k, lo, hi), col(k + 1, lo, hi), strict=True)])

    yield from pair("ipsec_tunnel_bytes", 0)
    yield from pair("ipsec_tunnel_packets", 2)
    yield from one("ipsec_tunnel_rekeys", 4)
    yield from one("ipsec_tunnel_rekey_failures", 5)
    yield head("ipsec_tunnel_state")
    for lo, hi in spans:
        yield "".join([f'ipsec_tunnel_state{{{lab},state="{escape(s)}"}} 1.0\n'
                       for lab, s in zip(labs[lo:hi], cols.states[lo:hi], strict=True)])
    yield head("ipsec_tunnel_hard_expiry_seconds")
    for lo, hi in spans:
        yield "".join([f"ipsec_tunnel_hard_expiry_seconds{{{lab}}} {f(x)}\n"
                       for lab, x, has in zip(labs[lo:hi], col(_HARD, lo, hi), cols.hard[lo:hi], strict=True) if has])
    yield from one("ipsec_tunnel_replay_errors", 7)
    yield from one("ipsec_tunnel_integrity_errors", 8)
    yield from one("ipsec_tunnel_flaps", 9)
    yield from one("ipsec_tunnel_downtime_seconds", 10)
    yield head("ipsec_tunnel_ike_info")
    yield "".join([f"ipsec_tunnel_ike_info{{{lab}}} 1.0\n" for lab in cols.ike])


def text_chunks(cols: Columns, monitor_text: list[str], chunk: int = 2000) -> Iterator[str]:
    """The exposition as a sequence of strings: the per-tunnel families, ``chunk`` tunnels at a time, then
    ``monitor_text`` (``ipsec_tunnels`` and the process-wide families)."""
    yield from _tunnel_text(cols, chunk)
    yield "".join(monitor_text)


GZIP_LEVEL = 1  # the cheapest level: most of the size win for a fraction of level 6's CPU


def encoded_chunks(texts: Iterator[str], gzip: bool, size: int = 1 << 18) -> Iterator[bytes]:
    """``texts`` UTF-8 encoded in pieces of at least ``size`` characters (the last may be shorter), each piece
    gzip-compressed (one gzip stream over all of them) when ``gzip`` is true. Never yields ``b""``."""
    z = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31) if gzip else None
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
