"""``monitor serve`` end to end: a real aiohttp server on 127.0.0.1 (ephemeral port), the real pipeline and
correlator fed by the real simulator, and real websocket/HTTP clients. Every message is validated against
docs/schema.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from monitor.serve.config import Settings
from monitor.serve.handlers import DAEMON, HUB
from monitor.serve.web import create_app
from tests.test_web_fakes import validate

Start = Callable[..., Awaitable[tuple[TestServer, web.Application]]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    """Start ``create_app(Settings(**kw))`` on 127.0.0.1:0; everything is shut down after the test."""
    servers: list[TestServer] = []

    async def _start(source: Any = None, **kw: Any) -> tuple[TestServer, web.Application]:
        kw.setdefault("source", "simulate")
        kw.setdefault("port", 0)
        app = create_app(Settings(**kw), source=source)
        server = TestServer(app, host="127.0.0.1", port=0)
        await server.start_server()
        servers.append(server)
        return server, app

    yield _start
    for s in servers:
        await s.close()


async def until(cond: Callable[[], Any], what: str, timeout: float = 15.0) -> Any:
    """Poll ``cond`` until truthy; fail with ``what`` after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        v = cond()
        if v:
            return v
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


async def recv_json(ws: aiohttp.ClientWebSocketResponse, timeout: float = 10.0) -> dict[str, Any]:
    """Receive one text frame, decode it and validate it against ws-message.json."""
    msg = await ws.receive(timeout=timeout)
    assert msg.type is aiohttp.WSMsgType.TEXT, f"expected a text frame, got {msg.type} {msg.data!r}"
    data: dict[str, Any] = orjson.loads(msg.data)
    validate("ws-message.json", data)
    return data


async def collect(ws: aiohttp.ClientWebSocketResponse, pred: Callable[[list[dict[str, Any]]], bool],
                  what: str, timeout: float = 20.0) -> list[dict[str, Any]]:
    """Receive messages until ``pred(messages)`` holds."""
    msgs: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred(msgs):
        left = deadline - loop.time()
        if left <= 0:
            raise AssertionError(f"timed out waiting for {what}; got types {[m['type'] for m in msgs][-30:]}")
        msgs.append(await recv_json(ws, timeout=left))
    return msgs


def event_seqs(msgs: list[dict[str, Any]]) -> list[int]:
    return [m["seq"] for m in msgs if m["type"] == "event"]


async def test_ws_snapshot_then_ordered_deltas(start: Start) -> None:
    """Connect: hello, a complete snapshot of the fleet, then events, tunnel updates and counters frames, in
    non-decreasing seq order, with strictly increasing event seqs; all valid against the schemas."""
    server, app = await start(tunnels=12, speed=60, seed=3, counters_interval=0.2)
    async with aiohttp.ClientSession() as s, s.ws_connect(server.make_url("/ws")) as ws:
        msgs = await collect(ws, lambda ms: sum(m["type"] == "event" for m in ms) >= 20
                             and any(m["type"] == "counters" for m in ms)
                             and any(m["type"] == "tunnel" for m in ms), "events, counters and tunnel updates")
    assert msgs[0]["type"] == "hello"
    assert msgs[0]["resumed"] is False
    snap_end = next(i for i, m in enumerate(msgs) if m["type"] == "snapshot" and m["last"])
    assert all(m["type"] == "snapshot" for m in msgs[1:snap_end + 1])
    seqs = [m["seq"] for m in msgs if "seq" in m]
    assert seqs == sorted(seqs), seqs
    ev = event_seqs(msgs)
    assert ev == sorted(set(ev))
    assert all(s > msgs[0]["seq"] for s in ev)
    # events are contiguous: nothing dropped for a client that keeps up
    assert ev == list(range(ev[0], ev[0] + len(ev)))
    ids = {t["id"] for m in msgs[1:snap_end + 1] for t in m["tunnels"]}
    # every tunnel the server knows now was in the snapshot or announced after it (the fleet may still be
    # loading when the client connects); nothing in the snapshot is unknown to the server
    announced = {m["tunnel"]["id"] for m in msgs[snap_end + 1:] if m["type"] == "tunnel"}
    removed = {m["id"] for m in msgs[snap_end + 1:] if m["type"] == "tunnel_removed"}
    now_ids = set(app[HUB].view.tunnel_ids())
    assert now_ids <= ids | announced, now_ids - ids - announced
    assert ids - removed <= now_ids, ids - removed - now_ids
    frame = next(m for m in msgs if m["type"] == "counters")
    idx = frame["fields"].index("bytes_in")
    assert all(isinstance(r[idx], int) for r in frame["rows"])


