"""The history store in the serving process: restore at start, record while running, answer queries.

``HistoryService.attach`` opens the store (``monitor.store.history.History``), hands the checkpoints and the
last ``seq`` to the pure core (``Correlator.restore``) and the newest stored events to the hub's ring, so
``?since=`` resumes across a restart. While running, the daemon passes each publish's events and changed
tunnel ids to ``record`` (list appends only); every ``flush`` seconds the service hands the writer thread a
batch: the events, and every ``checkpoint_every`` seconds the checkpoints of the tunnels changed since the
last one. The loop never waits on SQLite: queries run in a worker thread (``asyncio.to_thread``).

If the store cannot be opened or written, the monitor goes on without history: one log line, and the
reason in ``/healthz`` (``history``) and ``/metrics`` (``ipsec_monitor_history_up 0``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

from monitor.errors import HistoryError
from monitor.store.history import History
from monitor.store.retention import Retention
from monitor.store.schema import DB_NAME, open_readonly
from monitor.store.writer import Batch

__all__ = ["HistoryService"]

log = logging.getLogger("monitor.history")

#: How far ahead of the core's seq the store's reservation is kept (renewed at half of it): a crash loses
#: at most the events of the last flush, far fewer than this at any rate the monitor sustains.
SEQ_RESERVE = 100_000
CHECKPOINT_SLICE = 500  # tunnels checkpointed between two yields to the loop (~3 µs each: under 2 ms)


class HistoryService:
    """Restores the core from the store and records into it; holds the reason when there is no store."""

    def __init__(self, path: Path, history: History | None, error: str | None, core: Any,
                 wall: Callable[[], float], *, flush: float = 0.5, checkpoint_every: float = 5.0) -> None:
        self.path = path
        self.history = history
        self.error = error
        self.core = core
        self.wall = wall
        self.flush_interval = flush
        self.checkpoint_every = checkpoint_every
        self._events: list[Any] = []
        self._dirty: set[str] = set()
        self._urgent: set[str] = set()  # tunnels an event was about: checkpointed at the next flush
        self._next_checkpoint = 0.0
        self._reserved = 0  # the seq reservation last handed to the store (see ``flush``)
        self.restored_tunnels = 0

    @classmethod
    def attach(cls, state_dir: Path, core: Any, hub: Any, retention: Retention,
               wall: Callable[[], float] = time.time) -> HistoryService:
        """Open the store and restore ``core`` and ``hub`` from it; without it, a service that says why."""
        path = state_dir / DB_NAME
        try:
            history = History.open(state_dir, retention, recent=hub.ring.maxlen or 10_000)
        except HistoryError as exc:  # logged by ``report`` once the source has opened (one start-up error)
            return cls(path, None, str(exc), core, wall)
        r = history.restored
        restore = getattr(core, "restore", None)
        if restore is not None:
            restore(r.checkpoints, r.seq)
        if r.events:
            hub.publish_events(r.events)
        log.debug("history: %s: %d tunnels and event seq %d restored", path, len(r.checkpoints), r.seq)
        svc = cls(path, history, None, core, wall)
        svc.restored_tunnels = len(r.checkpoints)
        return svc

    def report(self) -> None:
        """Log why there is no history, if there is none (``monitor serve`` calls it once it listens)."""
        if self.history is None:
            log.error("history: %s; running without history", self.error)

    # ------------------------------------------------------------------ recording (on the loop)

    def record(self, events: Iterable[Any], dirty: Iterable[str]) -> None:
        """Called by the daemon's publish: keep the events and the changed ids for the next batch."""
        if self.history is not None:
            for e in events:
                self._events.append(e)
                tid = getattr(e, "tunnel", None)
                if tid is not None:
                    self._urgent.add(tid)
            self._dirty.update(dirty)

    def flush(self, *, final: bool = False) -> None:
        """Hand what was recorded to the writer thread: the events; checkpoints of the tunnels they were about
        (a rekey or a state change is never more than a flush from the store), and of every changed tunnel
        when ``checkpoint_every`` is due (counters: live SAs lose nothing to an older checkpoint) or ``final``.

        It also keeps a **seq reservation** ``SEQ_RESERVE`` ahead of the core's seq in the store: a restart
        continues above it, so a seq a client may have seen just before a crash (its event not written yet)
        is never given to another event."""
        if self.history is None:
            return
        ids, now = self._take(final)
        cps, gone = self.core.checkpoint(ids) if ids else ([], [])
        self._submit(now, cps, gone)

    async def flush_sliced(self) -> None:
        """``flush`` with the checkpoints taken ``CHECKPOINT_SLICE`` tunnels at a time, the loop serving others
        in between (100,000 changed tunnels must not stall it)."""
        if self.history is None:
            return
        ids, now = self._take(False)
        cps: list[Any] = []
        gone: list[str] = []
        for i in range(0, len(ids), CHECKPOINT_SLICE):
            if i:
                await asyncio.sleep(0)
            c, g = self.core.checkpoint(ids[i:i + CHECKPOINT_SLICE])
            cps += c
            gone += g
        self._submit(now, cps, gone)

    def _take(self, final: bool) -> tuple[list[str], float]:
        """The tunnels to checkpoint now (see ``flush``) and the wall time."""
        now = self.wall()
        if (final or now >= self._next_checkpoint) and self._dirty:
            ids, self._dirty, self._urgent = self._dirty | self._urgent, set(), set()
            self._next_checkpoint = now + self.checkpoint_every
        else:
            ids, self._urgent = self._urgent, set()
            self._dirty -= ids
        return list(ids), now

    def _submit(self, now: float, cps: list[Any], gone: list[str]) -> None:
        assert self.history is not None
        reserve = None
        seq = int(getattr(self.core, "seq", 0))
        if seq + SEQ_RESERVE // 2 > self._reserved:
            self._reserved = reserve = seq + SEQ_RESERVE
        if self._events or cps or gone or reserve:
            events, self._events = self._events, []
            self.history.submit(Batch(now, events, cps, gone, reserve))

    async def run(self) -> None:
        """Flush every ``flush_interval`` seconds."""
        while True:
            await asyncio.sleep(self.flush_interval)
            await self.flush_sliced()

    async def cleanup_ctx(self, _app: object) -> AsyncIterator[None]:
        """aiohttp ``cleanup_ctx``: the flush task; at shutdown one final batch, then close the store."""
        task = asyncio.create_task(self.run(), name="monitor-history") if self.history is not None else None
        yield
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.history is not None:
            self.flush(final=True)
            await asyncio.to_thread(self.history.close)

    # ------------------------------------------------------------------ status and queries

    def status(self) -> dict[str, Any]:
        """``/healthz``'s ``history`` object."""
        if self.history is None:
            return {"enabled": True, "ok": False, "path": str(self.path), "error": self.error}
        return {**self.history.status(), "restored_tunnels": self.restored_tunnels}

    async def query(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(conn, *args)`` on a read-only connection in a worker thread."""
        def run() -> Any:
            conn = open_readonly(self.path)
            try:
                return fn(conn, *args)
            finally:
                conn.close()

        return await asyncio.to_thread(run)
