"""Questions about time, answered from the history database.

A **flap** is a ``tunnel_down`` event (the tunnel left a working state for ``down``; one the restart inferred
counts too). Time per state comes from the state intervals clipped to the window ``[from, to)``; an interval
still open ends at ``to`` (or now). ``uptime_pct`` is the share of the covered time not spent ``down``
(None when the window saw nothing of the tunnel). Instants are wall-clock seconds.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Any

import orjson

from monitor.store.history import event_doc

__all__ = ["events_between", "events_from", "events_since", "history_summary", "parse_duration", "parse_when",
           "summarise", "tunnel_history"]

Interval = tuple[str, float, float | None, str]  # (state, start, end or None, reasons JSON)


def summarise(intervals: Iterable[Interval], frm: float, to: float) -> dict[str, Any]:
    """Time per state, downtime, longest outage and uptime share of ``intervals`` within ``[frm, to)``."""
    per: dict[str, float] = defaultdict(float)
    longest = 0.0
    covered = 0.0
    for state, start, end, _ in intervals:
        a, b = max(start, frm), min(to if end is None else end, to)
        if b <= a:
            continue
        per[state] += b - a
        covered += b - a
        if state == "down":
            longest = max(longest, b - a)
    down = per.get("down", 0.0)
    return {
        "time_in_state": {k: round(v, 3) for k, v in sorted(per.items())},
        "downtime": round(down, 3),
        "longest_outage": round(longest, 3),
        "covered": round(covered, 3),
        "uptime_pct": round(100.0 * (covered - down) / covered, 3) if covered else None,
    }


def _intervals(conn: sqlite3.Connection, tid: str | None, frm: float, to: float) -> list[tuple[Any, ...]]:
    where = "(end IS NULL OR end > ?) AND start < ?"
    if tid is None:
        return conn.execute(f"SELECT tunnel, state, start, end, reasons FROM intervals WHERE {where}"  # noqa: S608
                            " ORDER BY tunnel, start", (frm, to)).fetchall()
    return conn.execute(f"SELECT tunnel, state, start, end, reasons FROM intervals WHERE tunnel = ? AND {where}"  # noqa: S608
                        " ORDER BY start", (tid, frm, to)).fetchall()


def _downs(conn: sqlite3.Connection, tid: str | None, frm: float, to: float) -> list[tuple[str, bytes]]:
    if tid is None:
        return conn.execute("SELECT tunnel, detail FROM events WHERE type = 'tunnel_down' AND ts >= ? AND ts < ?",
                            (frm, to)).fetchall()
    return conn.execute("SELECT tunnel, detail FROM events WHERE type = 'tunnel_down' AND tunnel = ? AND ts >= ?"
                        " AND ts < ?", (tid, frm, to)).fetchall()


def _reason_of(detail: bytes) -> str:
    try:
        d = orjson.loads(detail)
    except orjson.JSONDecodeError:
        return "unknown"
    return str(d.get("reason", "unknown")) if isinstance(d, dict) else "unknown"


def tunnel_history(conn: sqlite3.Connection, tid: str, frm: float, to: float) -> dict[str, Any] | None:
    """``GET /api/v1/tunnels/{id}/history``: intervals, flaps, time per state, down reasons, rate points."""
    known = conn.execute("SELECT 1 FROM tunnels WHERE id = ?", (tid,)).fetchone() is not None
    rows = _intervals(conn, tid, frm, to)
    if not known and not rows:
        return None
    downs = _downs(conn, tid, frm, to)
    doc: dict[str, Any] = {"id": tid, "from": frm, "to": to, "flaps": len(downs),
                           "down_reasons": dict(Counter(_reason_of(d) for _, d in downs))}
    doc.update(summarise(((s, a, b, r) for _, s, a, b, r in rows), frm, to))
    doc["intervals"] = [{"state": s, "start": a, "end": b, "reasons": orjson.loads(r)} for _, s, a, b, r in rows]
    doc["rates"] = rate_points(conn, tid, frm, to)
    return doc


def rate_points(conn: sqlite3.Connection, tid: str, frm: float, to: float) -> list[list[float]]:
    """``[[minute_start, bytes_in_per_s, bytes_out_per_s], ...]`` from consecutive stored totals
    (one point per 5 minutes; ``monitor.store.writer.RATE_STEP``)."""
    rows = conn.execute("SELECT minute, bytes_in, bytes_out FROM rates WHERE tunnel = ? AND minute >= ? AND minute < ?"
                        " ORDER BY minute", (tid, int(frm // 60) - 1, int(to // 60) + 1)).fetchall()
    out = []
    for (m0, i0, o0), (m1, i1, o1) in itertools.pairwise(rows):
        dt = (m1 - m0) * 60.0
        out.append([m1 * 60.0, round(max(0, i1 - i0) / dt, 3), round(max(0, o1 - o0) / dt, 3)])
    return out


def history_summary(conn: sqlite3.Connection, frm: float, to: float) -> list[dict[str, Any]]:
    """``GET /api/v1/history``: per tunnel uptime share, flaps, downtime and longest outage, worst first."""
    by: dict[str, list[Interval]] = defaultdict(list)
    for tid, s, a, b, r in _intervals(conn, None, frm, to):
        by[tid].append((s, a, b, r))
    flaps: Counter[str] = Counter()
    reasons: dict[str, Counter[str]] = defaultdict(Counter)
    for tid, d in _downs(conn, None, frm, to):
        flaps[tid] += 1
        reasons[tid][_reason_of(d)] += 1
    out = []
    for tid in sorted(set(by) | set(flaps)):
        doc: dict[str, Any] = {"id": tid, "flaps": flaps[tid], "down_reasons": dict(reasons[tid])}
        doc.update(summarise(by.get(tid, ()), frm, to))
        doc["state"] = by[tid][-1][0] if by.get(tid) and by[tid][-1][2] is None else None
        out.append(doc)
    out.sort(key=lambda d: (d["uptime_pct"] if d["uptime_pct"] is not None else 101.0, -d["flaps"], d["id"]))
    return out


def events_since(conn: sqlite3.Connection, since: int, limit: int) -> list[dict[str, Any]]:
    """Stored events with ``seq > since``, oldest first, at most ``limit``."""
    rows = conn.execute("SELECT seq, ts, type, tunnel, netns, detail FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                        (since, limit)).fetchall()
    return [event_doc(r) for r in rows]


def events_from(conn: sqlite3.Connection, frm: float, since: int, limit: int) -> list[dict[str, Any]]:
    """Stored events with ``ts >= frm`` and ``seq > since``, in ``seq`` order, at most ``limit`` (pages by seq)."""
    rows = conn.execute("SELECT seq, ts, type, tunnel, netns, detail FROM events WHERE seq > ? AND ts >= ?"
                        " ORDER BY seq LIMIT ?", (since, frm, limit)).fetchall()
    return [event_doc(r) for r in rows]


def events_between(conn: sqlite3.Connection, frm: float, to: float, limit: int,
                   tunnel: str | None = None) -> list[dict[str, Any]]:
    """Stored events with ``from <= ts < to`` (of one tunnel if given), oldest first, at most ``limit``."""
    if tunnel is None:
        rows = conn.execute("SELECT seq, ts, type, tunnel, netns, detail FROM events WHERE ts >= ? AND ts < ?"
                            " ORDER BY seq LIMIT ?", (frm, to, limit)).fetchall()
    else:
        rows = conn.execute("SELECT seq, ts, type, tunnel, netns, detail FROM events WHERE tunnel = ? AND ts >= ?"
                            " AND ts < ? ORDER BY seq LIMIT ?", (tunnel, frm, to, limit)).fetchall()
    return [event_doc(r) for r in rows]


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0, "w": 604_800.0}


def parse_duration(text: str) -> float:
    """``"90s"``, ``"15m"``, ``"24h"``, ``"7d"``, ``"2w"`` or plain seconds, as seconds (``ValueError`` if not)."""
    t = text.strip().lower()
    unit = _UNITS.get(t[-1:]) if t else None
    value = float(t[:-1] if unit else t)
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"not a duration: {text!r}")
    return value * (unit or 1.0)


def parse_when(text: str, now: float) -> float:
    """An instant: Unix seconds (a number above 10^9), else a duration back from ``now`` (``"24h"``: a day ago)."""
    try:
        value = float(text)
    except ValueError:
        return now - parse_duration(text)
    if value >= 1e9:
        return value
    return now - parse_duration(text)
