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
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
from aiohttp import WSMsgType, web

from monitor.errors import ConfigError
from monitor.probe.runner import ProbedCorrelator, ProberService, prober_from_settings
from monitor.serve.config import Settings
from monitor.serve.daemon import Daemon
from monitor.serve.hub import SCHEMA, Filters, Hub, TunnelView, dumps
from monitor.serve.metrics import MonitorSample, scrape
from monitor.sources.items import Source

log = logging.getLogger(__name__)

SETTINGS = web.AppKey("settings", Settings)
HUB = web.AppKey("hub", Hub)
DAEMON = web.AppKey("daemon", Daemon)
CORRELATOR = web.AppKey("correlator", TunnelView)
SOCKETS: web.AppKey[set[web.WebSocketResponse]] = web.AppKey("websockets")
INSTANCE = web.AppKey("instance", str)

CLOSE_STALLED = 4008
MAX_DETAIL_IDS = 1000
STATIC_DIR = Path(__file__).parent / "static"
PUBLIC_PATHS = ("/", "/favicon.ico")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error(status: int, code: str, message: str, **headers: str) -> web.Response:
    """A JSON error response (``{"schema": 1, "error": {...}}``)."""
    body = dumps({"schema": SCHEMA, "error": {"code": code, "message": message}})
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=dumps(obj), content_type="application/json")


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
    return KernelSource(netns=netns, interval=settings.interval, aevents=settings.aevents)


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
    return Pipeline(correlator), correlator


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bearer-token check (header or ``?token=``) when a token is configured."""
    token = request.app[SETTINGS].token
    if token is not None and request.path not in PUBLIC_PATHS and not request.path.startswith("/static/"):
        given = ""
        header = request.headers.get("Authorization", "")
        if header[:7].lower() == "bearer ":
            given = header[7:].strip()
        elif "token" in request.query:
            given = request.query["token"]
        if not given or not hmac.compare_digest(given.encode(), token.encode()):
            return error(401, "unauthorized", "missing or wrong bearer token", **{"WWW-Authenticate": "Bearer"})
    try:
        return await handler(request)
    except BadParam as exc:
        return error(400, "bad_request", str(exc))


def origin_allowed(request: web.Request) -> bool:
    """No Origin, a same-origin Origin, or one listed in ``allowed_origins``."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    if origin.rstrip("/") in request.app[SETTINGS].allowed_origins:
        return True
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and bool(parts.netloc) and parts.netloc == request.host


class BadParam(Exception):
    """A bad query parameter; the middleware turns it into a 400 JSON error."""


def _filters(request: web.Request) -> Filters:
    try:
        return Filters.from_query(request.query)
    except ValueError as exc:
        raise BadParam(str(exc)) from None


def _int_param(request: web.Request, name: str, default: int | None, lo: int = 0) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        v = int(raw)
    except ValueError:
        v = lo - 1
    if v < lo:
        raise BadParam(f"{name} must be an integer >= {lo}, got {raw!r}")
    return v


# -- websocket -------------------------------------------------------------------------------------

