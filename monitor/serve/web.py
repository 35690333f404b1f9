"""The aiohttp application: ``/ws``, REST, ``/healthz``, ``/metrics`` and the dashboard's files.

``create_app(settings, source=None)`` builds everything; the source, pipeline and correlator run as
background tasks started from ``app.cleanup_ctx`` (aiohttp's documented pattern), and shared state lives
under typed ``web.AppKey``s. The protocol is specified in ``docs/api.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from monitor.errors import ConfigError
from monitor.ike.advice import AdviceConfig
from monitor.ike.client import ViciClient
from monitor.ike.view import IkeCorrelator, IkeService, disabled_status
from monitor.ike.whack import WhackClient
from monitor.probe.runner import ProbedCorrelator, ProberService, prober_from_settings
from monitor.serve.config import Settings
from monitor.serve.daemon import Daemon
from monitor.serve.eventlog import EventLog
from monitor.serve.handlers import (
    CORRELATOR,
    DAEMON,
    HUB,
    IKE_STATUS,
    INSTANCE,
    SETTINGS,
    SOCKETS,
    BadParam,
    error,
    healthz_handler,
    host_allowed,
    ike_handler,
    metrics_handler,
    netns_handler,
    netns_list_handler,
    tunnel_handler,
    tunnels_handler,
)
from monitor.serve.history import HistoryService
from monitor.serve.history_api import HISTORY, events_handler, history_handler, tunnel_history_handler
from monitor.serve.hub import Hub
from monitor.serve.websocket import ws_handler
from monitor.sources.items import Source
from monitor.store.retention import Retention
from monitor.store.schema import default_state_dir

log = logging.getLogger(__name__)

#: ``Sec-WebSocket-Protocol`` entry that carries the token (the handshake selects ``monitor.v1``).
BEARER_PROTOCOL = "bearer."

STATIC_DIR = Path(__file__).parent / "static"
PUBLIC_PATHS = ("/", "/favicon.ico")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def build_source(settings: Settings) -> Source:
    """The source named by ``settings.source`` (imported lazily: only the one used is loaded)."""
    kind = settings.source_kind
    if kind == "simulate":
        from monitor.sources.simulate import SimulatedSource  # noqa: PLC0415 - lazy: only the source in use

        return SimulatedSource(tunnels=settings.tunnels, speed=settings.speed or 1.0, seed=settings.seed)
    if kind == "replay":
        path = settings.replay_path
        assert path is not None
        if not path.is_file():
            raise ConfigError(f"replay file {str(path)!r} does not exist or is not a file")
        from monitor.sources.replay import ReplaySource  # noqa: PLC0415 - lazy: only the source in use

        return ReplaySource(path, settings.speed)
    from monitor.sources.kernel import KernelSource  # noqa: PLC0415 - lazy: pyroute2 only when needed

    netns: Any = "all" if settings.all_netns else (settings.netns or ("default",))
    return KernelSource(netns=netns, interval=settings.interval, aevents=settings.aevents, rcvbuf=settings.rcvbuf)


def build_core(settings: Settings) -> tuple[Any, Any]:
    """A real ``(pipeline, correlator)`` pair configured from ``settings.health``."""
    from monitor.health.correlate import Correlator  # noqa: PLC0415 - keeps create_app importable for fakes
    from monitor.health.model import HealthConfig  # noqa: PLC0415
    from monitor.health.pipeline import Pipeline  # noqa: PLC0415

    try:
        hc = HealthConfig(**dict(settings.health))
    except TypeError as exc:
        raise ConfigError(f"bad [health] setting: {exc}") from None
    correlator = Correlator(hc)
    # MONITOR_REFRESH_FASTPATH=off: decode every dump record (the skip-unchanged path's A/B baseline)
    fastpath = os.environ.get("MONITOR_REFRESH_FASTPATH", "on").strip().lower() not in ("off", "0", "false", "no")
    return Pipeline(correlator, fastpath=fastpath), correlator


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """``Host`` allow-list (DNS rebinding), then the bearer-token check (header or ``?token=``) when a token
    is configured."""
    if not host_allowed(request):
        return error(421, "misdirected_request", "this monitor is not served under that Host name; add it to "
                     "allowed_hosts if it is yours")
    token = request.app[SETTINGS].token
    if token is not None and request.path not in PUBLIC_PATHS and not request.path.startswith("/static/"):
        given = ""
        header = request.headers.get("Authorization", "")
        if header[:7].lower() == "bearer ":
            given = header[7:].strip()
        elif "token" in request.query:
            given = request.query["token"]
        else:  # a browser websocket cannot set headers but can offer subprotocols: "bearer.<token>"
            for proto in request.headers.get("Sec-WebSocket-Protocol", "").split(","):
                if proto.strip().startswith(BEARER_PROTOCOL):
                    given = proto.strip()[len(BEARER_PROTOCOL):]
        if not given or not hmac.compare_digest(given.encode(), token.encode()):
            return error(401, "unauthorized", "missing or wrong bearer token", **{"WWW-Authenticate": "Bearer"})
    try:
        return await handler(request)
    except BadParam as exc:
        return error(400, "bad_request", str(exc))


async def index_handler(request: web.Request) -> web.StreamResponse:
    """The dashboard's ``index.html``."""
    return web.FileResponse(STATIC_DIR / "index.html")


