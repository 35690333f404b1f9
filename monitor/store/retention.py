"""Retention of the history database: by age, then by size.

Age first: events, closed intervals, rate points and removed tunnels older than ``max_age`` (rates:
``rates_age``) are deleted. Then size: while the live pages exceed ``max_bytes``, the oldest tenth of the
events and rate points go. Freed pages return to the file system (``auto_vacuum = INCREMENTAL``).
Open intervals and live tunnels' checkpoints are never pruned: they are what a restart continues from.
"""

from __future__ import annotations

import sqlite3
from typing import NamedTuple

__all__ = ["Retention", "db_bytes", "prune"]

DAY = 86_400.0


class Retention(NamedTuple):
    """How much history is kept (defaults: 30 days, 1 GiB, sparklines 7 days; checked hourly)."""

    max_age: float = 30 * DAY
    max_bytes: int = 1 << 30
    rates_age: float = 7 * DAY
    every: float = 3600.0


def db_bytes(conn: sqlite3.Connection) -> int:
    """Bytes of live pages (the file's size less its free pages)."""
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    count = conn.execute("PRAGMA page_count").fetchone()[0]
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    return int(page * (count - free))


def prune(conn: sqlite3.Connection, r: Retention, now: float) -> int:
    """Apply ``r`` at wall time ``now``; the number of rows deleted."""
    cutoff = now - r.max_age
    deleted = 0
    conn.execute("BEGIN IMMEDIATE")
    try:
        for sql, arg in (
            ("DELETE FROM events WHERE ts < ?", cutoff),
            ("DELETE FROM intervals WHERE end IS NOT NULL AND end < ?", cutoff),
            ("DELETE FROM tunnels WHERE removed IS NOT NULL AND removed < ?", cutoff),
            ("DELETE FROM rates WHERE minute < ?", int((now - r.rates_age) // 60)),
        ):
            deleted += conn.execute(sql, (arg,)).rowcount
        for _ in range(20):
            if db_bytes(conn) <= r.max_bytes:
                break
            n = conn.execute("SELECT count(*) FROM events").fetchone()[0]
            m = conn.execute("SELECT count(*) FROM rates").fetchone()[0]
            if n == 0 and m == 0:
                break
            deleted += conn.execute("DELETE FROM events WHERE seq IN (SELECT seq FROM events ORDER BY seq LIMIT ?)",
                                    (max(1, n // 10),)).rowcount
            deleted += conn.execute("DELETE FROM rates WHERE minute <= (SELECT minute FROM rates ORDER BY minute"
                                    " LIMIT 1 OFFSET ?)", (max(0, m // 10),)).rowcount
        conn.execute("COMMIT")
    except sqlite3.Error:
        conn.execute("ROLLBACK")
        raise
    conn.execute("PRAGMA incremental_vacuum")
    return deleted
