"""Issue 15 item 1, "refresh close to the floor": the skip-unchanged fast path against a raw recv loop.

Part of ``python -m bench.refresh_bench`` (the ``fastpath`` key of ``bench/results/refresh.json``). On the
same dump bytes, in the same run, interleaved round by round:

* **raw recv loop**: the dump's datagrams sent through an ``AF_UNIX`` datagram socket pair by a writer
  thread and read with ``recv_into`` + a header walk (length/type of every ``nlmsghdr``) by the reader,
  whose CPU (``time.thread_time``) and wall time are the floor. A kernel dump costs more than this (the
  kernel builds each record), so the ratios here are the strict reading of the target;
* **fast path on** / **off** (``Pipeline(fastpath=...)``, what ``MONITOR_REFRESH_FASTPATH=off`` selects): a
  correlator that loaded the dump and refreshed once with it unchanged (so digests are held) is fed the
  next dump, in which 10% (or 100%) of the SAs' counters grew (a seeded random subset);
* **longest loop stall**: the same three dumps through the real ``Daemon`` (its ``FEED_SLICE`` policy) and
  a ``Hub`` on an asyncio loop, with a probe task sleeping 1 ms: the longest gap between two probe
  wake-ups while the changed dump is fed, minus the 1 ms. Also with slicing off (``FEED_SLICE`` infinite:
  the loop got a turn only every 256 items, as before).

RSS per SA held after the load and two refreshes is measured in fresh interpreters by
``bench.refresh_bench.rss_per_sa`` (fast path on, off, and the ``main`` branch's code when given).
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import random
import socket
import threading
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from bench.common import NOW0, dump_items, pack_records, patch_counters, run_queue_wait
from monitor.health.correlate import Correlator
from monitor.health.pipeline import Pipeline
from monitor.sources.items import Datagram, SourceItem
from monitor.wire import xfrm as X

__all__ = ["TARGET_ALL", "TARGET_STALL_MS", "TARGET_TENTH", "changed_dump", "raw_recv", "run_fastpath"]

TARGET_TENTH = 3.0  # 10% changed: <= 3x the raw recv loop
TARGET_ALL = 6.0  # every SA changed: <= 6x
TARGET_STALL_MS = 20.0


def changed_dump(records: Sequence[bytes], frac: float, k: int, seed: int = 15) -> list[bytes]:
    """The next dump: a seeded ``frac`` of the records with counters grown by ``k`` steps, the rest as they were."""
    rng = random.Random(seed)
    return pack_records([patch_counters(r, 1_000_000 * k, 1000 * k) if rng.random() < frac else r for r in records])


def raw_recv(datagrams: Sequence[bytes]) -> tuple[float, float, int]:
    """(wall s, reader CPU s, records): the datagrams through a socket pair, read with a header walk."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    for s in (a, b):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)

    def write() -> None:
        for d in datagrams:
            a.send(d)

    buf = bytearray(1 << 18)
    unpack = X.NLMSGHDR.unpack_from
    records = 0
    writer = threading.Thread(target=write)
    c0, t0 = time.thread_time(), time.perf_counter()
    writer.start()
    for _ in range(len(datagrams)):
        n = b.recv_into(buf)
        off = 0
        while off + 16 <= n:
            length, _t, _f, _s, _p = unpack(buf, off)
            records += 1
            off += (length + 3) & ~3
    wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
    writer.join()
    a.close()
    b.close()
    return wall, cpu, records


def _feed(p: Pipeline, items: Sequence[SourceItem], now: float) -> None:
    for it in items:
        p.feed(it, now)


def _steady(dump1: list[bytes], fastpath: bool) -> Pipeline:
    """A pipeline that loaded ``dump1`` and refreshed once with it unchanged."""
    p = Pipeline(Correlator(), fastpath=fastpath)
    _feed(p, dump_items(dump1, seq=1, ts=NOW0), NOW0)
    _feed(p, dump_items(dump1, seq=2, ts=NOW0 + 5), NOW0 + 5)
    p.correlator.drain_events()
    p.correlator.take_dirty()
    return p


def _timed_refresh(p: Pipeline, dump: list[bytes], seq: int, now: float) -> tuple[float, float]:
    items = dump_items(dump, seq=seq, ts=now)
    gc.collect()
    c0, t0 = time.process_time(), time.perf_counter()
    _feed(p, items, now)
    return time.perf_counter() - t0, time.process_time() - c0


class _Source:
    """A source whose items are all ready (like ``KernelSource``'s queue during a dump): it never suspends
    between them. Marks when the measured dump starts and ends."""

    def __init__(self, before: list[Datagram], measured: list[Datagram]) -> None:
        self.before, self.measured = before, measured
        self.t_start = self.t_end = 0.0

    async def items(self) -> AsyncIterator[SourceItem]:
        for it in self.before:
            yield it
        await asyncio.sleep(0.3)  # the load's publish and GC settle
        self.t_start = time.perf_counter()
        for it in self.measured:
            yield it
        await asyncio.sleep(0)
        self.t_end = time.perf_counter()
        await asyncio.sleep(0.05)


