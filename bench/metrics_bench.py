"""Prometheus ``/metrics`` exposition at scale: one scrape of N synthetic tunnels, ours against the old shape.

``python -m bench.metrics_bench [--tunnels 5000,100000] [--quick]`` builds a correlator holding N tunnels (2N
SAs from ``bench.common``'s fleet, fed through the real decoder and pipeline), then, for ``metrics_tunnels`` =
all / unhealthy / none, runs one scrape the way ``GET /metrics`` does when Prometheus asks for gzip
(:func:`monitor.serve.metrics.scrape_chunks`: gather on an event loop through the correlator's
``metrics_row``, text and gzip written chunk by chunk in a worker thread, the pieces counted and dropped as a
socket would), and measures:

- CPU seconds of the whole scrape (``time.process_time``: every thread of the process), best of ``--repeats``;
- bytes on the wire (gzip) and uncompressed, series count;
- RSS growth during the scrape (peak RSS ``VmHWM`` after resetting it through ``/proc/self/clear_refs``,
  minus RSS before; falls back to polling ``VmRSS`` every 2 ms);
- the longest stretch the event loop was blocked (a ticker task).

Baseline in the same run, same correlator: the previous scrape's shape (``bench/metrics_prev.py``: the seven
labels ``id, if_id, local, mark, netns, remote, reqid`` on every per-tunnel line and every value written as a Go
float, streamed and gzipped the same way), measured the same way. At the smallest size the body is also checked
against ``prometheus_client.generate_latest`` of the same samples (the parsed families must be equal).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from bench import metrics_prev
from bench.common import NOW0, loadavg, loaded_pipeline, machine_description, rss_bytes, write_result
from monitor.health.correlate import Correlator
from monitor.serve import metrics, metrics_reference

MON = metrics.MonitorSample(enobufs={"bench": 0}, resyncs={"bench": 0}, lag=0.001,
                            dumps={"bench": {"last_dump": NOW0, "last_dump_duration": 0.5}},
                            now=NOW0, clients=0, gaps=0, dropped=0, stalled=0)


def build(tunnels: int) -> Correlator:
    """A correlator holding ``tunnels`` tunnels after one full dump."""
    return loaded_pipeline(tunnels)[1]


def _cpu(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeats):
        gc.collect()
        t0 = time.process_time()
        out = fn()
        best = min(best, time.process_time() - t0)
    return best, out


class PeakRss:
    """RSS growth over a block: VmHWM reset via clear_refs where the kernel allows it, else a polling thread."""

    def __init__(self) -> None:
        self.growth = 0
        self._stop = threading.Event()
        self._poll: threading.Thread | None = None

    def __enter__(self) -> PeakRss:
        gc.collect()
        self.before = rss_bytes()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.hwm = True
        except OSError:
            self.hwm = False
            self.peak = self.before
            self._poll = threading.Thread(target=self._run, daemon=True)
            self._poll.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc: object) -> None:
        if self.hwm:
            with open("/proc/self/status") as f:
                peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
        else:
            self._stop.set()
            assert self._poll is not None
            self._poll.join()
            peak = self.peak
        self.growth = peak - self.before


def _on_loop(make: Callable[[], Any]) -> tuple[Any, float]:
    """Run the coroutine ``make()`` on a private loop; return (its result, longest loop stall)."""
    async def main() -> tuple[Any, float]:
        stop = False
        worst = 0.0

        async def ticker() -> None:
            nonlocal worst
            last = time.perf_counter()
            while not stop:  # a 1 ms sleeper: idle like the daemon's loop, not a spinning rival for the GIL
                await asyncio.sleep(0.001)
                now = time.perf_counter()
                worst = max(worst, now - last - 0.001)
                last = now

        task = asyncio.ensure_future(ticker())
        await asyncio.sleep(0)
        out = await make()
        stop = True
        await task
        return out, worst
    return asyncio.run(main())


def _streamed(chunks: Callable[[Correlator, str], Any], c: Correlator, mode: str) -> tuple[tuple[int, int], float]:
    async def scrape() -> tuple[int, int]:
        n = pieces = 0
        async for piece in chunks(c, mode):
            n += len(piece)
            pieces += 1
        return n, pieces
    out: tuple[tuple[int, int], float] = _on_loop(scrape)
    return out


def ours(c: Correlator, mode: str) -> tuple[tuple[int, int], float]:
    """One streamed, gzipped scrape; returns ((wire bytes, pieces), longest loop stall)."""
    return _streamed(lambda v, m: metrics.scrape_chunks(v, MON, m, gzip=True), c, mode)


def before(c: Correlator, mode: str) -> tuple[tuple[int, int], float]:
    """The same scrape in the previous shape (``bench/metrics_prev.py``)."""
    return _streamed(lambda v, m: metrics_prev.scrape_chunks(v, MON, m, gzip=True), c, mode)


async def _plain_before(c: Correlator, mode: str) -> bytes:
    return b"".join([p async for p in metrics_prev.scrape_chunks(c, MON, mode)])


def run_one(tunnels: int, repeats: int, reference: bool) -> dict[str, Any]:
    """Measure one fleet size."""
    c = build(tunnels)
    res: dict[str, Any] = {"tunnels": tunnels}
    for mode in metrics.MODES:
        with PeakRss() as rss:
            (wire, pieces), stall = ours(c, mode)
        # interleaved (ours, previous, ours, ...): both see the same machine load; best of each
        cpu = b_cpu = float("inf")
        for _ in range(repeats):
            cpu = min(cpu, _cpu(lambda m=mode: ours(c, m), 1)[0])  # type: ignore[misc]
            b_cpu = min(b_cpu, _cpu(lambda m=mode: before(c, m), 1)[0])  # type: ignore[misc]
        plain = asyncio.run(metrics.scrape(c, MON, mode))
        row: dict[str, Any] = {
            "cpu_s": round(cpu, 4), "wire_bytes": wire, "pieces": pieces, "bytes": len(plain),
            "series": plain.count(b"\n") - plain.count(b"# "), "rss_growth_bytes": rss.growth,
            "rss_method": "VmHWM" if rss.hwm else "poll", "max_block_s": round(stall, 4)}
        with PeakRss() as rss0:
            (b_wire, _), b_stall = before(c, mode)
        b_plain = asyncio.run(_plain_before(c, mode))
        row["before"] = {"cpu_s": round(b_cpu, 4), "wire_bytes": b_wire, "bytes": len(b_plain),
                         "series": b_plain.count(b"\n") - b_plain.count(b"# "), "rss_growth_bytes": rss0.growth,
                         "max_block_s": round(b_stall, 4)}
        row["load"] = loadavg()
        row["cpu_ratio"] = round(cpu / b_cpu, 3) if b_cpu else None
        if reference and mode == "all":
            samples = [metrics.sample(t) for t in c.snapshot(NOW0)]
            ref = metrics_reference.render_prometheus_client(samples, MON)
            if metrics_reference.families(ref) != metrics_reference.families(plain):
                raise SystemExit("scrape and render_prometheus_client disagree")
            row["reference_identical"] = True
        res[mode] = row
        print(json.dumps({mode: row}), flush=True)
    return res


def format_table(result: dict[str, Any]) -> str:
    """Markdown rows for RESULTS.md: ours and the old shape, per size and mode."""
    rows = ["| tunnels | metrics_tunnels | series | text MB | gzip MB (wire) | CPU s per scrape "
            "| previous shape: CPU s, gzip MB, text MB | CPU ratio | RSS growth MB (previous) "
            "| longest loop stall ms |",
            "|---:|---|---:|---:|---:|---:|---|---:|---|---:|"]
    mb = 1e6
    for size in result["sizes"]:
        for mode in ("all", "unhealthy", "none"):
            r = size[mode]
            b = r["before"]
            rows.append(f"| {size['tunnels']:,} | {mode} | {r['series']:,} | {r['bytes'] / mb:.1f} | "
                        f"{r['wire_bytes'] / mb:.2f} | {r['cpu_s']:.3f} | "
                        f"{b['cpu_s']:.3f}, {b['wire_bytes'] / mb:.2f}, "
                        f"{b['bytes'] / mb:.1f} | {r['cpu_ratio']:.2f} | {r['rss_growth_bytes'] / 2**20:.0f} "
                        f"({b['rss_growth_bytes'] / 2**20:.0f}) | {r['max_block_s'] * 1000:.0f} |")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tunnels", default="5000,100000")
    ap.add_argument("--quick", action="store_true", help="--tunnels 2000,10000 --repeats 1")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args(argv)
    sizes = [2000, 10000] if a.quick else [int(n) for n in a.tunnels.split(",")]
    repeats = 1 if a.quick else a.repeats
    out = {"params": {"quick": a.quick, "repeats": repeats}, "machine": machine_description(),
           "sizes": [run_one(n, repeats, reference=i == 0) for i, n in enumerate(sizes)], "load": loadavg()}
    print(json.dumps(out, indent=1))
    if not a.no_write:
        write_result("metrics", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