async def test_ws_resume_since(start: Start) -> None:
    """Reconnecting with ?since=SEQ gets exactly the events after SEQ (no repeats, no holes), no snapshot."""
    server, app = await start(tunnels=10, speed=60, seed=4)
    hub = app[HUB]
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(server.make_url("/ws")) as ws:
            first = await collect(ws, lambda ms: len(event_seqs(ms)) >= 5, "5 events")
        last = event_seqs(first)[-1]
        await until(lambda: hub.view.seq >= last + 10, "10 more events while disconnected")
        async with s.ws_connect(server.make_url(f"/ws?since={last}")) as ws:
            hello = await recv_json(ws)
            after = await collect(ws, lambda ms: len(event_seqs(ms)) >= 10, "replayed events")
    assert hello["resumed"] is True
    assert hello["snapshot"] is False
    ev = event_seqs(after)
    assert ev[:10] == list(range(last + 1, last + 11))
    assert not any(m["type"] == "snapshot" for m in after)


async def test_ws_filters(start: Start) -> None:
    """event= and tunnel= filters: only matching events and tunnels arrive; a bad state is a 400 JSON error."""
    server, app = await start(tunnels=10, speed=60, seed=5)
    await until(app[HUB].view.tunnel_ids, "tunnels")
    tid = sorted(app[HUB].view.tunnel_ids())[0]
    async with aiohttp.ClientSession() as s:
        url = server.make_url("/ws").with_query([("event", "rekey_started,sa_added"), ("event", "sa_deleted")])
        async with s.ws_connect(url) as ws:
            msgs = await collect(ws, lambda ms: len(event_seqs(ms)) >= 6, "filtered events")
        assert {m["event"]["type"] for m in msgs if m["type"] == "event"} <= {"rekey_started", "sa_added",
                                                                              "sa_deleted"}
        async with s.ws_connect(server.make_url("/ws").with_query({"tunnel": tid})) as ws:
            msgs = await collect(ws, lambda ms: any(m["type"] == "snapshot" and m["last"] for m in ms), "snapshot")
        assert [t["id"] for m in msgs if m["type"] == "snapshot" for t in m["tunnels"]] == [tid]
        async with s.get(server.make_url("/ws").with_query({"state": "sleepy"})) as r:
            assert r.status == 400
            body = await r.json()
        validate("error.json", body)
        assert "sleepy" in body["error"]["message"]


async def test_ws_detail_ping_and_bad_ops(start: Start) -> None:
    """The detail op returns full tunnels (and unknown ids); ping gets pong; garbage gets an error frame."""
    server, app = await start(tunnels=5, speed=20, seed=6)
    await until(app[HUB].view.tunnel_ids, "tunnels")
    tid = sorted(app[HUB].view.tunnel_ids())[0]
    async with aiohttp.ClientSession() as s, s.ws_connect(server.make_url("/ws?snapshot=0")) as ws:
        await ws.send_str(orjson.dumps({"op": "detail", "ids": [tid, "nope"]}).decode())
        detail = next(m for m in await collect(ws, lambda ms: any(m["type"] == "detail" for m in ms), "detail")
                      if m["type"] == "detail")
        await ws.send_str('{"op": "ping"}')
        await collect(ws, lambda ms: any(m["type"] == "pong" for m in ms), "pong")
        await ws.send_str("not json")
        err = next(m for m in await collect(ws, lambda ms: any(m["type"] == "error" for m in ms), "error")
                   if m["type"] == "error")
    assert [t["id"] for t in detail["tunnels"]] == [tid]
    assert detail["unknown"] == ["nope"]
    assert detail["tunnels"][0]["sas"], "detail carries the SAs"
    assert err["code"] == "bad_request"


async def test_rest_endpoints(start: Start) -> None:
    """Tunnels, one tunnel, 404 for an unknown one, events since, healthz: all schema-valid."""
    server, app = await start(tunnels=8, speed=30, seed=7)
    await until(lambda: len(app[HUB].view.tunnel_ids()) >= 8 and app[HUB].view.seq > 10, "fleet")
    async with aiohttp.ClientSession() as s:
        async with s.get(server.make_url("/api/v1/tunnels")) as r:
            assert r.status == 200
            tunnels = orjson.loads(await r.read())
        validate("rest-tunnels.json", tunnels)
        assert len(tunnels["tunnels"]) >= 8
        tid = tunnels["tunnels"][0]["id"]
        async with s.get(server.make_url("/api/v1/tunnels").with_query({"state": "up,idle,one-way,rekeying,"
                                                                         "expiring,down,errors"})) as r:
            assert len((await r.json())["tunnels"]) >= 8
        async with s.get(server.make_url(f"/api/v1/tunnels/{tid}")) as r:
            one = await r.json()
        validate("rest-tunnel.json", one)
        assert one["tunnel"]["id"] == tid
        async with s.get(server.make_url("/api/v1/tunnels/no-such-tunnel")) as r:
            assert r.status == 404
            err = await r.json()
        validate("error.json", err)
        assert err["error"]["code"] == "not_found"
        async with s.get(server.make_url("/api/v1/events?since=3&limit=5")) as r:
            evs = await r.json()
        validate("rest-events.json", evs)
        assert [e["seq"] for e in evs["events"]] == [4, 5, 6, 7, 8]
        assert evs["more"] is True
        async with s.get(server.make_url("/api/v1/events?since=x")) as r:
            assert r.status == 400
        async with s.get(server.make_url("/healthz")) as r:
            health = await r.json()
            status = r.status
    validate("healthz.json", health)
    assert (status, health["status"], health["source"]["state"]) == (200, "ok", "running")
    assert health["netns"]["sim"]["last_dump_age"] is not None


