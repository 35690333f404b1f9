"""Prometheus ``/metrics`` exposition at scale: gather + render of N synthetic tunnels.

``python -m bench.metrics_bench [--tunnels 5000,100000]`` builds a correlator holding N tunnels (2N SAs
from ``bench.common``'s fleet, fed through the real decoder and pipeline), then times, on one thread:

- ``gather``: :func:`monitor.serve.metrics.gather` (runs on the event loop; the longest stretch between two
  yields is reported as ``max_block_s``, i.e. the longest the loop is blocked by a scrape;
  ``gather_cold_cpu_s`` is the first scrape, before the ``ScrapeCache`` knows the tunnels);
- ``render``: :func:`monitor.serve.metrics.render` (runs in a worker thread);
- the baseline ``render_prometheus_client``: the same samples through ``prometheus_client``'s
  ``generate_latest`` (what ``render`` used to be), for the ratio;
- bytes of the exposition, for ``metrics_tunnels`` = all / unhealthy / none.

CPU time is ``time.thread_time`` (the machine is shared), best of ``--repeats``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from bench.common import NOW0, loaded_pipeline, write_result
from monitor.health.correlate import Correlator
from monitor.serve import metrics, metrics_reference

MON = metrics.MonitorSample(enobufs={"bench": 0}, resyncs={"bench": 0}, lag=0.001,
                            dumps={"bench": {"last_dump": NOW0, "last_dump_duration": 0.5}},
                            now=NOW0, clients=0, gaps=0, dropped=0, stalled=0)


def build(tunnels: int) -> Correlator:
    """A correlator holding ``tunnels`` tunnels after one full dump."""
    return loaded_pipeline(tunnels)[1]


def _best(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.thread_time()
        out = fn()
        best = min(best, time.thread_time() - t0)
    return best, out


def _gather(c: Correlator, mode: str, cache: metrics.ScrapeCache) -> tuple[metrics.Gathered, float]:
    """Run gather on a private loop; return (samples, longest stretch between two loop iterations)."""
    async def main() -> tuple[metrics.Gathered, float]:
        stop = False
        worst = 0.0

        async def ticker() -> None:
            nonlocal worst
            last = time.perf_counter()
            while not stop:
                await asyncio.sleep(0)
                now = time.perf_counter()
                worst = max(worst, now - last)
                last = now

        task = asyncio.ensure_future(ticker())
        await asyncio.sleep(0)
        out = await metrics.gather(c, NOW0, mode=mode, cache=cache)
        stop = True
        await task
        return out, worst
    return asyncio.run(main())


def run_one(tunnels: int, repeats: int) -> dict[str, Any]:
    """Measure one fleet size."""
    c = build(tunnels)
    res: dict[str, Any] = {"tunnels": tunnels}
    for mode in metrics.MODES:
        cache = metrics.ScrapeCache()
        cold_cpu, _ = _best(lambda m=mode, k=cache: _gather(c, m, k), 1)  # type: ignore[misc]
        g_cpu, (g, block) = _best(lambda m=mode, k=cache: _gather(c, m, k), repeats)  # type: ignore[misc]
        r_cpu, body = _best(lambda g=g: metrics.render(g.tunnels, MON, g.counts), repeats)  # type: ignore[misc]
        row = {"gather_cold_cpu_s": round(cold_cpu, 4), "gather_cpu_s": round(g_cpu, 4),
               "max_block_s": round(block, 4), "render_cpu_s": round(r_cpu, 4), "bytes": len(body),
               "series": body.count(b"\n") - body.count(b"# ")}
        if mode == "all":
            b_cpu, base = _best(lambda g=g: metrics_reference.render_prometheus_client(g.tunnels, MON, g.counts), 1)  # type: ignore[misc]
            if base != body:
                raise SystemExit("render and render_prometheus_client disagree")
            row.update(baseline_render_cpu_s=round(b_cpu, 4), render_speedup=round(b_cpu / r_cpu, 1))
        res[mode] = row
    return res


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tunnels", default="5000,100000")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args(argv)
    out = {"sizes": [run_one(int(n), a.repeats) for n in a.tunnels.split(",")]}
    print(json.dumps(out, indent=1))
    if not a.no_write:
        write_result("metrics", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
