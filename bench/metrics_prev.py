"""The previous ``/metrics`` shape (before the info metric), kept as the metrics bench's same-run baseline.

Every per-tunnel line carried the seven labels ``id, if_id, local, mark, netns, remote, reqid`` (empty
``if_id``/``mark`` included) and every value went through ``go_float`` (``123.0``); gathered into an escaped label
string and ``array('d')`` columns on the loop, written and gzip-compressed in chunks in a worker thread. A frozen
copy of ``monitor/serve/metrics_text.py`` and ``gather_columns`` as they were on main before this change; the
``ipsec_tunnels`` and process-wide families are the current ones (unchanged).
"""

from __future__ import annotations

import asyncio
import itertools
from array import array
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

from monitor.serve.metrics import HEALTHY, MonitorSample, _monitor_text
from monitor.serve.metrics_text import _C, _HELP, encoded_chunks, escape, go_float, head
from monitor.serve.protocol import TunnelView

_HARD = 6


def _optional(v: object) -> str:
    return "" if v in (None, 0, "") else str(v)


def tunnel_labels(labels: tuple[str, str, str, str, str, str, str]) -> str:
    """The seven escaped labels of a tunnel, in name order."""
    netns, reqid, local, remote, tid, if_id, mark = labels
    lab = f'id="{tid}",if_id="{if_id}",local="{local}",mark="{mark}",netns="{netns}",remote="{remote}",reqid="{reqid}"'
    if lab.count('"') == 14 and "\\" not in lab and "\n" not in lab:
        return lab
    return (f'id="{escape(tid)}",if_id="{escape(if_id)}",local="{escape(local)}",mark="{escape(mark)}",'
            f'netns="{escape(netns)}",remote="{escape(remote)}",reqid="{escape(reqid)}"')


class Columns:
    """The previous compact columns: one label string per tunnel, its state, values in ``array('d')``."""

    stride = 11

    def __init__(self) -> None:
        self.labels: list[str] = []
        self.states: list[str] = []
        self.values: array[float] = array("d")
        self.hard = bytearray()

    def add(self, labels: str, state: str, values: tuple[Any, ...]) -> None:
        """One tunnel."""
        self.labels.append(labels)
        self.states.append(state)
        if values[_HARD] is None:
            self.values.extend((*values[:_HARD], 0.0, *values[_HARD + 1:]))
            self.hard.append(0)
        else:
            self.values.extend(values)
            self.hard.append(1)


def _tunnel_text(cols: Columns, chunk: int) -> Iterator[str]:
    f, labs, n, w = go_float, cols.labels, len(cols.labels), Columns.stride
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
    yield ""


async def gather_columns(view: TunnelView, now: float, chunk: int = 500,
                         mode: str = "all") -> tuple[Columns, dict[tuple[str, str], int]]:
    """The previous gather through ``metrics_row``: the seven-label string built per tunnel on the loop."""
    row_of = view.metrics_row  # type: ignore[attr-defined]
    cols = Columns()
    counts: Counter[tuple[str, str]] = Counter()
    everything, nothing = mode == "all", mode == "none"
    for i, tid in enumerate(list(view.tunnel_ids())):
        if i and i % chunk == 0:
            await asyncio.sleep(0)
        r = row_of(tid, now)
        if r is None:
            continue
        state = r[7]
        counts[(r[0], state)] += 1
        if everything or not (nothing or state in HEALTHY):
            cols.add(tunnel_labels((r[0], str(r[1]), r[2], r[3], r[4], _optional(r[5]), _optional(r[6]))), state, r[8:])
    return cols, dict(counts)


async def scrape_chunks(view: TunnelView, mon: MonitorSample, mode: str = "all",
                        gzip: bool = False) -> AsyncIterator[bytes]:
    """One scrape of the previous shape, as ``monitor.serve.metrics.scrape_chunks`` streamed it."""
    cols, counts = await gather_columns(view, mon.now, mode=mode)
    loop = asyncio.get_running_loop()
    it = encoded_chunks(itertools.chain(_tunnel_text(cols, 2000), ["".join(_monitor_text(mon, counts))]), gzip)
    while (piece := await loop.run_in_executor(None, next, it, None)) is not None:
        yield piece
