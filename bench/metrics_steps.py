"""The issue 15 /metrics changes one step at a time, in one run: CPU of a whole gzipped scrape per variant.

``python -m bench.metrics_steps [--tunnels 20000] [--repeats 5]`` scrapes one correlator (the metrics bench's
fleet) the way ``GET /metrics`` does with gzip (gather on a loop, text and gzip chunk by chunk in a worker thread)
in four shapes, interleaved round by round so that all see the same machine load, best of ``--repeats``:

1. ``previous``: seven labels on every per-tunnel line, values as Go floats, zlib (``bench/metrics_prev.py``);
2. ``info``: per-tunnel series labelled by ``id`` only plus ``ipsec_tunnel_info``, values still as Go floats, zlib;
3. ``info+int``: the same with counters written as integers, zlib;
4. ``info+int+isal``: the same through ISA-L's deflate (what ``monitor.serve.metrics`` serves).

Prints one JSON line per variant (CPU s per scrape, wire and text bytes) and the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import time
import zlib
from collections.abc import Iterator, Sequence
from typing import Any
from unittest import mock

from bench import metrics_prev
from bench.common import loadavg, loaded_pipeline
from bench.metrics_bench import MON
from monitor.serve import metrics, metrics_text
from monitor.serve.metrics_text import Columns, _ids, go_float, head, info_labels


def _go_text(cols: Columns, chunk: int) -> Iterator[str]:
    """Step 2's text: ``monitor.serve.metrics_text._tunnel_text`` with every counter through ``go_float``."""
    rows, n, f = cols.rows, len(cols.rows), go_float
    slices = [(rows[lo:lo + chunk], _ids(rows[lo:lo + chunk])) for lo in range(0, n, chunk)]

    def one(name: str, k: int) -> Iterator[str]:
        yield head(name)
        p = f'{name}_total{{id="'
        for part, ids in slices:
            yield "".join([f'{p}{i}"}} {f(float(r[k]))}\n' for r, i in zip(part, ids, strict=True)])

    def pair(name: str, k: int) -> Iterator[str]:
        yield head(name)
        p, q = f'{name}_total{{direction="in",id="', f'{name}_total{{direction="out",id="'
        for part, ids in slices:
            yield "".join([f'{p}{i}"}} {f(float(r[k]))}\n{q}{i}"}} {f(float(r[k + 1]))}\n'
                           for r, i in zip(part, ids, strict=True)])

    yield head("ipsec_tunnel_info")
    for part, _ in slices:
        yield "".join([f"ipsec_tunnel_info{{{info_labels(r)}}} 1.0\n" for r in part])
    yield from pair("ipsec_tunnel_bytes", 8)
    yield from pair("ipsec_tunnel_packets", 10)
    yield from one("ipsec_tunnel_rekeys", 12)
    yield from one("ipsec_tunnel_rekey_failures", 13)
    yield head("ipsec_tunnel_state")
    for part, ids in slices:
        yield "".join([f'ipsec_tunnel_state{{id="{i}",state="{r[7]}"}} 1.0\n' for r, i in zip(part, ids, strict=True)])
    yield head("ipsec_tunnel_hard_expiry_seconds")
    for part, ids in slices:
        yield "".join([f'ipsec_tunnel_hard_expiry_seconds{{id="{i}"}} {f(r[14])}\n'
                       for r, i in zip(part, ids, strict=True) if r[14] is not None])
    yield from one("ipsec_tunnel_replay_errors", 15)
    yield from one("ipsec_tunnel_integrity_errors", 16)
    yield from one("ipsec_tunnel_flaps", 17)
    yield head("ipsec_tunnel_downtime_seconds")
    for part, ids in slices:
        yield "".join([f'ipsec_tunnel_downtime_seconds_total{{id="{i}"}} {f(r[18])}\n'
                       for r, i in zip(part, ids, strict=True)])


async def _scrape(variant: str, c: Any) -> tuple[int, int]:
    wire = plain = 0
    if variant == "previous":
        async for p in metrics_prev.scrape_chunks(c, MON, "all", gzip=True):
            wire += len(p)
        return wire, plain
    async for p in metrics.scrape_chunks(c, MON, "all", gzip=True):
        wire += len(p)
    return wire, plain


def one(variant: str, c: Any) -> tuple[float, int]:
    """CPU seconds (the whole process) and wire bytes of one scrape in ``variant``."""
    patches: list[Any] = []
    if variant in ("previous", "info", "info+int"):
        patches.append(mock.patch.object(metrics_text, "_deflate", zlib))
    if variant == "info":
        patches.append(mock.patch.object(metrics_text, "_tunnel_text", _go_text))
    for p in patches:
        p.start()
    try:
        gc.collect()
        t0 = time.process_time()
        wire, _ = asyncio.run(_scrape(variant, c))
        return time.process_time() - t0, wire
    finally:
        for p in patches:
            p.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tunnels", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args(argv)
    c = loaded_pipeline(a.tunnels)[1]
    variants = ("previous", "info", "info+int", "info+int+isal")
    best = dict.fromkeys(variants, float("inf"))
    wire = dict.fromkeys(variants, 0)
    load0 = loadavg()
    for _ in range(a.repeats):
        for v in variants:
            cpu, wire[v] = one(v, c)
            best[v] = min(best[v], cpu)
    for v in variants:
        print(json.dumps({"variant": v, "tunnels": a.tunnels, "cpu_s": round(best[v], 4),
                          "us_per_tunnel": round(best[v] / a.tunnels * 1e6, 2), "wire_bytes": wire[v],
                          "ratio_to_previous": round(best[v] / best["previous"], 3)}))
    print(json.dumps({"load_before": load0, "load_after": loadavg()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
