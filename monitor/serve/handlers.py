"""REST, ``/healthz`` and ``/metrics`` handlers, and what every handler shares (I/O shell).

Shared state lives under typed ``web.AppKey``s set by ``monitor.serve.web.create_app``; bad query
parameters raise :class:`BadParam`, which the auth middleware turns into a 400 JSON error. The
websocket handler is in :mod:`monitor.serve.websocket`. The protocol is specified in ``docs/api.md``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from monitor.serve.config import Settings
from monitor.serve.daemon import Daemon
from monitor.serve.hub import Hub, netns_docs
from monitor.serve.metrics import MonitorSample, scrape_chunks
from monitor.serve.protocol import SCHEMA, Filters, TunnelView, dumps

SETTINGS = web.AppKey("settings", Settings)
HUB = web.AppKey("hub", Hub)
DAEMON = web.AppKey("daemon", Daemon)
CORRELATOR = web.AppKey("correlator", TunnelView)
SOCKETS: web.AppKey[set[web.WebSocketResponse]] = web.AppKey("websockets")
INSTANCE = web.AppKey("instance", str)
#: ``(status, detail)`` of the IKE view (``monitor.ike.view.IkeCorrelator.status_json``/``detail_json``).
IKE_STATUS: web.AppKey[tuple[Callable[[], dict[str, Any]], Callable[[], dict[str, Any]]]] = web.AppKey("ike")


def error(status: int, code: str, message: str, **headers: str) -> web.Response:
    """A JSON error response (``{"schema": 1, "error": {...}}``)."""
    body = dumps({"schema": SCHEMA, "error": {"code": code, "message": message}})
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


def json_response(obj: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=dumps(obj), content_type="application/json")


LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "ip6-localhost"})
WILDCARDS = frozenset({"", "0.0.0.0", "::"})  # noqa: S104 - bind addresses compared, nothing binds here


def _host_name(host: str) -> str:
    """The name in a ``Host`` header: ``[::1]:8080`` -> ``::1``, ``example.net:80`` -> ``example.net``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host[1:]
    return host.split(":", 1)[0] if host.count(":") == 1 else host


def host_allowed(request: web.Request) -> bool:
    """Is the ``Host`` header a name this monitor is served under? (DNS rebinding: a web page whose name
    was re-pointed at 127.0.0.1 sends its own name as ``Host``.)

    Allowed: loopback names, the configured ``host``, and ``allowed_hosts``; when ``host`` is a wildcard
    and ``allowed_hosts`` is empty, any name (the operator did not say which; a token is required then).
    """
    settings = request.app[SETTINGS]
    name = _host_name(request.host or "")
    allowed = {h.lower().strip("[]") for h in settings.allowed_hosts}
    configured = settings.host.lower().strip("[]")
    if configured in WILDCARDS and not allowed:
        return True
    return name in LOOPBACK_NAMES or name == configured or name in allowed or name.startswith("127.")


def origin_allowed(request: web.Request) -> bool:
    """No Origin, a same-origin Origin (same scheme, host and port), or one listed in ``allowed_origins``."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    if origin.rstrip("/") in request.app[SETTINGS].allowed_origins:
        return True
    parts = urlsplit(origin)
    return parts.scheme == request.scheme and bool(parts.netloc) and parts.netloc == request.host


class BadParam(Exception):
    """A bad query parameter; the middleware turns it into a 400 JSON error."""


def query_filters(request: web.Request) -> Filters:
    try:
        return Filters.from_query(request.query)
    except ValueError as exc:
        raise BadParam(str(exc)) from None


def int_param(request: web.Request, name: str, default: int | None, lo: int = 0) -> int | None:
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

# -- REST ------------------------------------------------------------------------------------------

async def tunnels_handler(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/tunnels``: streamed in chunks so that 100k tunnels do not block the loop."""
    filters = query_filters(request)
    view, daemon = request.app[CORRELATOR], request.app[DAEMON]
    now = daemon.clock()
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    await resp.prepare(request)
    seq = request.app[HUB].seq
    await resp.write(b'{"schema":%d,"seq":%d,"ts":%s,"tunnels":[' % (SCHEMA, seq, dumps(daemon.wall(now))))
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
    return json_response({"schema": SCHEMA, "seq": request.app[HUB].seq, "ts": daemon.wall(now), "tunnel": t})


