"""The daemon's cyclic-GC policy around initial loads (``LoadGc``): GC held off while a load is in flight,
the loaded heap frozen out of later full collections.
"""

from __future__ import annotations

import gc
import logging

__all__ = ["LoadGc"]

log = logging.getLogger(__name__)

# Cyclic GC and a big long-lived heap (measured by ``python -m bench.refresh_bench``, 200k SAs / 100k
# tunnels, see bench/RESULTS.md): the correlator's state is ~900k GC-tracked objects. While it is being
# loaded the heap grows by far more than 25 % between full collections, so CPython runs a full
# (generation 2) collection every time it has grown by a quarter: about five passes over a growing
# heap, 0.17 s each at full size, 27-34 % of the first load's CPU (and each one a loop stall). None of
# that finds garbage: the core makes no reference cycles while loading or rekeying (dropped tunnels
# have theirs broken, ``Engine._drop_tunnel``). So the daemon holds automatic GC off while an initial
# load is in flight and, when no load is left, moves the loaded state into the permanent generation
# (``gc.freeze()``) so later full collections never walk it, then turns GC back on. Cost: cyclic garbage
# made by the rest of the process *during* a load window (seconds, once per netns appearance) is frozen
# with it and never collected; a full collection just before the window keeps that to the window.


class LoadGc:
    """The daemon's cyclic-GC policy around initial loads (see the comment above for the measurements).

    Call ``update(core, now)`` after every item fed (``now``: a monotonic clock). While
    ``core.loading`` is true, automatic GC is off (after one full collection of what is not frozen);
    when it turns false, the heap is frozen and GC turned back on. A load that stays in flight longer
    than ``max_hold`` seconds (a dump that never ended) gets GC back without freezing.
    ``release()`` (daemon stop) turns GC back on and unfreezes, leaving the process as it found it.
    Nothing is done if GC was already disabled by someone else.
    """

    def __init__(self, max_hold: float = 60.0) -> None:
        self.max_hold = max_hold
        self.holding = False  # we turned GC off
        self.gave_up = False  # a load outlived max_hold: leave GC on until no load is in flight
        self.since = 0.0
        self.loads = 0  # load windows completed (frozen)
        self.froze = False

    def update(self, core: object, now: float) -> None:
        """Apply the policy after one item: ``core.loading`` (False if the core has no such attribute)."""
        loading = bool(getattr(core, "loading", False))
        if self.holding:
            if not loading:
                gc.freeze()
                gc.enable()
                self.holding = False
                self.froze = True
                self.loads += 1
            elif now - self.since > self.max_hold:
                gc.enable()
                self.holding = False
                self.gave_up = True
                log.warning("an initial load has been in flight for over %.0f s: cyclic GC back on", self.max_hold)
        elif loading:
            if not self.gave_up and gc.isenabled():
                gc.collect()  # only what is not frozen: garbage from before the window is not kept
                gc.disable()
                self.holding = True
                self.since = now
        else:
            self.gave_up = False

    def release(self) -> None:
        """Turn GC back on if we turned it off, and unfreeze what we froze."""
        if self.holding:
            gc.enable()
            self.holding = False
        if self.froze:
            gc.unfreeze()
            self.froze = False
