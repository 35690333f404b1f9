"""Clock steps (issue 11 item 1): the core runs on a monotonic clock; wall time only shows instants.

The daemon is driven with an injected monotonic clock and an injected wall clock that is stepped by
+1 h and -1 h (what an NTP step at boot does). Before the fix the daemon fed the wall clock to the core:
a +1 h step fired every idle timer at once (a flap), a -1 h step made durations negative.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from monitor.health.correlate import Correlator
from monitor.health.model import HealthConfig
from monitor.health.pipeline import Pipeline
from monitor.serve.daemon import Daemon
from monitor.serve.hub import Hub
from monitor.sources.items import SourceItem
from monitor.wire import xfrm as X
from tests.correlate_builders import dump_datagrams, make_policy, make_sa, newpolicy, newsa, with_counters

WALL0 = 1_790_000_000.0  # the wall clock at start
MONO0 = 5_000.0  # the monotonic clock at start (seconds since boot)


class Clocks:
    """A monotonic clock and a wall clock that tests advance and step by hand."""

    def __init__(self) -> None:
        self.mono = MONO0
        self.wall = WALL0

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds

    def step_wall(self, seconds: float) -> None:
        self.wall += seconds


class QueueSource:
    """A source whose items the test hands in one batch at a time."""

    kind = "kernel"

    def __init__(self) -> None:
        self.queue: asyncio.Queue[SourceItem] = asyncio.Queue()

    async def items(self) -> AsyncIterator[SourceItem]:
        while True:
            yield await self.queue.get()


def _records(clocks: Clocks, nbytes: int, *, spis: tuple[int, int] = (0x100, 0x200),
             add_wall: float = WALL0) -> list[Any]:
    """A dump of one tunnel's SA pair with ``nbytes`` each way; ``add_time`` is the kernel's wall time."""
    sa_in = make_sa(spis[0], inbound=True, add_time=add_wall, soft=2700, hard=3600)
    sa_out = make_sa(spis[1], inbound=False, add_time=add_wall, soft=2700, hard=3600)
    return [newsa(with_counters(sa_in, nbytes, nbytes // 100), dump_seq=1),
            newsa(with_counters(sa_out, nbytes, nbytes // 100), dump_seq=1)]


async def _settle(source: QueueSource, daemon: Daemon, items: list[SourceItem]) -> None:
    before = daemon.items
    for item in items:
        source.queue.put_nowait(item)
    for _ in range(500):
        await asyncio.sleep(0)
        if daemon.items >= before + len(items):
            break
    daemon.publish()


async def _run(steps: list[float]) -> tuple[Correlator, Daemon, Clocks, list[Any], Any]:
    """Start a daemon on the fake clocks, load one tunnel, then per step: advance 10 s, step the wall
    clock by ``step`` and dump counters that moved. Returns what the test inspects."""
    clocks = Clocks()
    correlator = Correlator(HealthConfig(idle_after=30.0))
    hub = Hub(correlator)
    source = QueueSource()
    daemon = Daemon(source, Pipeline(correlator), correlator, hub, clock=lambda: clocks.mono,
                    wall_clock=lambda: clocks.wall, counters_interval=3600.0)
    events: list[Any] = []
    hub.publish_events = events.extend  # type: ignore[method-assign]
    await daemon.start()
    try:
        policy = newpolicy(make_policy(1, index=8), dump_seq=2)
        seq = 10
        await _settle(source, daemon, dump_datagrams("default", 2, [policy], clocks.mono, X.XFRM_MSG_GETPOLICY))
        await _settle(source, daemon, dump_datagrams("default", 3, _records(clocks, 1000), clocks.mono))
        nbytes = 1000
        for step in steps:
            clocks.advance(10.0)
            clocks.step_wall(step)
            nbytes += 1000
            seq += 1
            await _settle(source, daemon, dump_datagrams("default", seq, _records(clocks, nbytes), clocks.mono))
        return correlator, daemon, clocks, events, hub
    finally:
        await daemon.stop()


def _only(correlator: Correlator) -> dict[str, Any]:
    (tid,) = correlator.tunnel_ids()
    t = correlator.tunnel_json(tid, 0.0)
    assert t is not None
    return t


async def test_wall_step_forward_makes_no_flap_and_instants_follow_the_wall() -> None:
    correlator, daemon, clocks, events, _ = await _run([3600.0, 0.0])
    types = [e.type for e in events]
    assert types[:2] == ["resync", "resync"], types  # the quiet initial load of policies and SAs
    assert not {"tunnel_up", "tunnel_down", "state_changed"} & set(types), types  # no flap
    (tid,) = correlator.tunnel_ids()
    t = correlator.tunnel_json(tid, clocks.mono)
    assert t is not None
    assert t["state"] == "up", t
    # the SA was added at WALL0 with a 3600 s hard limit; 20 s of real time went by (the step is not time)
    assert t["hard_expires_in"] == 3580.0, t["hard_expires_in"]
    # instants are shown on the stepped wall clock; the core's own clock never saw the step
    assert correlator.wall_skew == clocks.wall - clocks.mono
    load = events[0]
    assert load.mono == MONO0, load
    assert load.ts == WALL0, load
    assert abs(t["since"] - (MONO0 + correlator.wall_skew)) < 1e-6
    assert daemon.uptime() >= 0.0


async def test_wall_step_back_keeps_durations_and_idle_on_time() -> None:
    correlator, _, clocks, events, _ = await _run([-3600.0])
    (tid,) = correlator.tunnel_ids()
    t = correlator.tunnel_json(tid, clocks.mono)
    assert t is not None
    assert t["state"] == "up"
    assert t["hard_expires_in"] == 3590.0
    assert all(e.mono >= MONO0 for e in events)
    # idle detection still fires idle_after (30 s) after the last traffic on the core's clock, however
    # far back the wall clock went
    correlator.on_timer(clocks.mono + 31.0)
    t = correlator.tunnel_json(tid, clocks.mono + 31.0)
    assert t is not None
    assert t["state"] == "idle", t["state"]


async def test_new_sa_after_a_step_expires_on_its_kernel_time() -> None:
    """An SA the kernel adds after a +1 h step carries a wall ``add_time`` 1 h ahead: converted, it
    expires 3600 s after it was added, not 7200 s."""
    clocks = Clocks()
    correlator = Correlator()
    pipeline = Pipeline(correlator)
    correlator.wall_skew = clocks.wall - clocks.mono
    for item in dump_datagrams("default", 1, _records(clocks, 10), clocks.mono):
        pipeline.feed(item, clocks.mono)
    clocks.advance(60.0)
    clocks.step_wall(3600.0)
    correlator.wall_skew = clocks.wall - clocks.mono
    fresh = _records(clocks, 10, spis=(0x300, 0x400), add_wall=clocks.wall)
    for item in dump_datagrams("default", 2, [*_records(clocks, 20), *fresh], clocks.mono):
        pipeline.feed(item, clocks.mono)
    (tid,) = correlator.tunnel_ids()
    t = correlator.tunnel_json(tid, clocks.mono)
    assert t is not None
    by_spi = {sa["spi"]: sa for sa in t["sas"]}
    assert by_spi["0x00000300"]["hard_expires_in"] == 3600.0
    assert by_spi["0x00000100"]["hard_expires_in"] == 3540.0
    assert by_spi["0x00000300"]["added"] == clocks.wall  # shown in wall time, as the kernel said


async def test_daemon_without_injected_clocks_feeds_monotonic_time() -> None:
    correlator = Correlator()
    source = QueueSource()
    daemon = Daemon(source, Pipeline(correlator), correlator, Hub(correlator))
    assert daemon.live
    with contextlib.suppress(Exception):
        daemon.sync_wall()
    import time

    assert abs(daemon.clock() - time.monotonic()) < 5.0
    assert abs(daemon.wall(daemon.clock()) - time.time()) < 5.0