# -- app -------------------------------------------------------------------------------------------

async def _background(app: web.Application) -> AsyncIterator[None]:
    daemon = app[DAEMON]
    await daemon.start()
    yield
    await _close_websockets(app)  # normally done by on_shutdown already; a no-op then
    await daemon.stop()
    if daemon.events_log is not None:
        daemon.events_log.close()


async def _close_websockets(app: web.Application) -> None:
    """on_shutdown: close every websocket with 1001, or shutdown waits for them (60 s)."""
    for ws in [*app[SOCKETS]]:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(code=1001, message=b"server shutting down"), 1.0)


def create_app(settings: Settings, source: Source | None = None, *, correlator: Any = None,
               pipeline: Any = None) -> web.Application:
    """Build the application.

    Args:
        settings: validated settings.
        source: the item source; default built from ``settings.source``.
        correlator, pipeline: inject a (fake) core for unit tests; default the real ones.

    Raises:
        ConfigError: a bad setting that only shows when building the parts (e.g. ``[health]``).
    """
    if correlator is None:
        pipeline, correlator = build_core(settings)
    elif pipeline is None:
        raise ConfigError("create_app: pass a pipeline together with an injected correlator")
    core = correlator
    prober = prober_from_settings(settings.prober)  # None unless [prober] enabled = true
    if prober is not None:
        correlator = ProbedCorrelator(core, prober)  # merges the tunnel JSON's `probe` field
    ike_kind, ike_path = settings.ike_source
    ike: IkeCorrelator | None = None
    if ike_kind != "off":  # outermost: the kernel tunnels it annotates already carry `probe`
        ike = IkeCorrelator(correlator, netns=settings.ike_netns,
                            advice=AdviceConfig.from_mapping(settings.ike))
        correlator = ike
    src = source if source is not None else build_source(settings)
    hub = Hub(correlator, ring_size=settings.ring_size, client_queue=settings.client_queue,
              client_max_updates=settings.client_max_updates, snapshot_chunk=settings.snapshot_chunk,
              stall_timeout=settings.stall_timeout, flush_tick=settings.flush_tick,
              hello={"counters_interval": settings.counters_interval})
    kind = getattr(src, "kind", None) or settings.source_kind
    daemon = Daemon(src, pipeline, correlator, hub, kind=str(kind),
                    counters_interval=settings.counters_interval)
    hub.clock = daemon.clock
    if settings.events_log:
        try:
            daemon.events_log = EventLog(settings.events_log)
        except OSError as exc:
            raise ConfigError(f"cannot open the events log {settings.events_log!r}: {exc.strerror}") from None
    history = None
    if settings.history_enabled:
        state_dir = Path(settings.state_dir) if settings.state_dir else default_state_dir()
        retention = Retention(max_age=settings.history_max_age, max_bytes=settings.history_max_bytes)
        history = HistoryService.attach(state_dir, core, hub, retention, wall=daemon.wall_clock)
        daemon.history = history
    app = web.Application(middlewares=[auth_middleware])
    if history is not None:
        app[HISTORY] = history
        app.cleanup_ctx.append(history.cleanup_ctx)
    app[SETTINGS] = settings
    app[HUB] = hub
    app[DAEMON] = daemon
    app[CORRELATOR] = correlator
    sockets: set[web.WebSocketResponse] = set()
    app[SOCKETS] = sockets
    app[INSTANCE] = hub.hello["instance"]
    app.cleanup_ctx.append(_background)
    app.on_shutdown.append(_close_websockets)  # before the runner waits for handlers to finish
    if prober is not None:
        app.cleanup_ctx.append(ProberService(prober, core, daemon.clock).cleanup_ctx)
    if ike is not None:
        view = ike
        view.core_clock = daemon.clock
        view.publish = lambda ids: hub.publish_tunnels_soon(ids, daemon.clock())
        app[IKE_STATUS] = (view.status_json, view.detail_json)
        service = IkeService(view, ike_path, ready=daemon.opened, failed=lambda: daemon.state == "failed",
                             client=WhackClient if ike_kind == "whack" else ViciClient)
        app.cleanup_ctx.append(service.cleanup_ctx)
    else:
        why = "off (--no-vici / vici = off)" if settings.vici == "off" else \
            f"off for the {settings.source_kind} source (set vici to a socket path to use one)"
        app[IKE_STATUS] = (lambda: disabled_status(why), lambda: {"status": disabled_status(why), "sas": [],
                                                                  "conns": [], "errors": [], "hints": []})
    app.router.add_get("/ws", ws_handler)
    app.router.add_get("/api/v1/tunnels", tunnels_handler)
    app.router.add_get("/api/v1/tunnels/{id}", tunnel_handler)
    app.router.add_get("/api/v1/tunnels/{id}/history", tunnel_history_handler)
    app.router.add_get("/api/v1/history", history_handler)
    app.router.add_get("/api/v1/events", events_handler)
    app.router.add_get("/api/v1/netns", netns_list_handler)
    app.router.add_get("/api/v1/netns/{name}", netns_handler)
    app.router.add_get("/api/v1/ike", ike_handler)
    app.router.add_get("/healthz", healthz_handler)
    app.router.add_get("/metrics", metrics_handler)
    if (STATIC_DIR / "index.html").is_file():
        app.router.add_get("/", index_handler)
        app.router.add_static("/static/", STATIC_DIR)
    return app
