"""Play a netlink capture back as source items (I/O: file reading and asyncio sleeps).

``ReplaySource(path, speed)`` yields each NETLINK_XFRM record of a pcap file (``monitor.wire.pcap``) as a
``Datagram`` with its original timestamp, direction and namespace, so the pure pipeline cannot
tell it from the live kernel: our own dump requests are in the capture too, which marks where
each dump begins.

Pacing: ``speed=1`` keeps the original gaps between records, ``speed=10`` plays ten times
faster, ``speed=None`` (or 0) plays as fast as possible while still yielding to the event loop
every few hundred records. A gap longer than ``max_pause`` seconds of playback (a corrupt timestamp, a
capture paused overnight) is cut to ``max_pause`` and logged.

Clock: ``now()`` is the capture's own clock (the newest record's timestamp, advancing at ``speed`` while
paced), which the daemon feeds to the core instead of the wall clock, so a replay shows the states,
expiry times and rekey durations the live run had (docs/operations.md, "Replaying a capture").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from pathlib import Path

from monitor.sources.items import Datagram, SourceItem
from monitor.wire.pcap import read_pcap

__all__ = ["ReplaySource"]

_YIELD_EVERY = 256
MAX_PAUSE = 10.0  # seconds of real time, at most, between two paced records

log = logging.getLogger(__name__)


class ReplaySource:
    """A ``Source`` reading a capture file.

    Args:
        path: a netlink pcap (ours or ``tcpdump -i nlmon0 -w``).
        speed: playback speed factor; None or 0 means as fast as possible.
        max_pause: the longest pause between two records, in seconds of playback.
        monotonic: the clock the schedule is kept on (tests pass a fake one).
        sleep: how to wait (``asyncio.sleep`` by default; tests pass one that advances their fake clock).

    ``items()`` raises ``CaptureFormatError`` if the file is not a netlink pcap, or where it is
    truncated (after yielding every record before that point).
    """

    def __init__(self, path: str | Path, speed: float | None = 1.0, *, max_pause: float = MAX_PAUSE,
                 monotonic: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] | None = None) -> None:
        if speed is not None and not speed >= 0:  # also refuses nan
            raise ValueError("speed must be positive (or None for as fast as possible)")
        self.path = Path(path)
        self.speed = speed or None
        self.max_pause = max_pause
        self.count = 0
        self.capped = 0  # gaps cut to max_pause
        self._monotonic = monotonic
        self._sleep = sleep  # None: asyncio.sleep (looked up at each call); tests inject a fake clock's
        self._ts: float | None = None  # capture time of the newest record yielded
        self._at = 0.0  # monotonic time when it was yielded

    def now(self) -> float:
        """The capture's clock: the newest record's timestamp, advancing at ``speed`` while paced.

        Before the first record it is 0.0 (nothing has happened yet); played as fast as possible it stops
        at the last record (the state at the end of the capture).
        """
        if self._ts is None:
            return 0.0
        if self.speed is None:
            return self._ts
        return self._ts + (self._monotonic() - self._at) * self.speed

    async def items(self) -> AsyncGenerator[SourceItem, None]:
        """Yield the capture's datagrams, paced by their timestamps."""
        base = base_ts = 0.0  # the schedule: record time base_ts plays at monotonic time base
        for rec in read_pcap(self.path):
            if self.speed is not None and self._ts is None:
                base, base_ts = self._monotonic(), rec.ts
            elif self.speed is not None and self._ts is not None:
                delay = base + (rec.ts - base_ts) / self.speed - self._monotonic()
                if delay > self.max_pause:
                    self.capped += 1
                    log.warning("replay: a gap of %.0f s in the capture before record %d; pausing %.0f s instead",
                                rec.ts - self._ts, self.count + 1, self.max_pause)
                    delay = self.max_pause
                    base, base_ts = self._monotonic() + delay, rec.ts
                if delay > 0:
                    await (self._sleep or asyncio.sleep)(delay)
            elif self.count % _YIELD_EVERY == _YIELD_EVERY - 1:
                await (self._sleep or asyncio.sleep)(0)
            self.count += 1
            self._ts, self._at = rec.ts, self._monotonic()
            yield Datagram(rec.netns, rec.data, rec.ts, rec.outgoing)
