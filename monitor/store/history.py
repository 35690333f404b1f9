"""The history store as the rest of the monitor sees it: open, load what a restart continues from, write.

``History.open(state_dir)`` opens (or creates) the database, reads the checkpoints and the last ``seq``,
and starts the writer thread. Every failure is a ``HistoryError`` with one line to log: the caller then
runs without history (the monitor never dies for its history).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from monitor.errors import HistoryError
from monitor.health.checkpoint import TunnelCheckpoint
from monitor.store.records import checkpoint_from_blob
from monitor.store.retention import Retention
from monitor.store.schema import DB_NAME, connect
from monitor.store.writer import Batch, HistoryWriter

__all__ = ["History", "Restored"]

log = logging.getLogger("monitor.store")


class Restored(NamedTuple):
    """What the last run left: live tunnels' checkpoints, the last ``seq``, recent events (oldest first)."""

    checkpoints: list[TunnelCheckpoint]
    seq: int
    events: list[dict[str, Any]]
    skipped: int  # damaged checkpoint rows left out


class History:
    """An open history database: the writer thread plus what was restored at open."""

    def __init__(self, path: Path, writer: HistoryWriter, restored: Restored) -> None:
        self.path = path
        self.writer = writer
        self.restored = restored

    @classmethod
    def open(cls, state_dir: Path, retention: Retention | None = None, recent: int = 10_000) -> History:
        """Open ``state_dir/history.sqlite3``; ``HistoryError`` with the reason if it cannot be used."""
        path = state_dir / DB_NAME
        conn = connect(path)
        try:
            restored = load(conn, recent)
            writer = HistoryWriter(conn, path, retention or Retention())
        except sqlite3.Error as exc:
            conn.close()
            raise HistoryError(f"cannot read the history database {path}: {exc}") from None
        if restored.skipped:
            log.warning("history: %d damaged checkpoint rows in %s were skipped", restored.skipped, path)
        writer.start()
        return cls(path, writer, restored)

    def submit(self, batch: Batch) -> bool:
        """Hand a batch to the writer thread (never blocks)."""
        return self.writer.submit(batch)

    def close(self) -> None:
        """Write what is queued, and close."""
        self.writer.close()

    def status(self) -> dict[str, Any]:
        """The writer's counters plus the path and the database's size."""
        doc = {"enabled": True, "path": str(self.path), **self.writer.status()}
        try:
            doc["size_bytes"] = self.path.stat().st_size
        except OSError:
            doc["size_bytes"] = None
        return doc


def load(conn: sqlite3.Connection, recent: int) -> Restored:
    """Checkpoints of tunnels not removed, the last ``seq``, and the newest ``recent`` events."""
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    top = conn.execute("SELECT max(seq) FROM events").fetchone()[0] or 0
    seq = top
    for key in ("last_seq", "seq_reserved"):  # the reservation: seqs a crash may have shown, never reused
        with contextlib.suppress(ValueError):
            seq = max(seq, int(meta.get(key, 0)))
    cps: list[TunnelCheckpoint] = []
    skipped = 0
    for (blob,) in conn.execute("SELECT checkpoint FROM tunnels WHERE removed IS NULL"):
        try:
            cps.append(checkpoint_from_blob(blob))
        except (ValueError, TypeError):
            skipped += 1
    rows = conn.execute("SELECT seq, ts, type, tunnel, netns, detail FROM events ORDER BY seq DESC LIMIT ?",
                        (recent,)).fetchall()
    events = [event_doc(r) for r in reversed(rows)]
    return Restored(cps, seq, events, skipped)


def event_doc(row: tuple[Any, ...]) -> dict[str, Any]:
    """An ``events`` row as the public event dict (``HealthEvent.to_json``)."""
    seq, ts, etype, tunnel, netns, detail = row
    try:
        d = orjson.loads(detail)
    except orjson.JSONDecodeError:
        try:
            d = json.loads(detail)  # integers past 64 bits (a counter anomaly's value)
        except ValueError:
            d = {}
    return {"seq": seq, "ts": ts, "type": etype, "tunnel": tunnel, "netns": netns, "detail": d}

