"""Give the heap back to the kernel after websocket clients leave (issue 11 item 9; bench/memory_bench.py).

What held the memory: nothing of ours. Once a client has gone its queue, its snapshot chunks and its
transport buffer are freed (no reference is left: ``Hub.detach``), but freed is not returned. CPython
hands blocks over 512 bytes (serialised frames, joined writes, aiohttp's buffers) to glibc's ``malloc``,
and glibc gives memory back to the kernel only from the top of the main heap, once more than
``M_TRIM_THRESHOLD`` (128 KiB) is free there; free chunks below a live one, and whole free pages in the
per-thread arenas, stay resident (malloc(3), mallopt(3)). A burst of clients leaves exactly that:
megabytes of free chunks under the long-lived state allocated since. ``malloc_trim(0)`` releases every
whole free page of every arena (``MADV_DONTNEED``, glibc >= 2.8).

The policy is pure (:class:`TrimPolicy`, fed the client count and a monotonic ``now``); the trim runs in
a worker thread (ctypes drops the GIL for the call) so a large heap never stalls the loop.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

#: Seconds without a further departure before trimming (a wave of clients leaving is trimmed once).
QUIET = 2.0


class TrimPolicy:
    """When to trim: clients left since the last trim, and none has left for ``quiet`` seconds."""

    def __init__(self, quiet: float = QUIET) -> None:
        self.quiet = quiet
        self._last_count = 0
        self._departed_at: float | None = None

    def observe(self, clients: int, now: float) -> bool:
        """Record the current client count; True when a trim is due now."""
        if clients < self._last_count:
            self._departed_at = now
        self._last_count = clients
        if self._departed_at is not None and now - self._departed_at >= self.quiet:
            self._departed_at = None
            return True
        return False


def _libc_trim() -> Callable[[], int] | None:
    """``malloc_trim(0)`` of the C library, or None where there is none (musl, not Linux)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        fn = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: int(fn(0))


def _rss() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class HeapTrimmer:
    """The I/O shell: ``tick(clients)`` from a periodic task; trims off the loop when the policy says so.

    ``MONITOR_HEAP_TRIM=off`` turns it off (a diagnostic: the baseline of ``bench/memory_bench.py``).
    """

    def __init__(self, policy: TrimPolicy | None = None, trim: Callable[[], int] | None = None) -> None:
        self.policy = policy or TrimPolicy()
        enabled = os.environ.get("MONITOR_HEAP_TRIM", "on").lower() not in ("off", "0", "no", "false")
        self._trim = (trim or _libc_trim()) if enabled else None
        self._running: asyncio.Future[int] | None = None
        self.trims = 0
        #: RSS given back by the trims (bytes; RSS before minus after, never negative).
        self.released = 0

    @property
    def available(self) -> bool:
        return self._trim is not None

    def tick(self, clients: int) -> None:
        if not self.policy.observe(clients, time.monotonic()) or self._trim is None or self._running is not None:
            return
        loop = asyncio.get_running_loop()
        before = _rss()
        fut = self._running = loop.run_in_executor(None, self._trim)

        def done(f: asyncio.Future[int]) -> None:
            self._running = None
            if f.cancelled() or f.exception() is not None:
                log.debug("heap trim failed: %r", None if f.cancelled() else f.exception())
                return
            self.trims += 1
            self.released += max(0, before - _rss())

        fut.add_done_callback(done)
