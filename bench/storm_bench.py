"""Event storms through decode -> correlate -> publish: a rekey storm and an ACQUIRE storm.

    python -m bench.storm_bench            # 100k tunnels, writes bench/results/storm.json
    python -m bench.storm_bench --quick    # 20k tunnels, storm replayed 4x faster than real time

Setup: a fleet of N tunnels (2N SAs, ``bench.common.fleet_sa``) is loaded with one GETSA dump through
the real ``Pipeline``/``Correlator`` and published to a real ``Hub`` before anything is timed.

* **Rekey storm**: 10% of the tunnels rekey within 10 s (start times uniform over the window), each in
  strongSwan's order, one notification per datagram as the kernel multicasts them: soft EXPIRE of the
  old outbound SA, UPDSA new inbound, NEWSA new outbound, UPDPOLICY out, DELSA old outbound, and
  DELSA old inbound 5 s later (``delete_rekeyed_delay``): 6 netlink events per rekey.
* **ACQUIRE storm**: as many tunnels again with trap policies but no SAs (peers unreachable) each get
  3 ACQUIREs within 10 s (new down tunnels, ``acquire`` health events, negotiation_failed timers).

Each storm runs twice through the real ``monitor.serve.daemon.Daemon`` (the production shell: feed, drain,
publish to the hub every 256 items, correlator timers, 1 s counters frames) inside an asyncio loop
with a lag probe (5 ms sleeps; lag = how late each wake-up is):

* ``realtime``: items are released at their simulated time (``--speed`` times faster than real time);
  the question is whether the loop keeps up and how large its lag gets;
* ``flat_out``: all items as fast as the daemon takes them: events/s through decode -> correlate ->
  publish (hub serialisation; no websocket clients are attached here, see ``bench.fanout_bench``).

The same-run baselines are the decoder alone and the pipeline alone (no hub) over the same datagrams.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import random
import sys
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from bench.common import (
    NOW0,
    dump_items,
    dump_records,
    fleet_sa,
    pack_records,
    pin_one_cpu,
    run_queue_wait,
    summary,
    write_result,
)
from monitor.health.correlate import Correlator
from monitor.health.pipeline import Pipeline
from monitor.serve.daemon import Daemon
from monitor.serve.hub import Hub
from monitor.sources.items import Datagram, SourceItem
from monitor.wire import xfrm as X
from monitor.wire.decode import decode_datagram
from monitor.wire.encode import encode
from monitor.wire.events import (
    SA,
    Acquire,
    Event,
    LifetimeCfg,
    LifetimeCur,
    NlHeader,
    Policy,
    PolicyUpdated,
    SADeleted,
    SAExpired,
    SAId,
    SAUpdated,
    Selector,
    Template,
)
from monitor.wire.events import SAAdded as SAAddedEv

__all__ = ["BenchSource", "acquire_storm", "rekey_storm", "run"]

CHARON = 4242
WINDOW = 10.0  # seconds: the storm's start times are spread over this window
DELETE_DELAY = 5.0  # strongSwan's delete_rekeyed_delay
PROBE = 0.005


def _dg(ev: Event, ts: float) -> Datagram:
    return Datagram("bench", encode(ev), ts, False)


def _policy_out(t: int, sa_out: SA) -> Policy:
    tmpl = Template(sa_out.daddr, sa_out.spi, X.IPPROTO_ESP, X.AF_INET, sa_out.saddr, sa_out.reqid, 1)
    return Policy(sa_out.sel, LifetimeCfg(), LifetimeCur(0, 0, int(NOW0) - 3600, 0), 375423, t * 8 + 1, 1, 0, 0, 0,
                  (tmpl,), 0, None, sa_out.if_id)


def rekey_storm(tunnels: int, fraction: float = 0.1, seed: int = 1, t0: float = NOW0 + 1) -> list[Datagram]:
    """The rekey storm's datagrams in time order (6 per rekeying tunnel)."""
    rng = random.Random(seed)
    chosen = rng.sample(range(tunnels), max(1, int(tunnels * fraction)))
    out: list[tuple[float, int, Datagram]] = []
    k = 0
    for t in chosen:
        start = t0 + rng.uniform(0, WINDOW)
        old_out, old_in = fleet_sa(2 * t), fleet_sa(2 * t + 1)
        add = int(start)
        new_in = old_in._replace(spi=0xD0000000 | (2 * t + 1), cur=LifetimeCur(0, 0, add, 0))
        new_out = old_out._replace(spi=0xD0000000 | (2 * t), cur=LifetimeCur(0, 0, add, 0))
        final_out = old_out._replace(cur=old_out.cur._replace(bytes=old_out.cur.bytes + 10_000,
                                                              packets=old_out.cur.packets + 10))
        final_in = old_in._replace(cur=old_in.cur._replace(bytes=old_in.cur.bytes + 10_000,
                                                           packets=old_in.cur.packets + 10))
        evs: list[tuple[float, Event]] = [
            (start, SAExpired(NlHeader(X.XFRM_MSG_EXPIRE), old_out, False)),
            (start + 0.05, SAUpdated(NlHeader(X.XFRM_MSG_UPDSA, 0, 1, CHARON), new_in)),
            (start + 0.06, SAAddedEv(NlHeader(X.XFRM_MSG_NEWSA, 0, 2, CHARON), new_out)),
            (start + 0.07, PolicyUpdated(NlHeader(X.XFRM_MSG_UPDPOLICY, 0, 3, CHARON), _policy_out(t, new_out))),
            (start + 0.08, SADeleted(NlHeader(X.XFRM_MSG_DELSA, 0, 4, CHARON),
                                     SAId(old_out.daddr, old_out.spi, X.AF_INET, X.IPPROTO_ESP), final_out)),
            (start + DELETE_DELAY, SADeleted(NlHeader(X.XFRM_MSG_DELSA, 0, 5, CHARON),
                                             SAId(old_in.daddr, old_in.spi, X.AF_INET, X.IPPROTO_ESP), final_in)),
        ]
        for ts, ev in evs:
            k += 1
            out.append((ts, k, _dg(ev, ts)))
    out.sort(key=lambda x: (x[0], x[1]))
    return [d for _, _, d in out]


