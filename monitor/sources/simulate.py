"""``SimulatedSource``: the simulated fleet (``monitor.sources.simfleet``) as a live, optionally accelerated source.

The fleet itself is pure; this shell only maps real time to simulated time and sleeps between
steps. Simulated time starts at the wall-clock time of the first ``items()`` iteration and runs
``speed`` times faster than real time, so with ``speed=10`` ten simulated seconds pass per real
second. Every item's ``ts`` is simulated time; ``now()`` gives the source's current simulated time
so a daemon can drive the correlator's timers on the same clock.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from monitor.errors import ConfigError
from monitor.sources.items import SourceItem
from monitor.sources.simfleet import Fleet, FleetConfig

__all__ = ["SimulatedSource"]

MAX_SLEEP = 0.5  # real seconds: keeps the source responsive to cancellation and clock changes


class SimulatedSource:
    """A simulated fleet of ``tunnels`` CHILD_SAs in network namespace ``netns``.

    Args:
        tunnels: how many tunnels (the first seven get the scripted roles of ``simfleet.ROLES``).
        speed: simulated seconds per real second (> 0).
        seed: random seed; the same seed gives the same fleet and the same story.
        netns: the namespace name every item is tagged with.
        config: full fleet configuration (overrides ``tunnels`` and ``netns`` when given).
    """

    kind = "simulate"

    def __init__(self, tunnels: int = 24, speed: float = 1.0, seed: int = 0, netns: str = "sim",
                 config: FleetConfig | None = None) -> None:
        if not speed > 0:
            raise ConfigError(f"simulation speed must be > 0, got {speed}")
        if tunnels < 0:
            raise ConfigError(f"tunnel count must be >= 0, got {tunnels}")
        self.config = config or FleetConfig(tunnels=tunnels, netns=netns)
        self.speed = float(speed)
        self.seed = seed
        self.fleet = Fleet(seed, self.config)
        self._real0: float | None = None
        self._sim0 = 0.0

    def now(self) -> float:
        """Current simulated time (wall-clock seconds at start, then accelerated by ``speed``)."""
        if self._real0 is None:
            return time.time()
        return self._sim0 + (time.monotonic() - self._real0) * self.speed

    async def items(self) -> AsyncIterator[SourceItem]:
        """Yield the fleet's items as simulated time passes; runs until cancelled."""
        self._real0 = time.monotonic()
        self._sim0 = time.time()
        while True:
            now = self.now()
            for item in self.fleet.step(now):
                yield item
            nxt = self.fleet.next_time()
            wait = MAX_SLEEP if nxt is None else (nxt - self.now()) / self.speed
            await asyncio.sleep(min(max(wait, 0.0), MAX_SLEEP))
