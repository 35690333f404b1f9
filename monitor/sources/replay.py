"""Play a netlink capture back as source items (I/O: file reading and asyncio sleeps).

``ReplaySource(path, speed)`` yields each NETLINK_XFRM record of a pcap file (``monitor.wire.pcap``) as a
``Datagram`` with its original timestamp, direction and namespace, so the pure pipeline cannot
tell it from the live kernel: our own dump requests are in the capture too, which marks where
each dump begins.

Pacing: ``speed=1`` keeps the original gaps between records, ``speed=10`` plays ten times
faster, ``speed=None`` (or 0) plays as fast as possible while still yielding to the event loop
every few hundred records.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from pathlib import Path

from monitor.sources.items import Datagram, SourceItem
from monitor.wire.pcap import read_pcap

__all__ = ["ReplaySource"]

_YIELD_EVERY = 256


class ReplaySource:
    """A ``Source`` reading a capture file.

    Args:
        path: a netlink pcap (ours or ``tcpdump -i nlmon0 -w``).
        speed: playback speed factor; None or 0 means as fast as possible.

    ``items()`` raises ``CaptureFormatError`` if the file is not a netlink pcap, or where it is
    truncated (after yielding every record before that point).
    """

    def __init__(self, path: str | Path, speed: float | None = 1.0) -> None:
        if speed is not None and not speed >= 0:  # also refuses nan
            raise ValueError("speed must be positive (or None for as fast as possible)")
        self.path = Path(path)
        self.speed = speed or None
        self.count = 0

    async def items(self) -> AsyncGenerator[SourceItem, None]:
        """Yield the capture's datagrams, paced by their timestamps."""
        loop = asyncio.get_running_loop()
        first_ts: float | None = None
        start = loop.time()
        for rec in read_pcap(self.path):
            if self.speed is not None:
                if first_ts is None:
                    first_ts = rec.ts
                delay = start + (rec.ts - first_ts) / self.speed - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            elif self.count % _YIELD_EVERY == _YIELD_EVERY - 1:
                await asyncio.sleep(0)
            self.count += 1
            yield Datagram(rec.netns, rec.data, rec.ts, rec.outgoing)
