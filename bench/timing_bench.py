"""Wall-clock figures that used to be bounds in the tests: loop stalls while streaming big lists, and replay pacing.

    python -m bench.timing_bench            # 100,000 tunnels, writes bench/results/timing.json
    python -m bench.timing_bench --quick    # 20,000 tunnels

The tests now assert the mechanisms (where the loop is yielded to, how many chunks, the waits on a fake
clock: ``tests/test_web_tunnels_rest_lag.py``, ``tests/test_web_slow.py``, ``tests/test_hub.py``,
``tests/test_record_replay.py``); how long things take on this machine is measured here, each against a
baseline taken in the same run, and reported as a ratio:

* ``rest``: the longest event-loop stall while ``GET /api/v1/tunnels`` streams every tunnel of a loaded
  correlator to a client in a thread, against the **unchunked** cost (building and serialising the whole
  list in one go, which is how long the loop would stall without the handler's yields);
* ``snapshot``: the same for a websocket client's snapshot;
* ``hub``: ``note_dirty`` for every tunnel at once against publishing them all synchronously, and the
  longest stall during ``flush_counters`` against the flush's total time;
* ``replay``: a 0.6 s capture (two 0.3 s gaps) played at speed 1 and 4 and as fast as possible, elapsed
  time as a ratio to the capture's span divided by the speed (1.0 is exact pacing).

Stalls are measured with a 5 ms sleep probe on the loop (lag = lateness of each wake-up).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import tempfile
import time
import urllib.request
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path
from typing import Any

from bench.common import loadavg, loaded_pipeline, write_result
from monitor.serve.config import Settings
from monitor.serve.hub import Hub
from monitor.serve.protocol import Filters, dumps
from monitor.sources.items import SourceItem
from monitor.sources.replay import ReplaySource
from monitor.wire import xfrm as X
from monitor.wire.encode import encode, encode_dump_request
from monitor.wire.events import SA, Algo, LifetimeCfg, LifetimeCur, NlHeader, SAAdded, Selector, Stats
from monitor.wire.pcap import PcapWriter

__all__ = ["run"]

PROBE = 0.005


class _Probe:
    """Max lateness of a ``PROBE``-second sleep on the running loop."""

    def __init__(self) -> None:
        self.max_lag = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t0 = loop.time()
            await asyncio.sleep(PROBE)
            self.max_lag = max(self.max_lag, loop.time() - t0 - PROBE)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> float:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        return self.max_lag


class _IdleSource:
    kind = "bench"

    async def items(self) -> AsyncGenerator[SourceItem, None]:
        await asyncio.Event().wait()
        yield  # type: ignore[misc]  # pragma: no cover - never reached


def _unchunked(correlator: Any) -> float:
    """Seconds to build and serialise every tunnel in one go (what one unyielding handler would stall)."""
    now = time.time()
    t0 = time.perf_counter()
    b",".join(dumps(correlator.tunnel_json(tid, now)) for tid in list(correlator.tunnel_ids()))
    return time.perf_counter() - t0


async def bench_serve(tunnels: int) -> dict[str, Any]:
    """REST list and websocket snapshot of ``tunnels`` tunnels: longest loop stall vs the unchunked cost."""
    import aiohttp
    from aiohttp.test_utils import TestServer

    from monitor.serve.web import create_app

    pipeline, correlator = loaded_pipeline(tunnels)
    baseline = _unchunked(correlator)
    app = create_app(Settings(source="simulate", port=0, log_level="warning"), _IdleSource(),
                     pipeline=pipeline, correlator=correlator)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    out: dict[str, Any] = {"tunnels": tunnels, "unchunked_s": round(baseline, 4)}
    try:
        url = str(server.make_url("/api/v1/tunnels"))

        def fetch() -> int:
            with urllib.request.urlopen(url, timeout=120) as r:
                return len(r.read())

        probe = _Probe()
        probe.start()
        t0 = time.perf_counter()
        size = await asyncio.to_thread(fetch)
        took = time.perf_counter() - t0
        lag = await probe.stop()
        out["rest"] = {"bytes": size, "took_s": round(took, 3), "max_lag_s": round(lag, 4),
                       "lag_over_unchunked": round(lag / baseline, 3)}
        probe = _Probe()
        async with aiohttp.ClientSession() as sess:
            probe.start()
            t0 = time.perf_counter()
            chunks = 0
            async with sess.ws_connect(server.make_url("/ws"), max_msg_size=0) as ws:
                while True:
                    m = await ws.receive_json(timeout=120)
                    if m["type"] == "snapshot":
                        chunks += 1
                        if m["last"]:
                            break
            took = time.perf_counter() - t0
            lag = await probe.stop()
        out["snapshot"] = {"chunks": chunks, "took_s": round(took, 3), "max_lag_s": round(lag, 4),
                           "lag_over_unchunked": round(lag / baseline, 3)}
    finally:
        await server.close()
    return out


async def bench_hub(tunnels: int) -> dict[str, Any]:
    """``note_dirty`` of ``tunnels`` new tunnels vs publishing them synchronously; the flush's longest stall."""
    _, correlator = loaded_pipeline(tunnels)
    ids = list(correlator.tunnel_ids())
    sync = Hub(correlator, clock=time.time)
    sync.attach(Filters())
    t0 = time.perf_counter()
    sync.publish_tunnels(ids, time.time())
    baseline = time.perf_counter() - t0
    hub = Hub(correlator, clock=time.time)
    hub.attach(Filters())
    t0 = time.perf_counter()
    hub.note_dirty(ids, time.time())
    note = time.perf_counter() - t0
    probe = _Probe()
    probe.start()
    await asyncio.sleep(0)
    t0 = time.perf_counter()
    rows = await hub.flush_counters(time.time())
    flush = time.perf_counter() - t0
    lag = await probe.stop()
    return {"tunnels": tunnels, "rows": rows, "publish_all_sync_s": round(baseline, 4),
            "note_dirty_s": round(note, 5), "note_over_sync": round(note / baseline, 4),
            "flush_s": round(flush, 3), "flush_max_lag_s": round(lag, 4),
            "flush_lag_over_flush": round(lag / flush, 3)}


