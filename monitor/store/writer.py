"""The history writer: a thread that owns the write connection and turns batches into transactions.

The event loop never touches SQLite: it hands ``Batch`` objects to ``HistoryWriter.submit`` (a queue put),
and the thread writes everything queued within ``linger`` seconds in one transaction (at 20,000 events/s
that is thousands of rows per commit; ``bench/bench_history.py`` measures it against one commit per batch).
A killed process loses at most what was queued and not committed: under a second.

Failures never reach the loop: a full disk, a read-only file or any SQLite error rolls the transaction back,
is logged once per distinct error, counted in ``status()``, and the next batch tries again. A queue longer
than ``max_queue`` batches (a stalled disk) drops new batches, counted, rather than growing without bound.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from monitor.errors import HistoryError
from monitor.health.checkpoint import TunnelCheckpoint
from monitor.health.model import HealthEvent
from monitor.store.records import I63, checkpoint_to_blob, event_row
from monitor.store.retention import Retention, prune

__all__ = ["Batch", "HistoryWriter"]

log = logging.getLogger("monitor.store")

STATE_CHANGED = "state_changed"
RATE_STEP = 300  # seconds per stored rate point (``rates.minute`` is the point's first minute)


class Batch(NamedTuple):
    """What the loop hands over: events, checkpoints and gone tunnel ids, at wall time ``ts``."""

    ts: float
    events: list[HealthEvent]
    checkpoints: list[TunnelCheckpoint]
    gone: list[str]
    reserve: int | None = None  # a seq the next run must start above (monitor.serve.history.SEQ_RESERVE)


class HistoryWriter:
    """One writer thread over one connection (opened by ``monitor.store.history.History``)."""

    def __init__(self, conn: sqlite3.Connection, path: Path, retention: Retention, *, linger: float = 0.2,
                 max_queue: int = 600) -> None:
        self.conn = conn
        self.path = path
        self.retention = retention
        self.linger = linger
        self.max_queue = max_queue
        self._q: queue.SimpleQueue[Batch | None] = queue.SimpleQueue()
        self._open = {r[0] for r in conn.execute("SELECT tunnel FROM intervals WHERE end IS NULL")}
        self._thread = threading.Thread(target=self._run, name="monitor-history", daemon=True)
        self.written_events = 0
        self.written_checkpoints = 0
        self.transactions = 0
        self.write_errors = 0
        self.dropped_events = 0
        self.pruned_rows = 0
        self.error: str | None = None
        self.last_commit: float | None = None
        self._next_prune = 0.0

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def submit(self, batch: Batch) -> bool:
        """Queue a batch (never blocks). False when the queue is full: the batch is dropped and counted."""
        if self._q.qsize() >= self.max_queue:
            self.dropped_events += len(batch.events)
            return False
        self._q.put(batch)
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, stop the thread, close the connection."""
        if self._thread.is_alive():
            self._q.put(None)
            self._thread.join(timeout)
        if not self._thread.is_alive():
            with contextlib.suppress(sqlite3.Error):
                self.conn.close()

    def status(self) -> dict[str, Any]:
        """Counters for ``/healthz`` and ``/metrics``."""
        return {"ok": self.error is None, "error": self.error, "written_events": self.written_events,
                "written_checkpoints": self.written_checkpoints, "transactions": self.transactions,
                "write_errors": self.write_errors, "dropped_events": self.dropped_events,
                "pruned_rows": self.pruned_rows, "queued": self._q.qsize(), "last_commit": self.last_commit}

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._q.get()
            if first is None:
                break
            batches = [first]
            deadline = time.monotonic() + self.linger
            while True:
                left = deadline - time.monotonic()
                try:
                    nxt = self._q.get(timeout=left) if left > 0 else self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batches.append(nxt)
            self._write(batches)
            now = batches[-1].ts
            if now >= self._next_prune:
                self._next_prune = now + self.retention.every
                self._prune(now)

    def _write(self, batches: list[Batch]) -> None:
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            for b in batches:
                self._apply(b)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._failed(batches, exc)
            return
        self.transactions += 1
        self.last_commit = batches[-1].ts
        if self.error is not None:
            log.warning("history: writing to %s works again", self.path)
            self.error = None
        for b in batches:
            self.written_events += len(b.events)
            self.written_checkpoints += len(b.checkpoints)

    def _failed(self, batches: list[Batch], exc: sqlite3.Error) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.conn.execute("ROLLBACK")
        self.write_errors += 1
        self.dropped_events += sum(len(b.events) for b in batches)
        text = f"cannot write history to {self.path}: {exc}"
        if text != self.error:
            log.error("history: %s; the monitor goes on without recording", text)
        self.error = text
        # what was open is unknown after a rollback: read it again before the next batch
        with contextlib.suppress(sqlite3.Error):
            self._open = {r[0] for r in self.conn.execute("SELECT tunnel FROM intervals WHERE end IS NULL")}

    def _apply(self, b: Batch) -> None:
        conn = self.conn
        if b.events:
            conn.executemany("INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?, ?)", [event_row(e) for e in b.events])
            for e in b.events:
                if e.type == STATE_CHANGED and e.tunnel:
                    self._close(e.tunnel, e.ts)
                    reasons = [r.get("code") for r in e.detail.get("reasons", ()) if isinstance(r, dict)]
                    self._start(e.tunnel, str(e.detail.get("to")), e.ts, reasons)
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('last_seq', ?)", (str(b.events[-1].seq),))
        if b.checkpoints:
            conn.executemany("INSERT OR REPLACE INTO tunnels VALUES (?, ?, ?, ?, NULL)",
                             [(cp.id, cp.netns, checkpoint_to_blob(cp), b.ts) for cp in b.checkpoints])
            minute = int(b.ts // RATE_STEP) * RATE_STEP // 60
            conn.executemany("INSERT OR REPLACE INTO rates VALUES (?, ?, ?, ?)",
                             [(cp.id, minute, min(cp.bytes_in, I63), min(cp.bytes_out, I63)) for cp in b.checkpoints])
            for cp in b.checkpoints:
                if cp.id not in self._open:  # first sight (a quiet load emits no state_changed)
                    self._start(cp.id, cp.state, cp.since, list(cp.reasons))
        if b.reserve is not None:
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('seq_reserved', ?)", (str(b.reserve),))
        for tid in b.gone:
            self._close(tid, b.ts)
            conn.execute("UPDATE tunnels SET removed = ? WHERE id = ?", (b.ts, tid))

    def _close(self, tid: str, ts: float) -> None:
        if tid in self._open:
            self.conn.execute("UPDATE intervals SET end = ? WHERE tunnel = ? AND end IS NULL", (ts, tid))
            self._open.discard(tid)

    def _start(self, tid: str, state: str, ts: float, reasons: list[Any]) -> None:
        self.conn.execute("INSERT INTO intervals (tunnel, state, start, end, reasons) VALUES (?, ?, ?, NULL, ?)",
                          (tid, state, ts, orjson.dumps(reasons).decode()))
        self._open.add(tid)

    def _prune(self, now: float) -> None:
        try:
            self.pruned_rows += prune(self.conn, self.retention, now)
        except (sqlite3.Error, HistoryError) as exc:
            log.warning("history: retention could not prune %s: %s", self.path, exc)
