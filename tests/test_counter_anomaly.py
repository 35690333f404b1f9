"""Counters that cannot be true (issue 11 item 2): a total past 2^64 - 1, a counter going backwards.

Before the fix two NEWSA records with ``curlft.bytes = 2**64 - 1`` in one tunnel, replayed with
``serve --source replay:``, made ``GET /api/v1/tunnels`` return a truncated body, ``/tunnels/{id}`` a 500,
``/ws`` close after ``hello``, and the daemon lose that batch: ``Lifecycle._count`` summed without bound and
orjson refuses larger integers.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from monitor.health.correlate import Correlator
from monitor.health.pipeline import Pipeline
from monitor.serve.config import Settings
from monitor.serve.handlers import DAEMON
from monitor.serve.protocol import dumps
from monitor.serve.web import create_app
from monitor.wire import xfrm as X
from monitor.wire.pcap import PcapWriter
from tests.correlate_builders import dump_datagrams, make_policy, make_sa, newpolicy, newsa, with_counters

U64 = 2**64 - 1


def _huge_capture(path: Path) -> None:
    """A policy dump, then an SA dump whose two inbound SAs of one tunnel each say 2^64 - 1 bytes."""
    sas = [newsa(with_counters(make_sa(spi, inbound=True, add_time=1000.0, hard=3600), U64, 10), dump_seq=2)
           for spi in (0x101, 0x102)]
    sas.append(newsa(make_sa(0x201, inbound=False, add_time=1000.0, hard=3600), dump_seq=2))
    items = [*dump_datagrams("default", 1, [newpolicy(make_policy(1, index=8), dump_seq=1)], 1000.0,
                             X.XFRM_MSG_GETPOLICY),
             *dump_datagrams("default", 2, sas, 1001.0)]
    with PcapWriter(path) as w:
        for item in items:
            w.write(item.ts, item.data, item.outgoing)


def test_totals_past_u64_are_held_and_counted() -> None:
    correlator = Correlator()
    pipeline = Pipeline(correlator)
    sas = [newsa(with_counters(make_sa(spi, inbound=True, add_time=1000.0), U64, 10), dump_seq=2)
           for spi in (0x101, 0x102)]
    pipeline.feed(dump_datagrams("default", 2, sas, 1001.0)[0], 1001.0)
    for item in dump_datagrams("default", 2, sas, 1001.0)[1:]:
        pipeline.feed(item, 1001.0)
    # after the quiet load, a third SA's notification pushes the total past 2^64 again: now an event
    third = with_counters(make_sa(0x103, inbound=True, add_time=1002.0), 5, 1)
    correlator.drain_events()
    correlator.on_events("default", [newsa(third)], 1002.0)
    (tid,) = correlator.tunnel_ids()
    t = correlator.tunnel_json(tid, 1002.0)
    assert t is not None
    assert t["bytes_in"] == U64
    assert t["counter_anomalies"] == 2
    anomalies = [e for e in correlator.drain_events() if e.type == "counter_anomaly"]
    assert [e.detail["anomaly"] for e in anomalies] == ["total_past_u64"]
    assert anomalies[0].detail["counter"] == "bytes_in"
    assert json.loads(dumps(t))["bytes_in"] == U64


def test_a_counter_going_backwards_is_an_anomaly_and_totals_do_not_drop() -> None:
    correlator = Correlator()
    sa = make_sa(0x101, inbound=True, add_time=1000.0)
    correlator.on_dump_begin("default", "sa", 1000.0)
    correlator.on_events("default", [newsa(with_counters(sa, 5000, 50), dump_seq=1)], 1000.0)
    correlator.on_dump_end("default", "sa", 1000.0)
    correlator.drain_events()
    correlator.on_events("default", [newsa(with_counters(sa, 100, 1))], 1001.0)
    (tid,) = correlator.tunnel_ids()
    t = correlator.tunnel_json(tid, 1001.0)
    assert t is not None
    assert t["bytes_in"] == 5000
    events = [e for e in correlator.drain_events() if e.type == "counter_anomaly"]
    assert len(events) == 1
    assert events[0].detail == {"spi": "0x00000101", "anomaly": "went_backwards", "counter": "bytes", "value": 100,
                                "count": 1}


def test_dumps_never_raises_on_a_big_integer() -> None:
    assert json.loads(dumps({"v": 2**70})) == {"v": 2**70}


async def test_serve_replay_of_u64_totals_answers_rest_and_ws(tmp_path: Path) -> None:
    path = tmp_path / "huge.pcap"
    _huge_capture(path)
    app = create_app(Settings(source=f"replay:{path}", speed=0, port=0))
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        daemon = app[DAEMON]
        for _ in range(200):
            if daemon.state == "finished":
                break
            await asyncio.sleep(0.05)
        assert daemon.state == "finished", (daemon.state, daemon.error)
        async with aiohttp.ClientSession() as http:
            async with http.get(server.make_url("/api/v1/tunnels")) as r:
                assert r.status == 200
                body: dict[str, Any] = json.loads(await r.read())
            (t,) = body["tunnels"]
            assert t["bytes_in"] == U64
            assert t["counter_anomalies"] >= 1
            async with http.get(server.make_url(f"/api/v1/tunnels/{t['id']}")) as r:
                assert r.status == 200
                assert (await r.json())["tunnel"]["bytes_in"] == U64
            async with http.ws_connect(server.make_url("/ws")) as ws:
                hello = await ws.receive_json(timeout=5)
                snap = await ws.receive_json(timeout=5)
            assert hello["type"] == "hello"
            assert snap["type"] == "snapshot"
            assert snap["tunnels"][0]["bytes_in"] == U64
    finally:
        await server.close()
