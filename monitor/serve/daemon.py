"""The I/O shell between a source and the pure core: feed, drain, re-arm, publish.

It follows aioquic's ``asyncio/protocol.py`` loop: every item a source yields goes into
``Pipeline.feed(item, now)`` with ``now`` from the monotonic clock (or the source's own clock, for the
accelerated simulator and replayed captures); then the correlator's new events and changed tunnels go to
the hub, and one ``loop.call_at`` timer is re-armed from ``correlator.next_deadline()``. The wall clock is
never fed to the core: before each call the daemon sets the core's ``wall_skew`` (wall minus core time), so
a clock step (NTP at boot) moves only how instants are shown, never a timer, an idle decision or a duration.

Besides that it owns: the periodic ``counters`` frame (and after it, ``netns`` messages for changed
namespaces), the event-loop lag probe, the stalled-client watchdog (which also feeds the heap trimmer,
:mod:`monitor.serve.heap`), and the per-netns source statistics shown by ``/healthz`` and ``/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from monitor.errors import MonitorError
from monitor.health.timers import run_due_timers
from monitor.serve.heap import HeapTrimmer
from monitor.serve.hub import Hub, netns_docs
from monitor.serve.load_gc import LoadGc
from monitor.sources.items import Control, Source

log = logging.getLogger(__name__)

LAG_PROBE = 0.1  # seconds between lag probes
LAG_WINDOW = 50  # probes kept: max lag over the last ~5 s
FEED_SLICE = 0.005  # s of feeding per loop turn (issue 15); not mid initial load: the prober must not see half a load


class Core(Protocol):
    """The correlator calls the daemon makes (see ARCHITECTURE.md "Correlator (pure)")."""

    @property
    def seq(self) -> int:
        """Newest event seq."""
        ...

    def next_deadline(self) -> float | None:
        """Wall-clock time the correlator wants ``on_timer``."""
        ...

    def on_timer(self, now: float) -> None:
        """Process expired deadlines."""
        ...

    def drain_events(self) -> list[Any]:
        """New health events."""
        ...

    def take_dirty(self) -> set[str]:
        """Ids of changed tunnels."""
        ...


class Feeder(Protocol):
    """``monitor.health.pipeline.Pipeline``."""

    def feed(self, item: Any, now: float) -> Any:
        """Feed one source item."""
        ...


class Daemon:
    """Runs one source into one pipeline/correlator and publishes to one hub."""

    def __init__(
        self,
        source: Source,
        pipeline: Feeder,
        correlator: Core,
        hub: Hub,
        *,
        kind: str = "kernel",
        counters_interval: float = 1.0,
        clock: Callable[[], float] | None = None,
        wall_clock: Callable[[], float] | None = None,
    ) -> None:
        """``clock`` is the core's clock (default: the source's own ``now`` if it has one, for the simulator
        and replays, else ``time.monotonic``); ``wall_clock`` (default ``time.time``) is only used to show
        instants, through the core's ``wall_skew``. With an injected ``clock`` and no ``wall_clock`` the
        injected clock is taken as the wall clock too (skew 0)."""
        self.source = source
        self.pipeline = pipeline
        self.correlator = correlator
        self.hub = hub
        self.kind = kind
        self.counters_interval = counters_interval
        src_now = getattr(source, "now", None)
        own = callable(src_now) and clock is None
        self.clock: Callable[[], float] = clock or (src_now if own and src_now is not None else time.monotonic)
        #: True when the core runs on a clock of its own (monotonic) and wall time is only for display.
        self.live = (clock is None and not own) or wall_clock is not None
        self.wall_clock: Callable[[], float] = wall_clock or time.time
        self.core = getattr(pipeline, "correlator", correlator)  # the pure core (under any wrapper)
        self.mono_started = time.monotonic()
        self.state = "starting"  # running | finished | failed
        self.error: str | None = None
        self.error_text = ""  # the source's error as the user reads it (no exception class name)
        self.items = 0
        self.feed_errors = 0
        self.enobufs: Counter[str] = Counter()
        self.controls: Counter[tuple[str, str]] = Counter()
        self.netns_seen: set[str] = set()
        self.lags: deque[float] = deque([0.0], maxlen=LAG_WINDOW)
        self.failed = asyncio.Event()
        #: Set once the source has proved it is open (its first item) or has ended (finished or failed).
        self.opened = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._deadline: float | None = None
        self._publish_handle: asyncio.Handle | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.gc = LoadGc()
        self._netns_sig: dict[str, object] = {}  # what the last ``netns`` message of each namespace said
        #: Gives freed heap back after websocket clients leave (fed by the watchdog).
        self.heap = HeapTrimmer()
        #: Set by create_app when ``events_log`` is configured (monitor.serve.eventlog.EventLog).
        self.events_log: Any = None
        #: Set by create_app when the history store is on (monitor.serve.history.HistoryService).
        self.history: Any = None

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the background tasks (source, counters, lag probe, stall watchdog)."""
        self._tasks = [
            asyncio.create_task(self._consume(), name="monitor-source"),
            asyncio.create_task(self._counters(), name="monitor-counters"),
            asyncio.create_task(self._lag_probe(), name="monitor-lag"),
            asyncio.create_task(self._watchdog(), name="monitor-watchdog"),
        ]

    async def stop(self) -> None:
        """Cancel and await every background task; cancel the timer."""
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks = []
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._publish_handle is not None:
            self._publish_handle.cancel()
            self._publish_handle = None
        self.gc.release()

    @property
    def lag(self) -> float:
        """Max event-loop lag (seconds) over the last few seconds."""
        return max(self.lags)

    @property
    def alive(self) -> bool:
        """True while the source is running."""
        return self.state == "running"

    def dump_stats(self) -> dict[str, dict[str, float | None]]:
        """Per netns: ``last_dump`` (wall time of the last completed dump) and ``last_dump_duration``."""
        out: dict[str, dict[str, float | None]] = {
            ns: {"last_dump": None, "last_dump_duration": None} for ns in sorted(self.netns_seen)
        }
        stats: Any = getattr(self.pipeline, "stats", None)
        per_ns: Any = getattr(stats, "netns", None)
        if per_ns is None and isinstance(stats, Mapping):
            per_ns = stats.get("netns")
        if isinstance(per_ns, Mapping):
            for ns, st in per_ns.items():
                end = _field(st, "last_dump_end")
                if end is None:
                    end = _field(st, "last_dump")
                out[str(ns)] = {"last_dump": end, "last_dump_duration": _field(st, "last_dump_duration")}
        return out

    def resyncs(self) -> Mapping[str, int]:
        """Resync dump cycles run per netns: the kernel source counts them (several overruns during one
        cycle make one resync); other sources fall back to the pipeline's count of overruns."""
        run = getattr(self.source, "resyncs", None)
        if isinstance(run, Mapping):
            return {str(ns): int(n) for ns, n in run.items()}
        stats: Any = getattr(self.pipeline, "stats", None)
        per_ns: Any = getattr(stats, "netns", None)
        if isinstance(per_ns, Mapping):
            out: dict[str, int] = {}
            for ns, st in per_ns.items():
                v = _field(st, "resyncs")
                if isinstance(v, int):
                    out[str(ns)] = v
            if out:
                return out
        return dict(self.enobufs)

    # -- the loop ------------------------------------------------------------------------------

    async def _consume(self) -> None:
        self.state = "running"
        try:
            fed = 0.0  # seconds spent feeding since the loop last got a turn from us
            async for item in self.source.items():
                self.opened.set()
                t0 = time.monotonic()
                self._feed(item)
                fed += time.monotonic() - t0
                # ready items never suspend the source: a turn every 256 items and FEED_SLICE s of feeding
                if self.items % 256 == 0 or (fed >= FEED_SLICE and not getattr(self.core, "loading", False)):
                    if self.items % 256 == 0:
                        self.publish()
                    await asyncio.sleep(0)
                    fed = 0.0
            run_due_timers(self.correlator, self.clock())  # up to the source's last instant, as `check` does
            self.state = "finished"
            log.info("source finished after %d items", self.items)
        except asyncio.CancelledError:
            raise
        except MonitorError as exc:
            self.state, self.error = "failed", f"{type(exc).__name__}: {exc}"
            self.error_text = str(exc)
            if self.items:  # a start-up failure is reported once, by the command (monitor.commands.serve)
                log.error("source failed: %s", self.error)
            self.failed.set()
        except Exception as exc:
            self.state, self.error = "failed", f"{type(exc).__name__}: {exc}"
            self.error_text = self.error
            log.exception("source crashed")
            self.failed.set()
        finally:
            self.opened.set()
            self.publish()

    def _feed(self, item: Any) -> None:
        self.items += 1
        self.netns_seen.add(item.netns)
        if isinstance(item, Control):
            self.controls[(item.netns, item.kind)] += 1
            if item.kind == "enobufs":
                self.enobufs[item.netns] += 1
                log.warning("ENOBUFS in netns %s: resyncing", item.netns)
            elif item.kind == "netns_removed":
                self.netns_seen.discard(item.netns)
            elif item.kind == "source_error":
                log.error("source error in netns %s: %s", item.netns, item.message)
        self.sync_wall()
        now = self.clock()
        if not self.live:  # a replay or simulation outruns its clock: timers due before this item first
            run_due_timers(self.correlator, now)
        try:
            self.pipeline.feed(item, now)
        except MonitorError as exc:
            self.feed_errors += 1
            log.warning("dropped a bad item from netns %s: %s", item.netns, exc)
        self.gc.update(self.correlator, time.monotonic())
        if self._publish_handle is None:
            self._publish_handle = asyncio.get_running_loop().call_soon(self.publish)

    def sync_wall(self) -> None:
        """Tell the core how far the wall clock is from its own clock (it may have been stepped)."""
        if self.live and hasattr(self.core, "wall_skew"):
            self.core.wall_skew = self.wall_clock() - self.clock()

    def wall(self, now: float) -> float:
        """A core instant as wall-clock time (for display)."""
        return now + (float(getattr(self.core, "wall_skew", 0.0)) if self.live else 0.0)

    def uptime(self) -> float:
        """Seconds since the daemon was created, from the monotonic clock (a clock step cannot change it)."""
        return time.monotonic() - self.mono_started

    def publish(self) -> None:
        """Push new events and changed tunnels to the hub, then re-arm the timer."""
        self._publish_handle = None
        self.sync_wall()
        now = self.clock()
        events = self.correlator.drain_events()
        dirty = self.correlator.take_dirty()
        if events:
            self.hub.publish_events(events)
            if self.events_log is not None:
                self.events_log.write(events)
            touched = {t for t in (_tunnel_of(e) for e in events) if t}
            self.hub.publish_tunnels_soon(touched, now)
        if dirty:
            self.hub.note_dirty(dirty, now)
        if self.history is not None and (events or dirty):
            self.history.record(events, dirty)
        self._rearm()

    def _rearm(self) -> None:
        deadline = self.correlator.next_deadline()
        if deadline == self._deadline and (self._timer is not None or deadline is None):
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._deadline = deadline
        if deadline is None:
            return
        loop = asyncio.get_running_loop()
        # Convert the wall-clock deadline into loop time; the source clock may be accelerated.
        speed = 1.0 if self.live else float(getattr(self.source, "speed", 1.0) or 1.0)
        delay = max(0.0, (deadline - self.clock()) / speed)
        self._timer = loop.call_at(loop.time() + delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._deadline = None
        self.sync_wall()
        self.correlator.on_timer(self.clock())
        self.publish()

    async def _counters(self) -> None:
        while True:
            await asyncio.sleep(self.counters_interval)
            await self.hub.flush_counters(self.clock())
            self.publish_netns(self.clock())

    def publish_netns(self, now: float) -> None:
        """Send a ``netns`` message for each namespace whose hints or ``xfrm_stat`` changed since the last one."""
        for doc in netns_docs(self.core, now):
            sig = (tuple((h["code"], h["text"]) for h in doc["hints"]), tuple(sorted((doc["xfrm_stat"] or {}).items())))
            if self._netns_sig.get(doc["netns"]) != sig:
                self._netns_sig[doc["netns"]] = sig
                self.hub.publish_netns(doc, now)

    async def _lag_probe(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t0 = loop.time()
            await asyncio.sleep(LAG_PROBE)
            self.lags.append(max(0.0, loop.time() - t0 - LAG_PROBE))

    async def _watchdog(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.hub.stall_timeout / 4))
            self.heap.tick(len(self.hub.clients))
            for c in self.hub.stalled(time.monotonic()):
                cb = c.on_stall
                if cb is not None:
                    c.on_stall = None
                    self.hub.stalled_total += 1
                    log.warning("closing a websocket client stalled for > %.0f s", self.hub.stall_timeout)
                    cb()


def _tunnel_of(ev: Any) -> str | None:
    t = ev.get("tunnel") if isinstance(ev, Mapping) else getattr(ev, "tunnel", None)
    return t if isinstance(t, str) else None


def _field(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)
