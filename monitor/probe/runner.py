"""Keepalive prober: the asyncio loop around ``monitor.probe.prober`` and its hook into the daemon (I/O shell).

``ProberRunner`` observes tunnels, asks the pure ``Prober`` which probes are due, sends them with
``monitor.probe.sender.ProbeSender`` and feeds the results back; ``ProbedCorrelator`` merges each
tunnel's ``probe`` field into its public JSON; ``ProberService`` starts and stops the loop with the app.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any

from monitor.probe.prober import Probe, Prober
from monitor.probe.sender import ProbeSender, local_addresses
from monitor.probe.targets import IPAddress, ProberConfig

log = logging.getLogger(__name__)

FULL_SCAN_EVERY = 10  # rescans between full re-reads of every tunnel (selector-only targets)

TunnelLookup = Callable[[str], Mapping[str, Any] | None]


class ProberRunner:
    """The prober's loop: observe tunnels, send due probes, feed results back. Started by the daemon.

    Args:
        prober: the pure core.
        tunnel_ids: returns every tunnel id (called every ``rescan`` seconds to find matching tunnels).
        tunnel_json: returns one tunnel's public JSON by id (called each tick for tracked tunnels).
        sender: sends probes (tests pass a fake).
        tick: seconds between decisions.
    """

    def __init__(
        self,
        prober: Prober,
        tunnel_ids: Callable[[], Iterable[str]],
        tunnel_json: TunnelLookup,
        *,
        sender: ProbeSender | None = None,
        tick: float = 1.0,
        rescan: float = 15.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.prober = prober
        self.tunnel_ids = tunnel_ids
        self.tunnel_json = tunnel_json
        self.sender = sender or ProbeSender(clock)
        self.tick = tick
        self.rescan = rescan
        self.clock = clock
        self._last_scan: float | None = None
        self._scans = 0
        self._seen: set[str] = set()
        self._addrs: dict[str, list[IPAddress]] = {}
        self._inflight: set[asyncio.Task[None]] = set()

    def _candidates(self, now: float) -> Iterable[str]:
        """Tunnel ids to (re)observe now: the tracked ones, plus unseen ids at each rescan.

        reqid and netns are part of a tunnel's identity, so an id is matched against reqid targets once.
        Only target-only entries depend on selectors, which may change: every ``FULL_SCAN_EVERY`` rescans
        all ids are looked at again. This keeps a 100k-tunnel view from being re-read every rescan.
        """
        by_id = [s.tunnel for s in self.prober.config.targets if s.tunnel is not None]
        if len(by_id) == len(self.prober.config.targets):
            return set(by_id)
        if self._last_scan is not None and now - self._last_scan < self.rescan:
            return self.prober.tracked()
        self._last_scan = now
        self._addrs.clear()
        self._scans += 1
        selector_only = any(s.tunnel is None and s.reqid is None for s in self.prober.config.targets)
        if selector_only and self._scans % FULL_SCAN_EVERY == 0:
            self._seen.clear()
        ids = list(self.tunnel_ids())
        fresh = [t for t in ids if t not in self._seen]
        self._seen = set(ids)
        return {*fresh, *self.prober.tracked()}

    def step(self) -> list[Probe]:
        """One decision round: observe, then start sending whatever is due. Returns the probes started."""
        now = self.clock()
        namespaces: set[str] = set()  # of the tracked tunnels (every tracked one is a candidate)
        for tid in self._candidates(now):
            tunnel = self.tunnel_json(tid)
            if tunnel is None:
                self.prober.forget(tid)
            elif self.prober.observe(tunnel, now):
                namespaces.add(str(tunnel.get("netns", "")))
        addrs: dict[str, list[IPAddress]] = {}
        if any(s.source is None for s in self.prober.config.targets):  # a source must be picked
            for ns in namespaces:
                if ns not in self._addrs:
                    try:
                        self._addrs[ns] = local_addresses(ns)
                    except OSError:
                        self._addrs[ns] = []
                addrs[ns] = self._addrs[ns]
        probes = self.prober.due(now, addrs)
        for p in probes:
            task = asyncio.get_running_loop().create_task(self._one(p))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
        return probes

    async def _one(self, probe: Probe) -> None:
        try:
            kind, value = await self.sender.send(probe, self.prober.config.timeout)
        except Exception as exc:  # any sender failure must end the probe, or it stays in flight
            log.warning("probe %s -> %s failed: %s", probe.source, probe.target, exc)
            kind, value = "error", f"{type(exc).__name__}: {exc}"
        if kind == "answer":
            self.prober.on_answer(probe, float(value))
        elif kind == "lost":
            self.prober.on_lost(probe, float(value))
        else:
            self.prober.on_error(probe, str(value), self.clock())

    async def run(self) -> None:
        """Loop until cancelled."""
        try:
            while True:
                self.step()
                await asyncio.sleep(self.tick)
        finally:
            for t in list(self._inflight):
                t.cancel()


# ------------------------------------------------------------------------------------- daemon hook


class ProbedCorrelator:
    """The correlator as the hub and web see it, with the prober's results merged into each tunnel.

    Every attribute is the wrapped correlator's, except: ``tunnel_json``/``snapshot`` set the tunnel's
    ``probe`` field, and ``take_dirty`` also returns tunnels whose probe results changed (so websocket clients
    get an update). ``monitor.serve.web.create_app`` wraps the correlator in this when ``[prober] enabled = true``.
    """

    def __init__(self, inner: Any, prober: Prober) -> None:
        self._inner = inner
        self.prober = prober

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def tunnel_json(self, tunnel_id: str, now: float) -> dict[str, Any] | None:
        """The correlator's tunnel JSON with ``probe`` set."""
        t: dict[str, Any] | None = self._inner.tunnel_json(tunnel_id, now)
        return None if t is None else self.prober.annotate(t)

    def snapshot(self, now: float) -> list[dict[str, Any]]:
        """The correlator's snapshot with ``probe`` set on each tunnel."""
        return [self.prober.annotate(t) for t in self._inner.snapshot(now)]

    def take_dirty(self) -> set[str]:
        """Tunnels changed in the correlator or in their probe results."""
        dirty: set[str] = set(self._inner.take_dirty())
        return dirty | self.prober.take_changed()


def prober_from_settings(raw: Mapping[str, Any]) -> Prober | None:
    """A Prober for the ``[prober]`` table, or None when it is absent or disabled (raises ConfigError)."""
    cfg = ProberConfig.from_mapping(raw)
    return Prober(cfg) if cfg.enabled else None


class ProberService:
    """Runs a ``ProberRunner`` over a correlator for the lifetime of an aiohttp app (``cleanup_ctx``)."""

    def __init__(self, prober: Prober, correlator: Any, clock: Callable[[], float] = time.time) -> None:
        self.runner = ProberRunner(
            prober,
            lambda: list(correlator.tunnel_ids()),
            lambda tid: correlator.tunnel_json(tid, clock()),
        )

    async def cleanup_ctx(self, _app: object) -> AsyncIterator[None]:
        """Start the prober loop; cancel it on shutdown."""
        task = asyncio.get_running_loop().create_task(self.runner.run(), name="monitor-prober")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
