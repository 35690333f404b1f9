"""Firing the correlator's deadlines when inputs outrun the clock (pure: no loop, no clock).

A live daemon arms one loop timer at ``next_deadline()``. A replay or a simulation feeds inputs faster than
its clock passes, so no loop timer would fire between them: :func:`run_due_timers` runs, before each input and
at the end, every deadline that an undisturbed loop would have run first, each at its own instant.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["TimedCore", "run_due_timers"]


class TimedCore(Protocol):
    """What :func:`run_due_timers` needs: a ``Correlator``, or a wrapper of one."""

    def next_deadline(self) -> float | None: ...
    def on_timer(self, now: float) -> None: ...


def run_due_timers(core: TimedCore, now: float) -> None:
    """Fire every deadline up to ``now``, each at its own time, in order: what a loop timer would have done
    had it run between the inputs. A replay or a simulation feeds inputs faster than its clock passes, so it
    calls this before each input and at its end (``monitor check`` and ``serve`` alike)."""
    deadline = core.next_deadline()
    while deadline is not None and deadline <= now:
        core.on_timer(deadline)
        nxt = core.next_deadline()
        if nxt is not None and nxt <= deadline:
            break
        deadline = nxt