class _TimedPipeline(Pipeline):
    """A ``Pipeline`` that notes how long each item took (the last: the dump's end)."""

    def __init__(self, correlator: Correlator) -> None:
        super().__init__(correlator)
        self.durations: list[tuple[float, float]] = []

    def feed(self, item: SourceItem, now: float) -> None:
        t0 = time.perf_counter()
        super().feed(item, now)
        self.durations.append((t0, time.perf_counter() - t0))


async def _stall_run(before: list[Datagram], measured: list[Datagram], slice_s: float | None) -> dict[str, Any]:
    from monitor.serve import daemon as D
    from monitor.serve.hub import Hub

    correlator = Correlator()
    pipeline = _TimedPipeline(correlator)
    source = _Source(before, measured)
    d = D.Daemon(source, pipeline, correlator, Hub(correlator))
    wakes: list[float] = []
    done = False

    async def probe() -> None:
        while not done:
            await asyncio.sleep(0.001)
            wakes.append(time.perf_counter())

    old = D.FEED_SLICE
    if slice_s is not None:
        D.FEED_SLICE = slice_s
    task = asyncio.create_task(probe())
    try:
        await d._consume()
    finally:
        done = True
        await task
        D.FEED_SLICE = old
        d.gc.release()
    inside = [w for w in wakes if source.t_start <= w <= source.t_end + 0.2]
    gaps = [b - a for a, b in itertools.pairwise(inside)]
    feeds = [d for t, d in pipeline.durations if source.t_start <= t <= source.t_end]
    return {"longest_stall_ms": max(0.0, (max(gaps) - 0.001) * 1000) if gaps else None,
            "dump_wall_s": source.t_end - source.t_start, "probes": len(inside),
            "dump_end_ms": feeds[-1] * 1000 if feeds else None,
            "longest_datagram_ms": max(feeds[:-1]) * 1000 if len(feeds) > 1 else None}


def stall(dump1: list[bytes], changed: list[bytes], slice_s: float | None = None) -> dict[str, Any]:
    """Longest event-loop stall while the real daemon feeds ``changed`` after loading ``dump1`` twice."""
    before = [*dump_items(dump1, seq=1, ts=NOW0), *dump_items(dump1, seq=2, ts=NOW0)]
    return asyncio.run(_stall_run(before, dump_items(changed, seq=3, ts=NOW0), slice_s))


def run_fastpath(records: Sequence[bytes], repeats: int = 3) -> dict[str, Any]:
    """Every figure of the module docstring, for the dump made of ``records``."""
    wait0 = run_queue_wait()
    dump1 = pack_records(list(records))
    res: dict[str, Any] = {"sas": len(records), "datagrams": len(dump1), "bytes": sum(len(d) for d in dump1)}
    raw: list[tuple[float, float]] = []
    for frac, name in ((0.1, "tenth"), (1.0, "all")):
        on: list[tuple[float, float]] = []
        off: list[tuple[float, float]] = []
        skipped = 0
        p_on, p_off = _steady(dump1, True), _steady(dump1, False)
        for r in range(repeats):
            dump = changed_dump(records, frac, r + 1)
            w, c, n = raw_recv(dump)
            assert n == len(records) + 0, (n, len(records))
            raw.append((w, c))
            before = p_on.skipped
            on.append(_timed_refresh(p_on, dump, 3 + r, NOW0 + 10 * (r + 1)))
            skipped = p_on.skipped - before
            off.append(_timed_refresh(p_off, dump, 3 + r, NOW0 + 10 * (r + 1)))
        same = p_on.correlator.snapshot(NOW0 + 100) == p_off.correlator.snapshot(NOW0 + 100)
        del p_on, p_off
        res[name] = {"frac": frac, "on_wall_s": sorted(w for w, _ in on), "on_cpu_s": sorted(c for _, c in on),
                     "off_wall_s": sorted(w for w, _ in off), "off_cpu_s": sorted(c for _, c in off),
                     "skipped_last": skipped, "same_tunnels_on_off": same}
    res["raw_recv_wall_s"] = sorted(w for w, _ in raw)
    res["raw_recv_cpu_s"] = sorted(c for _, c in raw)
    floor = res["raw_recv_cpu_s"][0]
    for name in ("tenth", "all"):
        d = res[name]
        d["ratio_on_vs_raw_cpu"] = d["on_cpu_s"][0] / floor
        d["ratio_off_vs_raw_cpu"] = d["off_cpu_s"][0] / floor
        d["speedup_on_vs_off_cpu"] = d["off_cpu_s"][0] / d["on_cpu_s"][0]
    res["stall"] = {
        "tenth": stall(dump1, changed_dump(records, 0.1, 1)),
        "all": stall(dump1, changed_dump(records, 1.0, 1)),
        "tenth_unsliced": stall(dump1, changed_dump(records, 0.1, 1), slice_s=float("inf")),
    }
    res["run_queue_wait_s"] = run_queue_wait() - wait0
    return res