async def ws_handler(request: web.Request) -> web.StreamResponse:
    """``GET /ws``: see docs/api.md."""
    if not origin_allowed(request):
        return error(403, "forbidden", f"origin {request.headers.get('Origin')!r} is not allowed")
    filters = _filters(request)
    since = _int_param(request, "since", None)
    snap_raw = request.query.get("snapshot")
    snapshot = None if snap_raw is None else snap_raw not in ("0", "false", "no")
    settings, hub = request.app[SETTINGS], request.app[HUB]
    ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=64 * 1024, compress=False,
                               timeout=settings.close_grace)
    await ws.prepare(request)
    transport = request.transport
    request.app[SOCKETS].add(ws)
    client = hub.attach(filters)

    async def send(data: bytes) -> None:
        await ws.send_frame(data, WSMsgType.TEXT)

    async def send_many(datas: list[bytes]) -> None:
        # Several text frames in ONE transport write (bench/RESULTS.md, fan-out profile: one write per
        # frame was half the server's time). Uncompressed server frames are just header + payload.
        if len(datas) == 1 or transport is None:
            for data in datas:
                await send(data)
            return
        if ws.closed or transport.is_closing():
            raise ConnectionResetError("websocket is closing")
        transport.write(b"".join([text_frame(d) for d in datas]))
        proto = request.protocol
        if proto is not None and proto.writing_paused:  # flow control, as aiohttp's own writer does
            await proto._drain_helper()

    def can_write() -> bool:
        proto = request.protocol
        return not (transport is None or ws.closed or transport.is_closing()
                    or (proto is not None and proto.writing_paused))

    def write_run(datas: list[bytes]) -> None:
        assert transport is not None  # can_write() said so
        transport.write(b"".join([text_frame(d) for d in datas]))

    client.can_write, client.write_run = can_write, write_run
    writer = asyncio.create_task(hub.serve(client, send, since=since, snapshot=snapshot, send_many=send_many))
    reader = asyncio.create_task(_read_ops(ws, hub, client))
    stalled = False

    def on_stall() -> None:
        nonlocal stalled
        stalled = True
        writer.cancel()

    client.on_stall = on_stall
    try:
        await asyncio.wait({writer, reader}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        hub.detach(client)
        request.app[SOCKETS].discard(ws)
        for t in (writer, reader):
            t.cancel()
        for t in (writer, reader):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if stalled:
            try:
                await asyncio.wait_for(ws.close(code=CLOSE_STALLED, message=b"client too slow", drain=False),
                                       settings.close_grace)
            except (TimeoutError, Exception):
                if transport is not None:
                    transport.abort()
        elif not ws.closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), settings.close_grace)
    return ws


def text_frame(payload: bytes) -> bytes:
    """An unmasked, uncompressed, final websocket text frame (RFC 6455 5.2), as a server sends it."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return b"\x81\x7e" + n.to_bytes(2, "big") + payload
    return b"\x81\x7f" + n.to_bytes(8, "big") + payload


async def _read_ops(ws: web.WebSocketResponse, hub: Hub, client: Any) -> None:
    async for msg in ws:
        if msg.type is not WSMsgType.TEXT:
            continue
        try:
            req = orjson.loads(msg.data)
            op = req.get("op") if isinstance(req, dict) else None
        except orjson.JSONDecodeError:
            op, req = None, None
        if op == "detail":
            ids = req.get("ids") if isinstance(req, dict) else None
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids) or len(ids) > MAX_DETAIL_IDS:
                reply = _ws_error(f"detail needs 'ids': a list of at most {MAX_DETAIL_IDS} tunnel ids")
            else:
                reply = hub.detail(ids)
        elif op == "ping":
            reply = dumps({"schema": SCHEMA, "type": "pong", "seq": hub.view.seq})
        else:
            reply = _ws_error("not a JSON object" if req is None else f"unknown op {op!r}")
        while not client.push_reply(reply):
            await asyncio.sleep(0.05)  # back-pressure on the client's own requests


def _ws_error(message: str) -> bytes:
    return dumps({"schema": SCHEMA, "type": "error", "code": "bad_request", "message": message})


# -- REST ------------------------------------------------------------------------------------------

async def tunnels_handler(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/tunnels``: streamed in chunks so that 100k tunnels do not block the loop."""
    filters = _filters(request)
    view, daemon = request.app[CORRELATOR], request.app[DAEMON]
    now = daemon.clock()
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    await resp.prepare(request)
    await resp.write(b'{"schema":%d,"seq":%d,"ts":%s,"tunnels":[' % (SCHEMA, view.seq, dumps(now)))
    buf: list[bytes] = []
    first = True
    for i, tid in enumerate(list(view.tunnel_ids())):
        if filters.tunnel and tid not in filters.tunnel:
            continue
        t = view.tunnel_json(tid, now)
        if t is not None and filters.tunnel_ok(tid, str(t.get("netns")), t.get("state")):
            buf.append(dumps(t))
        if len(buf) >= 500 or (i % 2000 == 1999 and buf):
            await resp.write((b"" if first else b",") + b",".join(buf))
            first, buf = False, []
        if i % 500 == 499:
            await asyncio.sleep(0)  # write() only waits when the transport is paused: yield regardless
    if buf:
        await resp.write((b"" if first else b",") + b",".join(buf))
    await resp.write(b"]}")
    await resp.write_eof()
    return resp


