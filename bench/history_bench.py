"""History store benchmarks: write throughput and loop lag, start-up with many tunnels, queries, size.

    python -m bench.history_bench            # full sizes, writes bench/results/history.json
    python -m bench.history_bench --quick    # small sizes (seconds)

Each figure has a baseline measured in the same run:

- **writes**: health events through ``HistoryWriter`` (batched, one transaction per ``linger``) against the
  same rows written one transaction per event (what a naive recorder does). While the batched writer runs
  at a paced 20,000 events/s, an asyncio loop in the submitting thread measures its own lag (the loop only
  appends and puts on a queue; SQLite runs in the writer thread), against the same loop building the same
  events and recording nothing.
- **start-up**: ``History.open`` + ``Correlator.restore`` with N tunnels' checkpoints against reading the
  same rows with a bare ``SELECT`` (the floor: what the disk and SQLite cost).
- **query**: ``tunnel_history`` of one tunnel over 30 days (intervals, flaps, rates, events); its interval
  lookup against the same lookup forced to scan the table (``NOT INDEXED``).
- **size**: bytes per tunnel per day for a modelled day (a checkpoint every 5 s for tunnels with traffic,
  one rekey an hour = 4 events, one flap a day = 4 events), extrapolated to 10,000 tunnels for 30 days.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import machine_description, write_result
from monitor.health.checkpoint import SACheckpoint, TunnelCheckpoint
from monitor.health.correlate import Correlator
from monitor.health.model import HealthEvent
from monitor.store import queries
from monitor.store.history import History
from monitor.store.records import event_row
from monitor.store.retention import Retention
from monitor.store.writer import Batch

DAY = 86_400.0
T0 = 1_800_000_000.0


def _event(seq: int, ts: float, tid: str, etype: str = "rekey_completed") -> HealthEvent:
    return HealthEvent(seq, ts, etype, tid, "default", {"duration": 0.8, "old_spis": ["0xc0ffee01", "0xc0ffee02"],
                                                       "new_spis": ["0xc0ffee03", "0xc0ffee04"], "rekeys": seq})


def _cp(i: int, ts: float, nbytes: int) -> TunnelCheckpoint:
    tid = f"default:{i + 1}:192.0.2.1-198.51.{(i >> 8) & 255}.{i & 255}"
    return TunnelCheckpoint(tid, "default", "up", ("established",), ts, ts, nbytes, nbytes // 2, nbytes // 100,
                            nbytes // 200, 3, 0, {"ts": ts, "duration": 0.5, "old_spis": [], "new_spis": []}, 0, 0, 0,
                            (SACheckpoint(0x1000 + i, "192.0.2.1", 50, 1, nbytes, nbytes // 100, 0, 0),
                             SACheckpoint(0x8000 + i, "198.51.100.1", 50, 2, nbytes // 2, nbytes // 200, 0, 0)))


def bench_writes(n: int, tmp: Path) -> dict[str, Any]:
    """Batched writer vs one transaction per event; then the loop's lag at a paced 20,000 events/s."""
    events = [_event(i + 1, T0 + i / 1000, f"default:{i % 500}:a-b") for i in range(n)]
    h = History.open(tmp / "batched")
    t = time.perf_counter()
    for i in range(0, n, 500):
        h.submit(Batch(T0, events[i:i + 500], [], []))
    h.writer.close(timeout=600)
    batched = time.perf_counter() - t
    assert h.writer.written_events == n
    base_n = max(1, n // 20)  # the baseline is slow: a twentieth of the events, rate compared
    h2 = History.open(tmp / "naive")
    h2.writer.close()
    conn = sqlite3.connect(tmp / "naive" / "history.sqlite3", isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    t = time.perf_counter()
    for e in events[:base_n]:
        conn.execute("BEGIN")
        conn.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)", event_row(e))
        conn.execute("COMMIT")
    naive = time.perf_counter() - t
    conn.close()
    paced = min(n, 100_000)
    del events  # 400,000 live objects would make every full GC pass of the paced run a 200 ms stall
    gc.collect()
    lag = asyncio.run(_paced_lag(tmp / "paced", paced, record=True))
    base = asyncio.run(_paced_lag(tmp / "paced-base", paced, record=False))
    return {"events": n, "batched_events_per_s": round(n / batched), "naive_events_per_s": round(base_n / naive),
            "ratio": round((n / batched) / (base_n / naive), 1), **lag,
            "baseline_loop_lag_p99_ms": base["loop_lag_p99_ms"], "baseline_loop_lag_max_ms": base["loop_lag_max_ms"]}


async def _paced_lag(path: Path, n: int, rate: int = 20_000, record: bool = True) -> dict[str, Any]:
    """The loop's lag while it builds and hands over ``rate`` events/s; ``record=False`` builds the same
    events and drops them (the baseline: what the loop costs without a store)."""
    h = History.open(path)
    loop = asyncio.get_running_loop()
    lags: list[float] = []
    stop = False

    async def probe() -> None:
        while not stop:
            t0 = loop.time()
            await asyncio.sleep(0.01)
            lags.append(loop.time() - t0 - 0.01)

    task = asyncio.create_task(probe())
    seq = 0
    start = loop.time()
    per_tick = rate // 100  # every 10 ms, as the daemon's publish would
    while seq < n:
        batch = [_event(seq + i + 1, T0, f"default:{(seq + i) % 500}:a-b") for i in range(per_tick)]
        seq += per_tick
        if record:
            h.submit(Batch(T0, batch, [], []))
        await asyncio.sleep(max(0.0, start + seq / rate - loop.time()))
    elapsed = loop.time() - start
    stop = True
    await task
    t = time.perf_counter()
    await asyncio.to_thread(h.writer.close, 600)
    drain = time.perf_counter() - t
    lags.sort()
    return {"paced_events": seq, "paced_rate": round(seq / elapsed), "paced_dropped": h.writer.dropped_events,
            "loop_lag_p99_ms": round(1000 * lags[int(len(lags) * 0.99)], 2),
            "loop_lag_max_ms": round(1000 * lags[-1], 2),
            "drain_after_s": round(drain, 3)}


def bench_startup(n: int, tmp: Path) -> dict[str, Any]:
    """Open + restore with ``n`` tunnels vs a bare SELECT of the same rows."""
    h = History.open(tmp / "startup")
    for i in range(0, n, 5000):
        h.submit(Batch(T0, [], [_cp(j, T0, 10_000 + j) for j in range(i, min(n, i + 5000))], []))
    h.writer.close(timeout=600)
    t = time.perf_counter()
    h = History.open(tmp / "startup")
    c = Correlator()
    c.restore(h.restored.checkpoints, h.restored.seq)
    ours = time.perf_counter() - t
    h.writer.close()
    assert len(h.restored.checkpoints) == n
    assert c.restoring == n
    conn = sqlite3.connect(tmp / "startup" / "history.sqlite3")
    t = time.perf_counter()
    rows = conn.execute("SELECT checkpoint FROM tunnels WHERE removed IS NULL").fetchall()
    floor = time.perf_counter() - t
    conn.close()
    assert len(rows) == n
    return {"tunnels": n, "open_and_restore_s": round(ours, 3), "bare_select_s": round(floor, 3),
            "ratio": round(ours / floor, 1)}


def bench_query(tunnels: int, tmp: Path) -> dict[str, Any]:
    """One tunnel's 30-day history (24 intervals and 2 down events a day each) vs a forced table scan."""
    path = tmp / "query"
    h = History.open(path, Retention(max_age=365 * DAY))
    h.writer.close()
    conn = sqlite3.connect(path / "history.sqlite3", isolation_level=None)
    conn.execute("BEGIN")
    seq = 0
    for i in range(tunnels):
        tid = f"default:{i}:a-b"
        rows = []
        evs = []
        for k in range(30 * 24):
            start = T0 + k * 3600.0
            rows.append((tid, "down" if k % 12 == 0 else "up", start, start + 3600.0, "[]"))
            if k % 12 == 0:
                seq += 1
                evs.append(event_row(HealthEvent(seq, start, "tunnel_down", tid, "default", {"reason": "dpd"})))
        conn.executemany("INSERT INTO intervals (tunnel, state, start, end, reasons) VALUES (?, ?, ?, ?, ?)", rows)
        conn.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)", evs)
    conn.execute("COMMIT")
    tid = f"default:{tunnels // 2}:a-b"
    frm, to = T0, T0 + 30 * DAY
    t = time.perf_counter()
    for _ in range(5):
        doc = queries.tunnel_history(conn, tid, frm, to)
    full = (time.perf_counter() - t) / 5
    assert doc is not None
    assert doc["flaps"] == 60
    sql = ("SELECT state, start, end FROM intervals {} WHERE tunnel = ? AND start < ? AND (end IS NULL OR end > ?)")
    timings = {}
    for name, hint in (("indexed", "INDEXED BY intervals_tunnel"), ("scan", "NOT INDEXED")):
        t = time.perf_counter()
        for _ in range(5):
            n = len(conn.execute(sql.format(hint), (tid, to, frm)).fetchall())
        timings[name] = (time.perf_counter() - t) / 5
        assert n == 720
    conn.close()
    return {"tunnels": tunnels, "intervals": tunnels * 720, "tunnel_history_ms": round(1000 * full, 2),
            "intervals_indexed_ms": round(1000 * timings["indexed"], 3),
            "intervals_scan_ms": round(1000 * timings["scan"], 3),
            "ratio_scan_over_indexed": round(timings["scan"] / timings["indexed"], 1)}