def acquire_storm(tunnels: int, first_reqid: int, per_tunnel: int = 3, seed: int = 2,
                  t0: float = NOW0 + 1) -> list[Datagram]:
    """ACQUIREs for ``tunnels`` SA-less tunnels (reqids from ``first_reqid``), ``per_tunnel`` each, in order."""
    rng = random.Random(seed)
    out: list[tuple[float, int, Datagram]] = []
    k = 0
    for j in range(tunnels):
        reqid = first_reqid + j
        remote = f"{('192.0.2.', '198.51.100.', '203.0.113.')[j % 3]}{1 + (j // 3) % 254}"
        local = "198.51.100.254"
        sel = Selector(f"10.200.{(j >> 8) & 255}.{j & 255}", f"172.20.{(j >> 8) & 255}.{j & 255}",
                       family=X.AF_INET, prefixlen_d=32, prefixlen_s=32, proto=1)
        tmpl = Template(remote, 0, X.IPPROTO_ESP, X.AF_INET, local, reqid, 1)
        pol = Policy(sel, LifetimeCfg(), LifetimeCur(0, 0, int(NOW0) - 60, 0), 375423, 8 * reqid + 1, 1, 0, 0, 0,
                     (tmpl,), 0, None, None)
        start = t0 + rng.uniform(0, WINDOW / 2)
        for r in range(per_tunnel):
            ts = start + r * (WINDOW / 2) / per_tunnel
            k += 1
            ev = Acquire(NlHeader(X.XFRM_MSG_ACQUIRE), remote, 0, X.IPPROTO_ESP, local, sel, pol,
                         0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, k, templates=(tmpl,), policy_type=0)
            out.append((ts, k, _dg(ev, ts)))
    out.sort(key=lambda x: (x[0], x[1]))
    return [d for _, _, d in out]


class BenchSource:
    """Yields pre-built items at their simulated time (``speed`` x real time), or flat out (``speed=None``)."""

    kind = "bench"

    def __init__(self, items: Sequence[SourceItem], speed: float | None) -> None:
        self._items = items
        self.speed = 1000.0 if speed is None else speed  # the daemon scales correlator timers with this
        self._flat = speed is None
        self._sim0 = items[0].ts if items else NOW0
        self._real0: float | None = None
        self._last = self._sim0
        self.done = asyncio.Event()
        self.started = 0.0
        self.finished = 0.0

    def now(self) -> float:
        """Simulated time (the daemon's clock)."""
        if self._flat or self._real0 is None:
            return self._last
        return self._sim0 + (time.monotonic() - self._real0) * self.speed

    async def items(self) -> AsyncIterator[SourceItem]:
        """The items, then idle until cancelled (a live source never ends)."""
        self._real0 = time.monotonic()
        self.started = time.perf_counter()
        for it in self._items:
            if not self._flat:
                wait = (it.ts - self.now()) / self.speed
                if wait > 0:
                    await asyncio.sleep(wait)
            self._last = it.ts
            yield it
        self.finished = time.perf_counter()
        self.done.set()
        await asyncio.Event().wait()


class _Probe:
    def __init__(self) -> None:
        self.lags: list[float] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t0 = loop.time()
            await asyncio.sleep(PROBE)
            self.lags.append(max(0.0, loop.time() - t0 - PROBE))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _preloaded(fleet_dump: list[bytes]) -> tuple[Pipeline, Correlator, Hub]:
    correlator = Correlator()
    pipeline = Pipeline(correlator)
    for it in dump_items(fleet_dump, ts=NOW0):
        pipeline.feed(it, NOW0)
    correlator.drain_events()
    hub = Hub(correlator, clock=lambda: NOW0)
    hub.note_dirty(correlator.take_dirty(), NOW0)  # the hub learns every tunnel before the storm
    hub.pending.clear()
    return pipeline, correlator, hub