async def tunnel_handler(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/tunnels/{id}``."""
    tid = request.match_info["id"]
    view, daemon = request.app[CORRELATOR], request.app[DAEMON]
    now = daemon.clock()
    t = view.tunnel_json(tid, now)
    if t is None:
        return error(404, "not_found", f"no tunnel with id {tid!r}")
    return _json({"schema": SCHEMA, "seq": view.seq, "ts": now, "tunnel": t})


async def events_handler(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/events?since=SEQ&limit=N``."""
    filters = _filters(request)
    since = _int_param(request, "since", None)
    limit = min(_int_param(request, "limit", 1000, lo=1) or 1000, 10_000)
    hub = request.app[HUB]
    events, truncated = hub.events_since(since, filters)
    more = len(events) > limit
    oldest = hub.ring[0][0] if hub.ring else None
    return _json({"schema": SCHEMA, "seq": hub.view.seq, "oldest_seq": oldest, "truncated": truncated,
                  "more": more, "events": events[:limit]})


def health_doc(app: web.Application) -> tuple[int, dict[str, Any]]:
    """The ``/healthz`` document and its HTTP status."""
    settings, daemon, hub = app[SETTINGS], app[DAEMON], app[HUB]
    now = daemon.clock()
    stale = settings.effective_stale_after
    netns: dict[str, dict[str, float | None]] = {}
    degraded = daemon.state == "failed"
    uptime = time.time() - daemon.started
    check = daemon.kind == "kernel" and daemon.alive  # dump ages only mean something for a live kernel
    for ns, d in daemon.dump_stats().items():
        end, dur = d.get("last_dump"), d.get("last_dump_duration")
        age = None if end is None else max(0.0, now - end)
        netns[ns] = {"last_dump_age": age, "last_dump_duration": dur}
        if check and ((age is None and uptime > stale) or (age is not None and age > stale)):
            degraded = True
    if check and not netns and uptime > stale:
        degraded = True
    doc = {
        "schema": SCHEMA,
        "status": "degraded" if degraded else "ok",
        "seq": hub.view.seq,
        "instance": app[INSTANCE],
        "uptime": uptime,
        "source": {"kind": daemon.kind, "state": daemon.state, "alive": daemon.alive, "error": daemon.error},
        "netns": netns,
        "event_loop_lag": daemon.lag,
        "clients": len(hub.clients),
    }
    return (503 if degraded else 200), doc


async def healthz_handler(request: web.Request) -> web.StreamResponse:
    """``GET /healthz``: 200 ok, 503 degraded."""
    status, doc = health_doc(request.app)
    return _json(doc, status)


async def metrics_handler(request: web.Request) -> web.StreamResponse:
    """``GET /metrics``: Prometheus text format."""
    daemon, hub = request.app[DAEMON], request.app[HUB]
    mon = MonitorSample(enobufs=dict(daemon.enobufs), resyncs=daemon.resyncs(), lag=daemon.lag,
                        dumps=daemon.dump_stats(), now=daemon.clock(), clients=len(hub.clients),
                        gaps=hub.gaps_total, dropped=hub.dropped_total, stalled=hub.stalled_total)
    body = await scrape(request.app[CORRELATOR], mon, request.app[SETTINGS].metrics_tunnels)
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


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
    src = source if source is not None else build_source(settings)
    hub = Hub(correlator, ring_size=settings.ring_size, client_queue=settings.client_queue,
              client_max_updates=settings.client_max_updates, snapshot_chunk=settings.snapshot_chunk,
              stall_timeout=settings.stall_timeout,
              hello={"counters_interval": settings.counters_interval})
    kind = getattr(src, "kind", None) or settings.source_kind
    daemon = Daemon(src, pipeline, correlator, hub, kind=str(kind),
                    counters_interval=settings.counters_interval)
    hub.clock = daemon.clock
    app = web.Application(middlewares=[auth_middleware])
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
    app.router.add_get("/ws", ws_handler)
    app.router.add_get("/api/v1/tunnels", tunnels_handler)
    app.router.add_get("/api/v1/tunnels/{id}", tunnel_handler)
    app.router.add_get("/api/v1/events", events_handler)
    app.router.add_get("/healthz", healthz_handler)
    app.router.add_get("/metrics", metrics_handler)
    if (STATIC_DIR / "index.html").is_file():
        app.router.add_get("/", index_handler)
        app.router.add_static("/static/", STATIC_DIR)
    return app