async def netns_list_handler(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/netns``: every namespace's hints (``XfrmInNoPols`` ..., uncovered ranges, overlaps),
    ``/proc/net/xfrm_stat`` counters and counts."""
    view, daemon = request.app[CORRELATOR], request.app[DAEMON]
    now = daemon.clock()
    return json_response({"schema": SCHEMA, "seq": request.app[HUB].seq, "ts": daemon.wall(now),
                          "netns": netns_docs(view, now)})


async def netns_handler(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/netns/{name}``."""
    name = request.match_info["name"]
    view, daemon = request.app[CORRELATOR], request.app[DAEMON]
    now = daemon.clock()
    docs = netns_docs(view, now, name)
    if not docs:
        return error(404, "not_found", f"no namespace {name!r} is watched")
    return json_response({"schema": SCHEMA, "seq": request.app[HUB].seq, "ts": daemon.wall(now), "netns": docs[0]})


def health_doc(app: web.Application) -> tuple[int, dict[str, Any]]:
    """The ``/healthz`` document and its HTTP status."""
    settings, daemon, hub = app[SETTINGS], app[DAEMON], app[HUB]
    now = daemon.clock()
    stale = settings.effective_stale_after
    netns: dict[str, dict[str, float | None]] = {}
    degraded = daemon.state == "failed"
    uptime = daemon.uptime()
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
        "seq": hub.seq,
        "instance": app[INSTANCE],
        "uptime": uptime,
        "source": {"kind": daemon.kind, "state": daemon.state, "alive": daemon.alive, "error": daemon.error},
        "netns": netns,
        "event_loop_lag": daemon.lag,
        "clients": len(hub.clients),
        "history": daemon.history.status() if daemon.history is not None else {"enabled": False},
    }
    if IKE_STATUS in app:
        doc["ike"] = app[IKE_STATUS][0]()  # informational: the IKE view is optional, never degrades
    return (503 if degraded else 200), doc


async def ike_handler(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/ike``: the IKE view's status, charon's SAs and connections, the last error per connection."""
    return json_response({"schema": SCHEMA, **request.app[IKE_STATUS][1]()})


async def healthz_handler(request: web.Request) -> web.StreamResponse:
    """``GET /healthz``: 200 ok, 503 degraded."""
    status, doc = health_doc(request.app)
    return json_response(doc, status)


async def metrics_handler(request: web.Request) -> web.StreamResponse:
    """``GET /metrics``: Prometheus text format."""
    daemon, hub = request.app[DAEMON], request.app[HUB]
    now = daemon.clock()
    xfrm_stat = {d["netns"]: d["xfrm_stat"] for d in netns_docs(request.app[CORRELATOR], now) if d.get("xfrm_stat")}
    mon = MonitorSample(enobufs=dict(daemon.enobufs), resyncs=daemon.resyncs(), lag=daemon.lag,
                        dumps=daemon.dump_stats(), now=now, clients=len(hub.clients),
                        gaps=hub.gaps_total, dropped=hub.dropped_total, stalled=hub.stalled_total,
                        xfrm_stat=xfrm_stat, history=history_sample(daemon.history), heap=_heap_sample(daemon))
    headers = {"Content-Type": "text/plain; version=0.0.4; charset=utf-8", "Vary": "Accept-Encoding"}
    gz = accepts_gzip(request.headers.get("Accept-Encoding", ""))
    if gz:  # Prometheus asks for gzip: the text shrinks ~14x (bench/RESULTS.md); compressed chunk by chunk
        headers["Content-Encoding"] = "gzip"
    # Streamed (chunked transfer encoding): neither the text of 100k tunnels nor its gzip is ever whole
    chunks = scrape_chunks(request.app[CORRELATOR], mon, request.app[SETTINGS].metrics_tunnels, gzip=gz)
    first = await anext(chunks)  # gathered before the status line: a failing gather is still a 500
    resp = web.StreamResponse(headers=headers)
    await resp.prepare(request)
    await resp.write(first)
    async for piece in chunks:
        await resp.write(piece)
    await resp.write_eof()
    return resp


def history_sample(history: Any) -> dict[str, float]:
    """The history store's metrics (empty when history is off)."""
    if history is None:
        return {}
    st = history.status()
    return {"ipsec_monitor_history_up": 1.0 if st.get("ok") else 0.0,
            "ipsec_monitor_history_events_written": float(st.get("written_events", 0)),
            "ipsec_monitor_history_write_errors": float(st.get("write_errors", 0)),
            "ipsec_monitor_history_dropped_events": float(st.get("dropped_events", 0))}


def _heap_sample(daemon: Daemon) -> dict[str, float]:
    """The heap trimmer's metrics (empty where the C library has no ``malloc_trim``)."""
    heap = daemon.heap
    if not heap.available:
        return {}
    return {"ipsec_monitor_heap_trims": float(heap.trims), "ipsec_monitor_heap_released_bytes": float(heap.released)}


def accepts_gzip(header: str) -> bool:
    """Does an ``Accept-Encoding`` header accept gzip (RFC 9110 12.5.3: ``gzip;q=0`` refuses it)?"""
    for part in header.lower().split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip() in ("gzip", "x-gzip", "*"):
            q = params.strip()
            return not (q.startswith("q=") and q[2:].strip() in ("0", "0.", "0.0", "0.00", "0.000"))
    return False