async def _through_daemon(fleet_dump: list[bytes], storm: list[Datagram], speed: float | None) -> dict[str, Any]:
    pipeline, correlator, hub = _preloaded(fleet_dump)
    gc.collect()
    seq0 = correlator.seq
    source = BenchSource(storm, speed)
    daemon = Daemon(source, pipeline, correlator, hub, kind="bench", counters_interval=1.0, clock=source.now)
    hub.clock = source.now
    probe = _Probe()
    probe.start()
    t0 = time.perf_counter()
    c0 = time.process_time()
    w0 = run_queue_wait()
    await daemon.start()
    await source.done.wait()
    daemon.publish()
    t1 = time.perf_counter()
    cpu = time.process_time() - c0
    waited = run_queue_wait() - w0
    await asyncio.sleep(0.05)
    await probe.stop()
    await daemon.stop()
    elapsed = t1 - t0
    health = correlator.seq - seq0
    return {
        "mode": "flat_out" if speed is None else f"realtime x{speed:g}",
        "netlink_events": len(storm),
        "health_events": health,
        "seconds": elapsed,
        "cpu_seconds": cpu,
        "run_queue_wait_s": waited,
        "storm_span_s": (storm[-1].ts - storm[0].ts) if storm else 0.0,
        "netlink_events_per_s": len(storm) / elapsed if elapsed else None,
        "health_events_per_s": health / elapsed if elapsed else None,
        "loop_lag_ms": {k: (v * 1000 if isinstance(v, float) else v) for k, v in summary(probe.lags).items()},
        "malformed": pipeline.stats.malformed,
        "ring": len(hub.ring),
    }


def _baselines(storm: list[Datagram], fleet_dump: list[bytes]) -> dict[str, Any]:
    gc.collect()
    t0 = time.perf_counter()
    for it in storm:
        decode_datagram(it.data)
    decode_s = time.perf_counter() - t0
    pipeline, correlator, _hub = _preloaded(fleet_dump)
    gc.collect()
    t0 = time.perf_counter()
    for it in storm:
        pipeline.feed(it, it.ts)
    pipe_s = time.perf_counter() - t0
    return {"decode_only_events_per_s": len(storm) / decode_s, "pipeline_only_events_per_s": len(storm) / pipe_s,
            "health_events": len(correlator.drain_events())}


def run(tunnels: int = 100_000, speed: float = 1.0, storms: Sequence[str] = ("rekey", "acquire")) -> dict[str, Any]:
    """Build the fleet and the storms; time each storm realtime and flat out, plus the baselines."""
    t0 = time.perf_counter()
    fleet_dump = pack_records(list(dump_records(2 * tunnels)))
    built = {
        "rekey": lambda: rekey_storm(tunnels),
        "acquire": lambda: acquire_storm(max(1, tunnels // 10), first_reqid=tunnels + 1),
    }
    res: dict[str, Any] = {"tunnels": tunnels, "build_s": time.perf_counter() - t0, "storms": {}}
    for name in storms:
        storm = built[name]()
        entry: dict[str, Any] = {"netlink_events": len(storm), "baseline": _baselines(storm, fleet_dump)}
        entry["realtime"] = asyncio.run(_through_daemon(fleet_dump, storm, speed))
        entry["flat_out"] = asyncio.run(_through_daemon(fleet_dump, storm, None))
        res["storms"][name] = entry
    return res


def format_table(result: dict[str, Any]) -> str:
    """Markdown rows for RESULTS.md."""
    rows = ["| storm | mode | netlink events | health events | s | netlink ev/s | loop lag p99 ms | max ms |",
            "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, e in result["storm"]["storms"].items():
        for mode in ("realtime", "flat_out"):
            r = e[mode]
            lag = r["loop_lag_ms"]
            rows.append(f"| {name} | {r['mode']} | {r['netlink_events']:,} | {r['health_events']:,} | "
                        f"{r['seconds']:.2f} | {r['netlink_events_per_s']:,.0f} | {lag['p99']:.1f} | "
                        f"{lag['max']:.1f} |")
        b = e["baseline"]
        rows.append(f"| {name} | baseline: decode only | {e['netlink_events']:,} | | | "
                    f"{b['decode_only_events_per_s']:,.0f} | | |")
        rows.append(f"| {name} | baseline: pipeline only (no hub) | {e['netlink_events']:,} | | | "
                    f"{b['pipeline_only_events_per_s']:,.0f} | | |")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(prog="python -m bench.storm_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20,000 tunnels, realtime storm at 4x speed")
    parser.add_argument("--tunnels", type=int, default=None)
    parser.add_argument("--speed", type=float, default=None, help="realtime replay speed (default 1)")
    args = parser.parse_args(argv)
    pinned = pin_one_cpu()
    tunnels = args.tunnels or (20_000 if args.quick else 100_000)
    speed = args.speed or (4.0 if args.quick else 1.0)
    result: dict[str, Any] = {"benchmark": "storm",
                              "params": {"tunnels": tunnels, "speed": speed, "quick": args.quick,
                                         "pinned_cpu": pinned, "fraction": 0.1, "window_s": WINDOW}}
    result["storm"] = run(tunnels, speed)
    path = write_result("storm", result)
    print(format_table(result))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
