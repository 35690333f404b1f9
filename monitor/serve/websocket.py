"""``GET /ws``: one websocket client's transport (I/O shell; docs/api.md "WebSocket").

The handler attaches a client to the hub, runs its session (:mod:`monitor.serve.session`) as the writer
task and reads the client's own requests (``detail``, ``ping``) in a reader task; a stalled client is
closed with 4008. Runs of ready messages go out in one transport write (:func:`text_frame`).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson
from aiohttp import WSMsgType, web

from monitor.serve import session
from monitor.serve.handlers import HUB, SETTINGS, SOCKETS, error, int_param, origin_allowed, query_filters
from monitor.serve.hub import Hub
from monitor.serve.protocol import SCHEMA, dumps

CLOSE_STALLED = 4008
SUBPROTOCOL = "monitor.v1"
MAX_DETAIL_IDS = 1000


async def ws_handler(request: web.Request) -> web.StreamResponse:
    """``GET /ws``: see docs/api.md."""
    if not origin_allowed(request):
        return error(403, "forbidden", f"origin {request.headers.get('Origin')!r} is not allowed")
    filters = query_filters(request)
    since = int_param(request, "since", None)
    snap_raw = request.query.get("snapshot")
    snapshot = None if snap_raw is None else snap_raw not in ("0", "false", "no")
    settings, hub = request.app[SETTINGS], request.app[HUB]
    # "monitor.v1" is selected when a client offers it (a browser passing its token as the subprotocol
    # "bearer.<token>" must offer it too: the handshake has to select one of the offered protocols)
    ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=64 * 1024, compress=False,
                               timeout=settings.close_grace, protocols=(SUBPROTOCOL,))
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

    proto = request.protocol  # fixed for the connection; read once (the hub asks can_write per broadcast)

    def can_write() -> bool:
        return not (transport is None or ws.closed or transport.is_closing()
                    or (proto is not None and proto.writing_paused))

    def write_run(datas: list[bytes]) -> None:
        assert transport is not None  # can_write() said so
        transport.write(b"".join([text_frame(d) for d in datas]))

    client.can_write, client.write_run = can_write, write_run
    if transport is not None:
        client.write_raw = transport.write  # the hub's direct broadcast: frames built once for all clients
        hub.frame = text_frame
    writer = asyncio.create_task(session.serve(hub, client, send, since=since, snapshot=snapshot, send_many=send_many))
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
                reply = session.detail(hub, ids)
        elif op == "ping":
            reply = dumps({"schema": SCHEMA, "type": "pong", "seq": hub.seq})
        else:
            reply = _ws_error("not a JSON object" if req is None else f"unknown op {op!r}")
        while not client.push_reply(reply):
            await asyncio.sleep(0.05)  # back-pressure on the client's own requests


def _ws_error(message: str) -> bytes:
    return dumps({"schema": SCHEMA, "type": "error", "code": "bad_request", "message": message})