def bench_size(tunnels: int, tmp: Path) -> dict[str, Any]:
    """A modelled day of ``tunnels`` tunnels, written through the writer; bytes per tunnel per day."""
    path = tmp / "size"
    h = History.open(path, Retention(max_age=365 * DAY, every=1e12))
    seq = 0
    step = 5.0
    for k in range(int(DAY / step)):
        ts = T0 + k * step
        cps = [_cp(i, T0, 10_000 + k * 1000) for i in range(tunnels)]
        evs = []
        if k % int(3600 / step) == 0:  # one rekey an hour per tunnel: sa_added x2, rekey_completed, sa_deleted x2
            for i in range(tunnels):
                for etype in ("sa_added", "sa_added", "rekey_completed", "sa_deleted", "sa_deleted"):
                    seq += 1
                    evs.append(_event(seq, ts, cps[i].id, etype))
        h.submit(Batch(ts, evs, cps, []))
        while h.writer.status()["queued"] > 50:
            time.sleep(0.01)
    h.writer.close(timeout=600)
    conn = sqlite3.connect(path / "history.sqlite3")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    size = (path / "history.sqlite3").stat().st_size
    per = size / tunnels
    return {"tunnels": tunnels, "bytes_per_tunnel_day": round(per), "events_per_tunnel_day": seq // tunnels,
            "projected_10k_tunnels_30_days_mb": round(per * 10_000 * 30 / 1e6),
            "note": "rate points are kept 7 days, so 30 days holds 7 days of them: the projection is an upper bound"}


def run(quick: bool = False) -> dict[str, Any]:
    """Every section; small sizes with ``quick``."""
    with tempfile.TemporaryDirectory(prefix="history-bench-") as d:
        tmp = Path(d)
        return {
            "benchmark": "history",
            "machine": machine_description(),
            "writes": bench_writes(20_000 if quick else 400_000, tmp),
            "startup": bench_startup(2_000 if quick else 100_000, tmp),
            "query": bench_query(20 if quick else 200, tmp),
            "size": bench_size(2 if quick else 100, tmp),
        }


def main(argv: list[str] | None = None) -> int:
    """Command line: print the results and write ``bench/results/history.json``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args(argv)
    result = run(args.quick)
    for section in ("writes", "startup", "query", "size"):
        print(section, result[section])
    if args.output is not None:
        import json

        args.output.write_text(json.dumps(result, indent=2) + "\n")
    else:
        write_result("history", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
