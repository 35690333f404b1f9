"""One websocket client's bounded, coalescing queue (I/O-free; the hub fills it, a session drains it).

The queue is an ``OrderedDict`` whose keys make coalescing O(1):
``("e", seq)`` an event, ``("t", id)`` the latest full tunnel (re-inserted at the end on update, so the
stream stays in ``seq`` order), ``("c",)`` the pending counters frame, ``("g", n)`` a gap marker,
``("r",)`` "send a fresh snapshot", ``("d", n)`` a reply to the client's own request, ``("n", name)`` the latest
``netns`` message of one namespace (re-inserted at the end on update, like a tunnel). Each value is
``(seq label, payload)``: the newest event ``seq`` when it was queued.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

from monitor.serve.protocol import Filters

if TYPE_CHECKING:
    from monitor.serve.hub import Hub

MAX_REPLIES = 8
#: Most messages handed to one ``send_many`` call (one transport write of that many frames).
MAX_BATCH = 256


class Client:
    """One subscriber's bounded queue. Created by :meth:`Hub.attach`."""

    def __init__(self, hub: Hub, filters: Filters) -> None:
        self.hub = hub
        self.filters = filters
        #: No filters: a candidate for the hub's direct broadcast (Filters are immutable, so this is fixed).
        self.plain = filters.empty
        self.q: OrderedDict[Hashable, tuple[int, Any]] = OrderedDict()
        self.n_events = 0
        self.n_updates = 0
        self.n_replies = 0
        self.resync = False
        self.delivered_gen = hub.gen
        #: Newest event seq when the client attached: later events are in its queue, earlier ones not.
        self.attach_seq = hub.seq
        self.wake = asyncio.Event()
        self.progress = time.monotonic()
        self.sent_messages = 0
        self.dropped_total = 0
        #: Set by the transport (monitor.serve.web): called once when the client is found stalled.
        self.on_stall: Callable[[], None] | None = None
        #: Set by the transport for the hub's flusher: ``can_write()`` (not paused, not closing) and
        #: ``write_run(messages)`` (write them now, synchronously, in order).
        self.can_write: Callable[[], bool] | None = None
        self.write_run: Callable[[list[bytes]], None] | None = None
        #: Optional, set by the transport: write already-framed bytes now (the hub's direct broadcast).
        self.write_raw: Callable[[bytes], None] | None = None
        #: True while this client's writer task waits with an empty queue (nothing in flight).
        self.idle = False
        #: True while the client is in the hub's direct broadcast set for this loop iteration: events are
        #: not queued per client but written to it by the hub's flusher (``Hub._flush``).
        self.direct = False
        self._open_gap: list[int] | None = None  # [from_seq, to_seq, count] of the last gap entry
        self._ids = itertools.count()

    def _put(self, key: Hashable, value: tuple[int, Any]) -> None:
        if self.direct:  # anything else for this client: its broadcast events so far go first, queued
            self.hub.demote(self)
        if not self.q:
            self.progress = time.monotonic()
        self.q[key] = value
        if self.idle and self.write_run is not None:
            self.hub.want_flush(self)  # written by the hub's flusher this loop iteration, no task wake-up
        else:
            self.wake.set()

    def push_event(self, seq: int, data: bytes) -> None:
        """Queue an event, or count it into a gap when the queue is full."""
        if self.n_events < self.hub.client_queue:
            self.n_events += 1
            self._open_gap = None
            self._put(("e", seq), (seq, data))
            return
        self.dropped_total += 1
        self.hub.dropped_total += 1
        if self._open_gap is not None:
            self._open_gap[1] = seq
            self._open_gap[2] += 1
        else:
            self._open_gap = [seq, seq, 1]
            self._put(("g", next(self._ids)), (seq, self._open_gap))

    def push_tunnel(self, tid: str, seq: int, data: bytes | None) -> None:
        """Queue the latest full tunnel (``None``: generate at send time); replaces a pending one."""
        if self.resync:
            return
        key = ("t", tid)
        if key in self.q:
            del self.q[key]
        elif self.n_updates >= self.hub.client_max_updates:
            for k in [k for k in self.q if k[0] == "t"]:  # type: ignore[index]
                del self.q[k]
            self.n_updates = 0
            self.resync = True
            self._put(("r",), (seq, None))
            return
        else:
            self.n_updates += 1
        self._put(key, (seq, data))

    def push_counters(self, seq: int, gen: int, data: list[bytes] | None) -> None:
        """Queue a counters frame; a client that is behind gets a catch-up marker instead."""
        key = ("c",)
        behind = key in self.q or self.delivered_gen != gen - 1
        if key in self.q:
            del self.q[key]
        self._put(key, (seq, None if behind else (gen, data)))

    def push_netns(self, name: str, seq: int, data: bytes) -> None:
        """Queue a namespace's latest ``netns`` message; replaces a pending one (at most one per netns)."""
        key = ("n", name)
        if key in self.q:
            del self.q[key]
        self._put(key, (seq, data))

    def push_reply(self, data: bytes) -> bool:
        """Queue a reply to the client's own request; False if too many are pending."""
        if self.n_replies >= MAX_REPLIES:
            return False
        self.n_replies += 1
        self._put(("d", next(self._ids)), (0, data))
        return True

    def ready_run(self) -> list[bytes]:
        """Pop the leading run of queue entries that are ready bytes (events, built tunnels, replies)."""
        out: list[bytes] = []
        q = self.q
        while q and len(out) < MAX_BATCH:
            key = next(iter(q))
            kind = key[0]
            value = q[key][1]
            if kind == "e":
                self.n_events -= 1
            elif kind == "t" and value is not None:
                self.n_updates -= 1
            elif kind == "d":
                self.n_replies -= 1
            elif kind != "n":
                break
            del q[key]
            out.append(value)
        return out
