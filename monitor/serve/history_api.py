"""REST over the history store: ``/api/v1/tunnels/{id}/history``, ``/api/v1/history``, and the events the
in-memory ring no longer holds (``/api/v1/events?since=`` older than the ring, served from the store).

``from`` / ``to`` are Unix seconds or a duration back from now (``24h``, ``7d``); the default window is the
last 24 hours. Without a store (``--no-history``, or it failed) these answer 503 with the reason.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from monitor.errors import HistoryError
from monitor.serve.handlers import HUB, BadParam, error, int_param, json_response, query_filters
from monitor.serve.history import HistoryService
from monitor.serve.protocol import SCHEMA
from monitor.store import queries

__all__ = ["HISTORY", "events_handler", "history_handler", "tunnel_history_handler"]

HISTORY = web.AppKey("history", HistoryService)
DEFAULT_WINDOW = 86_400.0


async def _events_from(request: web.Request, since: int, limit: int, filters: Any) -> web.StreamResponse:
    """``/api/v1/events?from=WHEN[&since=SEQ]``: events at or after an instant, from the store (the ring without
    one), in ``seq`` order; page with ``since`` = the last ``seq`` returned while ``more`` is true."""
    hub = request.app[HUB]
    try:
        frm = queries.parse_when(request.query["from"], time.time())
    except ValueError as exc:
        raise BadParam(f"from is Unix seconds or a duration such as 1h: {exc}") from None
    svc = request.app.get(HISTORY)
    events: list[dict[str, Any]] = []
    if svc is not None and svc.history is not None:
        stored = await _run(svc, queries.events_from, frm, since, limit + 1)
        if not isinstance(stored, web.Response):
            events = stored
    last = events[-1]["seq"] if events else since
    # the newest events may not be written yet: the ring has them
    events += [d for s, d, _ in hub.ring if s > last and d.get("ts", 0) >= frm]
    more = len(events) > limit
    events = [e for e in events[:limit] if filters.event_ok(e)]
    return json_response({"schema": SCHEMA, "seq": hub.seq, "oldest_seq": events[0]["seq"] if events else None,
                          "truncated": False, "more": more, "events": events})


def window(request: web.Request) -> tuple[float, float]:
    """The ``[from, to)`` window of the query, in wall-clock seconds."""
    now = time.time()
    try:
        to = queries.parse_when(request.query["to"], now) if request.query.get("to") else now
        frm = queries.parse_when(request.query["from"], now) if request.query.get("from") else to - DEFAULT_WINDOW
    except ValueError as exc:
        raise BadParam(f"from/to are Unix seconds or a duration such as 24h or 7d: {exc}") from None
    if frm >= to:
        raise BadParam("from must be before to")
    return frm, to


def _service(request: web.Request) -> HistoryService | web.Response:
    svc = request.app.get(HISTORY)
    if svc is None:
        return error(503, "no_history", "history is off (--no-history, or not a kernel source without --state-dir)")
    if svc.history is None:
        return error(503, "no_history", f"history is unavailable: {svc.error}")
    return svc


async def _run(svc: HistoryService, fn: Any, *args: Any) -> Any:
    try:
        return await svc.query(fn, *args)
    except HistoryError as exc:
        return error(503, "no_history", str(exc))


async def tunnel_history_handler(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/tunnels/{id}/history?from=&to=``: intervals, flaps, time per state, down reasons, rates."""
    svc = _service(request)
    if isinstance(svc, web.Response):
        return svc
    frm, to = window(request)
    tid = request.match_info["id"]
    doc = await _run(svc, queries.tunnel_history, tid, frm, to)
    if isinstance(doc, web.Response):
        return doc
    if doc is None:
        return error(404, "not_found", f"no history of a tunnel with id {tid!r}")
    limit = 1000
    events = await _run(svc, queries.events_between, frm, to, limit, tid)
    if isinstance(events, web.Response):
        return events
    return json_response({"schema": SCHEMA, **doc, "events": events})


async def history_handler(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/history?from=&to=``: every tunnel's uptime share, flaps, downtime, longest outage."""
    svc = _service(request)
    if isinstance(svc, web.Response):
        return svc
    frm, to = window(request)
    rows = await _run(svc, queries.history_summary, frm, to)
    if isinstance(rows, web.Response):
        return rows
    return json_response({"schema": SCHEMA, "from": frm, "to": to, "tunnels": rows})


async def events_handler(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/events?since=SEQ&limit=N``: from the ring, and from the store what the ring no longer has
    (``truncated`` only when neither has the events right after ``since``)."""
    filters = query_filters(request)
    since = int_param(request, "since", None)
    limit = min(int_param(request, "limit", 1000, lo=1) or 1000, 10_000)
    hub = request.app[HUB]
    if request.query.get("from"):
        return await _events_from(request, since or 0, limit, filters)
    events, truncated = hub.events_since(since, filters)
    oldest = hub.ring[0][0] if hub.ring else None
    svc = request.app.get(HISTORY)
    if truncated and since is not None and svc is not None and svc.history is not None:
        stored = await _run(svc, queries.events_since, since, limit + 1)
        if not isinstance(stored, web.Response):
            truncated = not stored or stored[0]["seq"] != since + 1
            older = [e for e in stored if (oldest is None or e["seq"] < oldest) and filters.event_ok(e)]
            events = older + events
            if older:
                oldest = older[0]["seq"]
    more = len(events) > limit
    return json_response({"schema": SCHEMA, "seq": hub.seq, "oldest_seq": oldest, "truncated": truncated,
                          "more": more, "events": events[:limit]})