def _capture(path: Path, gaps: Sequence[float]) -> float:
    sa = SA(Selector("0.0.0.0", "0.0.0.0"), "192.0.2.2", 0x100, X.IPPROTO_ESP, "192.0.2.1", LifetimeCfg(),
            LifetimeCur(), Stats(), 0, 3, X.AF_INET, 1, 32, 0, enc=Algo("cbc(aes)", 256),
            auth_trunc=Algo("hmac(sha256)", 256, 128))
    ts = 1_700_000_000.0
    with PcapWriter(path) as w:
        w.write(ts, encode_dump_request(X.XFRM_MSG_GETSA, 1), True, "default")
        for gap in gaps:
            ts += gap
            w.write(ts, encode(SAAdded(NlHeader(X.XFRM_MSG_NEWSA), sa)), False, "default")
    return float(sum(gaps))


async def bench_replay() -> dict[str, Any]:
    """Elapsed time of a paced replay against the capture's span divided by the speed."""
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "p.pcap"
        span = _capture(path, [0.3, 0.3])
        for speed in (1.0, 4.0, None):
            t0 = time.perf_counter()
            n = sum([1 async for _ in ReplaySource(path, speed).items()])
            took = time.perf_counter() - t0
            key = f"speed_{speed:g}" if speed else "fast"
            out[key] = {"records": n, "took_s": round(took, 4)}
            if speed:
                out[key]["over_expected"] = round(took / (span / speed), 3)
    return out


def run(quick: bool = False) -> dict[str, Any]:
    """Every section; 20,000 tunnels with ``quick``, else 100,000."""
    tunnels = 20_000 if quick else 100_000
    gc.collect()
    return {"loadavg_at_start": loadavg(),
            "serve": asyncio.run(bench_serve(tunnels)),
            "hub": asyncio.run(bench_hub(tunnels)),
            "replay": asyncio.run(bench_replay())}


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    res = run(args.quick)
    s, h, r = res["serve"], res["hub"], res["replay"]
    print(f"{s['tunnels']} tunnels; unchunked build+serialise {s['unchunked_s']:.3f} s (the baseline)")
    for k in ("rest", "snapshot"):
        print(f"  {k:9s} max loop stall {s[k]['max_lag_s'] * 1000:7.1f} ms = {s[k]['lag_over_unchunked']:.3f} "
              f"x unchunked (took {s[k]['took_s']:.2f} s)")
    print(f"  hub       note_dirty {h['note_dirty_s'] * 1000:.2f} ms = {h['note_over_sync']:.4f} x publishing all "
          f"synchronously; flush stall {h['flush_max_lag_s'] * 1000:.1f} ms of {h['flush_s']:.2f} s "
          f"({h['flush_lag_over_flush']:.3f})")
    print(f"  replay    0.6 s capture: speed 1 {r['speed_1']['over_expected']:.3f} x expected, "
          f"speed 4 {r['speed_4']['over_expected']:.3f} x, fast {r['fast']['took_s'] * 1000:.1f} ms")
    print(f"wrote {write_result('timing', res)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
