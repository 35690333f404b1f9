"""Batched sending (``session.serve(..., send_many=...)``) and its websocket framing (``monitor.serve.web.text_frame``).

The hub hands runs of ready messages to ``send_many`` so the server writes many frames per transport
write (the change made because of the fan-out profile in bench/RESULTS.md). What a client receives
must not change: same messages, same order, gaps and snapshots still through the one-by-one path.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp
import orjson
from aiohttp.test_utils import TestServer

from monitor.serve import session as hub_session
from monitor.serve.client_queue import MAX_BATCH
from monitor.serve.config import Settings
from monitor.serve.handlers import HUB
from monitor.serve.hub import Hub
from monitor.serve.protocol import Filters
from monitor.serve.web import create_app
from monitor.serve.websocket import text_frame
from tests.test_web_fakes import FakeCorrelator, FakePipeline, QueueSource


class Recorder:
    """Records every message, and which path (single or batch) carried it."""

    def __init__(self) -> None:
        self.msgs: list[dict[str, Any]] = []
        self.batches: list[int] = []
        self.singles = 0

    async def send(self, data: bytes) -> None:
        self.singles += 1
        self.msgs.append(orjson.loads(data))

    async def send_many(self, datas: list[bytes]) -> None:
        self.batches.append(len(datas))
        self.msgs.extend(orjson.loads(d) for d in datas)


async def _until(cond: Any, what: str) -> None:
    for _ in range(500):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def _event(seq: int) -> dict[str, Any]:
    return {"seq": seq, "ts": 1.0, "type": "bench", "tunnel": None, "netns": "x", "detail": {}}


async def test_events_go_out_in_batches_in_order() -> None:
    """600 queued events arrive complete and in seq order, in batches of at most MAX_BATCH."""
    hub = Hub(FakeCorrelator(), clock=lambda: 1e9, client_queue=10_000)
    c = hub.attach(Filters())
    hub.publish_events([_event(i) for i in range(1, 601)])
    rec = Recorder()
    task = asyncio.create_task(hub_session.serve(hub, c, rec.send, since=None, snapshot=False, send_many=rec.send_many))
    await _until(lambda: sum(1 for m in rec.msgs if m["type"] == "event") == 600, "600 events")
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    seqs = [m["seq"] for m in rec.msgs if m["type"] == "event"]
    assert seqs == list(range(1, 601))
    assert rec.batches, "send_many was never used"
    assert max(rec.batches) <= MAX_BATCH
    assert sum(rec.batches) == 600
    assert c.n_events == 0


async def test_gap_interrupts_a_batch_and_keeps_its_place() -> None:
    """A full queue's gap marker is sent one by one, between the events before and after it."""
    hub = Hub(FakeCorrelator(), clock=lambda: 1e9, client_queue=5)
    c = hub.attach(Filters())
    hub.publish_events([_event(i) for i in range(1, 11)])  # 5 queued, 6..10 dropped into one gap
    rec = Recorder()
    task = asyncio.create_task(hub_session.serve(hub, c, rec.send, since=None, snapshot=False, send_many=rec.send_many))
    await _until(lambda: any(m["type"] == "gap" for m in rec.msgs), "the gap")
    hub.publish_events([_event(11)])
    await _until(lambda: any(m.get("seq") == 11 and m["type"] == "event" for m in rec.msgs), "event 11")
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    kinds = [(m["type"], m["seq"]) for m in rec.msgs if m["type"] in ("event", "gap")]
    assert kinds == [("event", 1), ("event", 2), ("event", 3), ("event", 4), ("event", 5), ("gap", 10),
                     ("event", 11)]
    gap = next(m for m in rec.msgs if m["type"] == "gap")
    assert (gap["from_seq"], gap["to_seq"], gap["dropped"]) == (6, 10, 5)


def test_text_frame_lengths() -> None:
    """Frame headers for the three payload length encodings of RFC 6455 5.2."""
    for n, head_len in ((0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10)):
        payload = b"x" * n
        frame = text_frame(payload)
        assert frame[0] == 0x81
        assert frame[head_len:] == payload
        assert len(frame) == head_len + n
    assert text_frame(b"x" * 300)[1:4] == b"\x7e\x01\x2c"