async def test_healthz_degraded_when_source_fails(start: Start) -> None:
    """A source that raises makes /healthz 503 degraded with the error text."""

    class Broken:
        kind = "kernel"

        async def items(self) -> AsyncIterator[Any]:
            from monitor.errors import PermissionDenied

            raise PermissionDenied("no CAP_NET_ADMIN in netns default")
            yield  # pragma: no cover

    server, app = await start(source=Broken())
    await until(lambda: app[DAEMON].state == "failed", "source failure")
    async with aiohttp.ClientSession() as s, s.get(server.make_url("/healthz")) as r:
        body = await r.json()
        assert r.status == 503
    validate("healthz.json", body)
    assert body["status"] == "degraded"
    assert "CAP_NET_ADMIN" in body["source"]["error"]


async def test_auth_token_and_origin(start: Start) -> None:
    """With a token: 401 without it, 200 with the header or ?token=; ws with a foreign Origin gets 403,
    same-origin and no-Origin upgrades are allowed; the dashboard page needs no token."""
    token = "t0ps3cret-token"
    server, _ = await start(tunnels=3, token=token)
    url = server.make_url
    async with aiohttp.ClientSession() as s:
        async with s.get(url("/api/v1/tunnels")) as r:
            assert r.status == 401
            body = await r.json()
            assert r.headers["WWW-Authenticate"] == "Bearer"
        validate("error.json", body)
        async with s.get(url("/healthz"), headers={"Authorization": "Bearer wrong-token"}) as r:
            assert r.status == 401
        async with s.get(url("/metrics"), headers={"Authorization": f"Bearer {token}"}) as r:
            assert r.status == 200
        async with s.get(url("/api/v1/events").with_query({"token": token})) as r:
            assert r.status == 200
        async with s.get(url("/")) as r:
            assert r.status == 200
        with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
            await s.ws_connect(url("/ws"))
        assert exc.value.status == 401
        host = f"{server.host}:{server.port}"
        with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
            await s.ws_connect(url("/ws").with_query({"token": token}), origin="http://evil.example")
        assert exc.value.status == 403
        for origin in (f"http://{host}", None):
            async with s.ws_connect(url("/ws").with_query({"token": token}), origin=origin) as ws:
                assert (await recv_json(ws))["type"] == "hello"


async def test_metrics_endpoint_series(start: Start) -> None:
    """/metrics carries the per-tunnel series with the contract labels, the info series and the monitor's gauges."""
    from prometheus_client.parser import text_string_to_metric_families

    server, app = await start(tunnels=6, speed=30, seed=8)
    await until(lambda: len(app[HUB].view.tunnel_ids()) >= 6, "fleet")
    async with aiohttp.ClientSession() as s, s.get(server.make_url("/metrics")) as r:
        text = await r.text()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    b = fams["ipsec_tunnel_bytes"]
    # issue 15: per-tunnel series are named by id; the attributes are on ipsec_tunnel_info (if_id/mark where set)
    assert {tuple(sorted(x.labels)) for x in b.samples} == {("direction", "id")}
    assert len(b.samples) == 2 * len(app[HUB].view.tunnel_ids())
    info = fams["ipsec_tunnel_info"].samples
    assert {x.labels["id"] for x in info} == {x.labels["id"] for x in b.samples}
    assert all({"id", "netns", "reqid", "local", "remote"} <= set(x.labels) and x.value == 1 for x in info)
    one_hot: dict[tuple[str, ...], float] = {}
    for x in fams["ipsec_tunnel_state"].samples:
        key = (x.labels["id"],)
        one_hot[key] = one_hot.get(key, 0) + x.value
    assert set(one_hot.values()) == {1.0}
    for name in ("ipsec_monitor_event_loop_lag_seconds", "ipsec_monitor_last_dump_age_seconds",
                 "ipsec_tunnel_rekeys", "ipsec_tunnel_hard_expiry_seconds", "ipsec_monitor_enobufs"):
        assert name in fams, name
