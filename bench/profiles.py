"""Profiles of the two hottest paths (cProfile), summarised for RESULTS.md.

    python -m bench.profiles            # writes bench/results/profiles.json

1. **Full-state refresh** (``Pipeline.feed`` over a 50,000-SA dump: decode + correlate), first load
   and steady refresh, plus the same first load with the cyclic garbage collector off, because the
   profile showed GC pauses attributed to whatever function happened to allocate.
2. **Fan-out server** (``Hub.publish_events`` -> per-client queues -> ``ws.send_frame``), profiled
   inside the server process of ``bench.fanout_bench`` while it serves 300 clients at 100 events/s
   and then 10 clients at 20,000 events/s.

cProfile adds overhead per Python call, so absolute times are inflated; the ranking is what counts.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import pstats
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import NOW0, dump_items, dump_records, pack_records, patch_counters, write_result

__all__ = ["main", "top"]


def top(stats: pstats.Stats, n: int = 12) -> list[dict[str, Any]]:
    """The ``n`` functions with the most own time: name, calls, own seconds, cumulative seconds."""
    rows = []
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in raw.values()) or 1.0
    for (file, line, func), (_cc, nc, tt, ct, _callers) in sorted(raw.items(), key=lambda kv: -kv[1][2])[:n]:
        short = file.split("/monitor/")[-1] if "/monitor/" in file else file.rsplit("/", 1)[-1]
        rows.append({"function": f"{short}:{line}({func})", "calls": nc, "own_s": tt, "cum_s": ct,
                     "own_share": tt / total})
    return rows


def _refresh_profile(n: int) -> dict[str, Any]:
    from monitor.health.correlate import Correlator
    from monitor.health.pipeline import Pipeline

    recs = list(dump_records(n))
    d1 = dump_items(pack_records(recs), ts=NOW0)
    d2 = dump_items(pack_records([patch_counters(r, 1000, 1) for r in recs]), ts=NOW0 + 10)
    out: dict[str, Any] = {"sas": n}
    p = Pipeline(Correlator())
    for label, items, now in (("first_load", d1, NOW0), ("steady_refresh", d2, NOW0 + 10)):
        gc.collect()
        prof = cProfile.Profile()
        prof.enable()
        for it in items:
            p.feed(it, now)
        prof.disable()
        out[label] = top(pstats.Stats(prof, stream=io.StringIO()))
    # the GC finding: first load CPU with the cyclic collector on and off, best of 2 each
    gc_cpu: dict[str, float] = {}
    for mode in ("gc_on", "gc_off", "gc_on", "gc_off"):
        gc.collect()
        if mode == "gc_off":
            gc.disable()
        q = Pipeline(Correlator())
        c0 = time.process_time()
        for it in d1:
            q.feed(it, NOW0)
        cpu = time.process_time() - c0
        gc.enable()
        gc_cpu[mode] = min(cpu, gc_cpu.get(mode, cpu))
        del q
    out["first_load_cpu_s"] = gc_cpu
    return out


def _fanout_profile(tmp: Path) -> dict[str, Any]:
    from bench.fanout_bench import run_scenario

    out: dict[str, Any] = {}
    for label, (clients, rate, secs) in {"300_clients_100_per_s": (300, 100.0, 5.0),
                                         "10_clients_20000_per_s": (10, 20_000.0, 4.0)}.items():
        path = tmp / f"{label}.prof"
        res = run_scenario(label, clients, 0, rate, secs, 0, None, tmp, profile=path)
        out[label] = {"top": top(pstats.Stats(str(path), stream=io.StringIO())),
                      "p99_ms": res["clients_result"]["latency_ms"]["p99"],
                      "server_cpu_fraction": res["server"]["cpu_fraction_injecting"],
                      "dropped": res["clients_result"]["dropped"]}
    return out


def format_table(result: dict[str, Any]) -> str:
    """Markdown: the top functions of each profile."""
    p = result["profiles"]
    parts = []
    r = p.get("refresh")
    if r:
        g = r["first_load_cpu_s"]
        parts.append(f"First load of {r['sas']:,} SAs, CPU: GC on {g['gc_on']:.2f} s, GC off {g['gc_off']:.2f} s "
                     f"({(1 - g['gc_off'] / g['gc_on']) * 100:.0f}% of the load is the cyclic GC).\n")
        for key in ("first_load", "steady_refresh"):
            parts.append(_rows(f"refresh: {key}", r[key]))
    for key, f in (p.get("fanout") or {}).items():
        parts.append(_rows(f"fan-out server: {key} (p99 {f['p99_ms']:.1f} ms, server CPU "
                           f"{f['server_cpu_fraction'] * 100:.0f}%, drops {f['dropped']})", f["top"]))
    return "\n".join(parts)


def _rows(title: str, rows: list[dict[str, Any]]) -> str:
    lines = [f"**{title}**", "", "| function | calls | own s | cum s | own share |", "|---|---:|---:|---:|---:|"]
    lines += [f"| `{r['function']}` | {r['calls']:,} | {r['own_s']:.3f} | {r['cum_s']:.3f} | {r['own_share']:.0%} |"
              for r in rows[:8]]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(prog="python -m bench.profiles", description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=50_000, help="SAs in the profiled dump")
    parser.add_argument("--no-fanout", action="store_true")
    args = parser.parse_args(argv)
    result: dict[str, Any] = {"benchmark": "profiles", "params": {"sas": args.n}, "profiles": {}}
    result["profiles"]["refresh"] = _refresh_profile(args.n)
    if not args.no_fanout:
        with tempfile.TemporaryDirectory(prefix="profiles-") as tmp:
            result["profiles"]["fanout"] = _fanout_profile(Path(tmp))
    path = write_result("profiles", result)
    print(format_table(result))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