async def test_real_client_reads_batched_frames() -> None:
    """A real aiohttp websocket client parses the server's batched frames: every event, in order."""
    core = FakeCorrelator()
    app = create_app(Settings(port=0), QueueSource(), correlator=core, pipeline=FakePipeline(core))
    async with TestServer(app) as server, aiohttp.ClientSession() as session, \
            session.ws_connect(server.make_url("/ws?snapshot=0")) as ws:
        hello = await ws.receive_json(timeout=5)
        assert hello["type"] == "hello"
        hub = app[HUB]
        await _until(lambda: len(hub.clients) == 1, "the client to attach")
        hub.publish_events([_event(i) for i in range(1, 1001)])
        seqs: list[int] = []
        while len(seqs) < 1000:
            msg = await ws.receive_json(timeout=5)
            if msg["type"] == "event":
                seqs.append(msg["seq"])
        assert seqs == list(range(1, 1001))



class Wire:
    """The transport side of the flusher: records runs written synchronously; can be paused."""

    def __init__(self, rec: Recorder) -> None:
        self.rec = rec
        self.runs: list[int] = []
        self.writable = True

    def can_write(self) -> bool:
        return self.writable

    def write_run(self, datas: list[bytes]) -> None:
        self.runs.append(len(datas))
        self.rec.msgs.extend(orjson.loads(d) for d in datas)


async def test_flusher_writes_idle_clients_in_order() -> None:
    """Idle clients are written by one flusher callback per loop iteration; order and fallbacks hold."""
    hub = Hub(FakeCorrelator(), clock=lambda: 1e9)
    c = hub.attach(Filters())
    rec = Recorder()
    wire = Wire(rec)
    c.can_write, c.write_run = wire.can_write, wire.write_run
    task = asyncio.create_task(hub_session.serve(hub, c, rec.send, since=None, snapshot=False, send_many=rec.send_many))
    await _until(lambda: c.idle, "the writer to go idle")
    hub.publish_events([_event(1), _event(2)])
    hub.publish_events([_event(3)])
    assert wire.runs == [], "the flusher runs at the end of the loop iteration, not inside publish"
    await _until(lambda: wire.runs, "the flusher")
    assert wire.runs == [3]  # three events from two publishes, one write
    assert not rec.batches, "the writer task was woken although the client was idle"
    wire.writable = False  # a paused transport: the writer task (with flow control) takes over
    hub.publish_events([_event(4)])
    await _until(lambda: any(m.get("seq") == 4 for m in rec.msgs), "event 4")
    assert rec.batches or rec.singles > 1
    wire.writable = True
    await _until(lambda: c.idle, "the writer to go idle again")
    hub.publish_events([_event(5)])
    await _until(lambda: any(m.get("seq") == 5 for m in rec.msgs), "event 5")
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert [m["seq"] for m in rec.msgs if m["type"] == "event"] == [1, 2, 3, 4, 5]
    assert wire.runs == [3, 1]
    assert c.sent_messages == 5


async def test_flusher_skips_detached_clients() -> None:
    """A client detached before the flusher runs gets nothing written."""
    hub = Hub(FakeCorrelator(), clock=lambda: 1e9)
    c = hub.attach(Filters())
    rec = Recorder()
    wire = Wire(rec)
    c.can_write, c.write_run = wire.can_write, wire.write_run
    task = asyncio.create_task(hub_session.serve(hub, c, rec.send, since=None, snapshot=False, send_many=rec.send_many))
    await _until(lambda: c.idle, "the writer to go idle")
    hub.publish_events([_event(1)])
    hub.detach(c)
    await asyncio.sleep(0.05)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert wire.runs == []


def test_snapshot_message_equals_nested_serialisation() -> None:
    """A snapshot built from pre-serialised tunnels is byte-identical to serialising the nested message."""
    from monitor.serve.protocol import dumps, snapshot_message

    tunnels = [{"id": "ns:1:a-b", "sas": [{"spi": "0x1", "pair": (1, 2)}], "rate_in_bps": 1.5, "probe": None},
               {"id": "ns:2:c-d", "reasons": [], "state": "up"}]
    for last in (False, True):
        for chunk in (tunnels, []):
            nested = dumps({"schema": 1, "type": "snapshot", "seq": 7, "ts": 1e9 + 0.25, "chunk": 3, "last": last,
                            "tunnels": chunk})
            assert snapshot_message(7, 1e9 + 0.25, 3, last, [dumps(t) for t in chunk]) == nested
    assert orjson.loads(snapshot_message(7, 1.0, 0, True, [dumps(t) for t in tunnels]))["tunnels"][1]["state"] == "up"
