"""What a source hands to the pipeline: raw datagrams and control notes, tagged with netns and time.

Sources (the live kernel, a replayed capture, the simulator) all yield ``SourceItem``s, so the pure
``monitor.health.pipeline`` treats them identically. ``ts`` is wall-clock seconds (``time.time()`` at
receive, or the capture's timestamp).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Literal, NamedTuple, Protocol


class Datagram(NamedTuple):
    """One netlink datagram. ``outgoing`` is True for our own requests (dump requests)."""

    netns: str
    data: bytes
    ts: float
    outgoing: bool = False


ControlKind = Literal["enobufs", "netns_added", "netns_removed", "xfrm_stat", "source_error"]


class Control(NamedTuple):
    """A non-netlink note from a source.

    ``enobufs``: the socket overran; a resync dump follows. ``xfrm_stat``: ``counters`` holds the
    netns's ``/proc/net/xfrm_stat``. ``source_error``: ``message`` says what failed.
    """

    netns: str
    kind: ControlKind
    ts: float
    counters: Mapping[str, int] | None = None
    message: str = ""


SourceItem = Datagram | Control


class Source(Protocol):
    """Anything that yields source items: ``KernelSource``, ``ReplaySource``, ``SimulatedSource``."""

    def items(self) -> AsyncIterator[SourceItem]:
        """Yield items until the source ends (replay) or is cancelled (live)."""
        ...
