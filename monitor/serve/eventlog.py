"""Health events as JSON lines for log pipelines (``--events-log FILE|-``; I/O shell).

Every event the daemon publishes is written as one line, the same object as the websocket's ``event``
(``docs/schema/event.json``), so journald, Vector, Fluent Bit or Promtail ship them unchanged (example
configurations in docs/operations.md). Lines are buffered and flushed once per published batch. A write
that fails (full disk, a vanished pipe) is logged once per kind of error and counted; the monitor keeps
watching and tries again with the next batch: it never dies for its event log.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import IO, Any

import orjson

log = logging.getLogger(__name__)


class EventLog:
    """Append health events to ``path`` (``"-"``: standard output), one JSON object per line."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.written = 0
        self.errors = 0
        self._seen_errors: set[int | None] = set()
        self._f: IO[bytes] = sys.stdout.buffer if path == "-" else open(path, "ab")  # noqa: SIM115 - closed in close()

    def write(self, events: Sequence[Any]) -> None:
        """Write a batch of events (objects with ``to_json()``) and flush it."""
        try:
            self._f.write(b"".join(orjson.dumps(ev.to_json(), option=orjson.OPT_APPEND_NEWLINE) for ev in events))
            self._f.flush()
            self.written += len(events)
        except OSError as exc:
            self.errors += 1
            if exc.errno not in self._seen_errors:
                self._seen_errors.add(exc.errno)
                log.warning("events log %s: write failed (%s); events are still served, the log has a gap",
                            self.path, exc.strerror or exc)

    def close(self) -> None:
        """Flush and close (standard output is only flushed)."""
        try:
            if self._f is sys.stdout.buffer:
                self._f.flush()
            else:
                self._f.close()
        except OSError:
            pass
