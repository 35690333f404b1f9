"""``monitor report``: uptime, flaps and outages per tunnel from the history store.

Reads the history database directly (read-only; the running ``serve`` keeps writing), so it works on the
gateway without the API and after the daemon has stopped. Worst tunnels first.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from monitor.errors import HistoryError
from monitor.store import queries
from monitor.store.schema import DB_NAME, default_state_dir, open_readonly

COLUMNS = ("id", "state", "uptime_pct", "flaps", "downtime", "longest_outage", "down_reasons")


def add_parser(sub: Any) -> None:
    """Register ``monitor report``."""
    p = sub.add_parser("report", help="uptime, flaps and outages per tunnel from the history store",
                       description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--since", default="7d", metavar="WHEN",
                   help="window start: a duration back from now (24h, 7d) or Unix seconds (default 7d)")
    p.add_argument("--until", default=None, metavar="WHEN", help="window end (default now)")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")
    p.add_argument("--state-dir", metavar="DIR", help="where the history database is [env MONITOR_STATE_DIR]")
    p.set_defaults(func=run)


def _duration(seconds: float) -> str:
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86_400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86_400}d{s % 86_400 // 3600:02d}h"


def table(rows: list[dict[str, Any]], frm: float, to: float) -> str:
    """The human table (times as durations; reasons as ``code xN``)."""
    head = ("TUNNEL", "NOW", "UPTIME", "FLAPS", "DOWN", "LONGEST", "DOWN REASONS")
    body = []
    for r in rows:
        up = "-" if r["uptime_pct"] is None else f"{r['uptime_pct']:.2f}%"
        reasons = ", ".join(f"{c} x{n}" for c, n in sorted(r["down_reasons"].items(), key=lambda kv: -kv[1]))
        body.append((r["id"], r["state"] or "gone", up, str(r["flaps"]), _duration(r["downtime"]),
                     _duration(r["longest_outage"]), reasons or "-"))
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head) - 1)]
    lines = [f"history {time.strftime('%Y-%m-%d %H:%M', time.localtime(frm))} .. "
             f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(to))}: {len(rows)} tunnels"]
    for x in [head, *body]:
        lines.append("  ".join(v.ljust(w) for v, w in zip(x, widths, strict=False)) + "  " + x[-1])
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    """``monitor report`` entry point: 0, or 2 with one line when there is no usable history."""
    now = time.time()
    try:
        frm = queries.parse_when(args.since, now)
        to = queries.parse_when(args.until, now) if args.until else now
    except ValueError as exc:
        print(f"monitor report: error: --since/--until: {exc}", file=sys.stderr)
        return 2
    state_dir = Path(args.state_dir) if args.state_dir else default_state_dir()
    try:
        conn = open_readonly(state_dir / DB_NAME)
        try:
            rows = queries.history_summary(conn, frm, to)
        finally:
            conn.close()
    except HistoryError as exc:
        print(f"monitor report: error: {exc}", file=sys.stderr)
        return 2
    if args.format == "json":
        sys.stdout.buffer.write(orjson.dumps({"from": frm, "to": to, "tunnels": rows}) + b"\n")
    elif args.format == "csv":
        w = csv.writer(sys.stdout)
        w.writerow(COLUMNS)
        for r in rows:
            w.writerow([r["id"], r["state"] or "", "" if r["uptime_pct"] is None else r["uptime_pct"], r["flaps"],
                        r["downtime"], r["longest_outage"],
                        ";".join(f"{c}={n}" for c, n in sorted(r["down_reasons"].items()))])
    else:
        sys.stdout.write(table(rows, frm, to))
    return 0
