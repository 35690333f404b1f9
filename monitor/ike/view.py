"""The IKE view on the event loop, and its hook into the daemon (the edge; no I/O but the client's thread).

``IkeCorrelator`` is the correlator as the hub, REST and metrics see it when the IKE view is on (like
``monitor.probe.runner.ProbedCorrelator``): every kernel tunnel's JSON gets its ``ike`` block and mismatch
hints (``monitor.ike.join.annotate``), and every configured child with no kernel tunnel is a tunnel of its
own (``ike:<conn>:<child>``, ``down``). ``apply`` takes the client's updates (on the loop) and tells
``publish`` which tunnels changed, so websocket clients get the new JSON. ``IkeService`` runs the client
for the lifetime of the app. ``monitor.health`` never hears of any of this.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from monitor.ike.advice import AdviceConfig, conn_hints
from monitor.ike.client import VICI_ERRORS, Listing, ViciClient, ViciStatus, describe, find_socket, read_listing
from monitor.ike.join import IkeState, annotate, configured_tunnel, join_all, unjoined
from monitor.ike.records import Conn, ConnChild
from monitor.ike.rules import IkeError

#: When charon's connections change (first listing, reload), tunnels not yet joined are re-read for the join by
#: selectors, up to this many tunnels (~70 us each: 0.35 s of loop at most); otherwise, and above it, an update
#: re-reads only the tunnels already joined and those whose reqid charon lists. New tunnels join when first read.
FULL_SCAN_MAX = 5_000
#: An ``ike_down`` (IKE_SA went down) does not replace a more telling error younger than this.
KEEP_SPECIFIC = 10.0


def reqid_of(tid: str) -> int | None:
    """The reqid in a kernel tunnel id (``monitor.health.tunnel.tunnel_id``: ``<netns>:<reqid>:<lo>-<hi>...``)."""
    parts = tid.split(":", 2)
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None


class IkeCorrelator:
    """The correlator with charon's view merged in. Every attribute not defined here is the inner one's.

    Args:
        inner: the correlator (or another decorator of it).
        netns: only tunnels of this netns are joined (charon sees one netns); None: every tunnel.
        grace: seconds before a kernel/charon disagreement is a finding (``monitor.ike.join.findings``).
        advice: what the configuration hints assume of the peer (``[ike]``; ``monitor.ike.advice``).
    """

    def __init__(self, inner: Any, *, netns: str | None = "default", grace: float = 10.0,
                 clock: Callable[[], float] = time.time, advice: AdviceConfig | None = None) -> None:
        self._inner = inner
        self.advice = advice or AdviceConfig()
        self.netns = netns
        self.grace = grace
        self.clock = clock
        self.state = IkeState()
        self.errors: dict[str, IkeError] = {}
        self.status: dict[str, Any] = {"enabled": True, "connected": False, "socket": None,
                                       "error": "not connected yet", "since": clock(), "refreshed": None}
        #: The core's clock (create_app: the daemon's), for the inner tunnel JSON read on updates.
        self.core_clock: Callable[[], float] = time.monotonic
        #: Called with the ids of tunnels whose JSON changed (create_app: the hub's publish_tunnels_soon).
        self.publish: Callable[[list[str]], None] | None = None
        self._names: dict[str, tuple[str, str]] = {}  # kernel tunnel id -> (conn, child) it was joined to
        self._synth: dict[str, tuple[Conn, ConnChild]] = {}
        self._since: dict[str, float] = {}
        self._scanned: tuple[Conn, ...] = ()  # the connections of the last full re-read

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    # -- updates from the client ---------------------------------------------------------------

    def apply(self, item: object) -> None:
        """Take one update of the VICI client (on the loop) and publish the tunnels it changes."""
        if isinstance(item, ViciStatus):
            self.status.update(connected=item.connected, socket=item.socket, error=item.error, since=item.ts)
            if not item.connected:  # charon gone: the kernel-only view, until it is back
                self.state = IkeState(errors=dict(self.errors))
            self._changed()
        elif isinstance(item, Listing):
            self.status["refreshed"] = item.ts
            self.state = self._hinted(IkeState.of(item.sas, item.conns, item.ts, self.errors))
            self._changed()
        elif isinstance(item, IkeError):
            key = item.conn or ""
            old = self.errors.get(key)
            if item.code == "ike_down" and old is not None and item.ts - old.ts < KEEP_SPECIFIC:
                return
            self.errors[key] = item
            self.state = self._hinted(dataclasses.replace(self.state, errors=dict(self.errors)))  # indexes stay
            self._changed(only_conn=key)

    def _hinted(self, state: IkeState) -> IkeState:
        """``state`` with its configuration hints (they depend on the SAs and errors too)."""
        return dataclasses.replace(state, hints=conn_hints(state.conns, state.sas, state.errors, self.advice))

    def _changed(self, only_conn: str | None = None) -> None:
        """Re-read the tunnels an update concerns (all of one connection's for an error) and publish them."""
        before = set(self._synth)
        ids = list(self._inner.tunnel_ids())
        reqids = set(self.state.index.by_reqid)
        if only_conn is not None:
            touched = [t for t, names in self._names.items() if names[0] == only_conn]
        else:
            touched = [t for t in ids if t in self._names or reqid_of(t) in reqids]
        if only_conn is None and self.state.conns != self._scanned and len(ids) <= FULL_SCAN_MAX:
            touched = ids  # down tunnels join by selectors
            self._scanned = self.state.conns
        now, core_now = self.clock(), self.core_clock()
        for tid in touched:
            self._kernel_json(tid, core_now, now)
        self._refresh_synth(ids)
        if self.publish is not None:
            self.publish([*touched, *(before | set(self._synth))])

    # -- events --------------------------------------------------------------------------------

    def drain_events(self) -> list[Any]:
        """The inner correlator's new events; those of a tunnel the IKE view named carry ``detail.ike``
        (``{conn, child, last_error}``), so a ``tunnel_down`` says what charon saw (peer gone, auth failed ...)."""
        events: list[Any] = self._inner.drain_events()
        if not self._names:
            return events
        return [self._named(ev) for ev in events]

    def _named(self, ev: Any) -> Any:
        names = self._names.get(getattr(ev, "tunnel", None) or "")
        if names is None or not hasattr(ev, "_replace") or not isinstance(getattr(ev, "detail", None), dict):
            return ev
        err = self.errors.get(names[0])
        ike = {"conn": names[0], "child": names[1], "last_error": err.to_json() if err else None}
        return ev._replace(detail={**ev.detail, "ike": ike})

    # -- the view ------------------------------------------------------------------------------

    def _refresh_synth(self, ids: Iterable[str]) -> None:
        live = set(ids)
        for tid in [t for t in self._names if t not in live]:
            del self._names[tid]
        self._synth = unjoined(self.state, set(self._names.values()))
        now = self.clock()
        self._since = {tid: self._since.get(tid, now) for tid in self._synth}

    def _kernel_json(self, tid: str, now: float, wall: float) -> dict[str, Any] | None:
        t: dict[str, Any] | None = self._inner.tunnel_json(tid, now)
        if t is None:
            self._names.pop(tid, None)
            return None
        if self.netns is not None and t.get("netns") != self.netns:
            return t
        out = annotate(t, self.state, wall, self.grace)
        block = out.get("ike")
        if block:
            self._names[tid] = (block["conn"], block["child"])
        else:
            self._names.pop(tid, None)
        return out

    def tunnel_ids(self) -> list[str]:
        """The kernel's tunnels, then the configured ones that have none."""
        ids = list(self._inner.tunnel_ids())
        self._refresh_synth(ids)
        return [*ids, *sorted(self._synth)]

    def tunnel_json(self, tid: str, now: float) -> dict[str, Any] | None:
        """A kernel tunnel's JSON with its ``ike`` block, or a configured tunnel's."""
        if tid in self._synth:
            conn, child = self._synth[tid]
            return configured_tunnel(tid, conn, child, state=self.state, netns=self.netns or "default",
                                     since=self._since.get(tid, self.clock()), now=self.clock())
        return self._kernel_json(tid, now, self.clock())

    def snapshot(self, now: float) -> list[dict[str, Any]]:
        """Every tunnel's JSON."""
        return [t for t in (self.tunnel_json(tid, now) for tid in self.tunnel_ids()) if t is not None]

    def counters_row(self, tid: str) -> list[Any] | None:
        """The inner row; a configured tunnel's is all zeros and ``down``."""
        if tid in self._synth:
            return [tid, 0, 0, 0, 0, 0.0, 0.0, "down"]
        fn = getattr(self._inner, "counters_row", None)
        return None if fn is None else fn(tid)

    def status_json(self) -> dict[str, Any]:
        """The ``ike`` object of ``/healthz`` and ``/api/v1/ike``."""
        return {**self.status, "ike_sas": len(self.state.sas),
                "child_sas": sum(len(s.children) for s in self.state.sas), "conns": len(self.state.conns)}

    def detail_json(self) -> dict[str, Any]:
        """``/api/v1/ike``: the status, charon's SAs and connections as parsed, the last error per connection."""
        return {"status": self.status_json(), "sas": list(self.state.sas), "conns": list(self.state.conns),
                "errors": [{"conn": k or None, **e.to_json()} for k, e in sorted(self.errors.items())],
                "hints": [dict(h) for hs in self.state.hints.values() for h in hs]}


def join_once(tunnels: list[dict[str, Any]], path: str | None, *, timeout: float = 5.0, netns: str | None = "default",
              advice: AdviceConfig | None = None, clock: Callable[[], float] = time.time
              ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``monitor check``'s IKE view: one read of charon (``path``, or the standard sockets when None), the
    tunnels of ``netns`` (None: all) joined and the configured ones added; and the status (``connected``,
    ``socket``, ``error``). No socket found, or charon not answering: the tunnels unchanged, and the status
    says why."""
    found = find_socket(path)
    if found is None:
        return tunnels, {"connected": False, "socket": None, "error": "no VICI socket found (kernel-only view)"}
    try:
        listing = read_listing(found, timeout=timeout, clock=clock)
    except VICI_ERRORS as exc:
        return tunnels, {"connected": False, "socket": found, "error": describe(exc, found)}
    state = IkeState.of(listing.sas, listing.conns, listing.ts, {})
    state = dataclasses.replace(state, hints=conn_hints(state.conns, state.sas, {}, advice or AdviceConfig()))
    return join_all(tunnels, state, now=clock(), netns=netns), {"connected": True, "socket": found, "error": None}


def disabled_status(why: str) -> dict[str, Any]:
    """The status object when the IKE view is off."""
    return {"enabled": False, "connected": False, "socket": None, "error": why, "since": None, "refreshed": None,
            "ike_sas": 0, "child_sas": 0, "conns": 0}


class IkeService:
    """Runs a :class:`ViciClient` feeding an :class:`IkeCorrelator` for the lifetime of an aiohttp app.

    The client starts once ``ready`` is set (the kernel source has opened) unless ``failed()`` says the source
    failed to start: a start-up error stays the one line ``monitor serve`` prints.
    """

    def __init__(self, view: IkeCorrelator, path: str | None, *, ready: asyncio.Event | None = None,
                 failed: Callable[[], bool] = lambda: False, client: Callable[..., Any] = ViciClient,
                 **client_args: Any) -> None:
        self.view = view
        self.ready = ready
        self.failed = failed
        #: ``ViciClient`` (strongSwan) or ``monitor.ike.whack.WhackClient`` (libreswan): ``start(loop)``, ``stop()``
        self.client = client(path, view.apply, **client_args)

    async def _start(self) -> None:
        if self.ready is not None:
            await self.ready.wait()
        if not self.failed():
            self.client.start(asyncio.get_running_loop())

    async def cleanup_ctx(self, _app: object) -> AsyncIterator[None]:
        """Start the client thread; stop it on shutdown (off the loop: joining may take a moment)."""
        loop = asyncio.get_running_loop()
        task = loop.create_task(self._start(), name="monitor-vici-start")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        with contextlib.suppress(Exception):
            await loop.run_in_executor(None, self.client.stop)
