"""The hub's direct broadcast (issue 15 item 2): events of one loop iteration are framed once and written to
every idle, unfiltered client in one write each, with no per-client queueing; anything else queued for such a
client demotes it first, so the stream's order, seqs and gaps stay what the queued path gives."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson

from monitor.serve import session as hub_session
from monitor.serve.client_queue import Client
from monitor.serve.hub import Hub
from monitor.serve.protocol import Filters
from monitor.serve.websocket import text_frame
from tests.test_hub_batch import Recorder, Wire, _event, _until
from tests.test_web_fakes import FakeCorrelator


def read_frames(blob: bytes) -> list[dict[str, Any]]:
    """Decode concatenated unmasked text frames (as text_frame writes them)."""
    out, i = [], 0
    while i < len(blob):
        assert blob[i] == 0x81
        n, i = blob[i + 1], i + 2
        if n == 126:
            n, i = int.from_bytes(blob[i:i + 2], "big"), i + 2
        elif n == 127:
            n, i = int.from_bytes(blob[i:i + 8], "big"), i + 8
        out.append(orjson.loads(blob[i:i + n]))
        i += n
    return out


class RawWire(Wire):
    """A Wire that also takes framed bytes (``write_raw``), recording each write."""

    def __init__(self, rec: Recorder) -> None:
        super().__init__(rec)
        self.raw: list[bytes] = []

    def write_raw(self, blob: bytes) -> None:
        self.raw.append(blob)
        self.rec.msgs.extend(read_frames(blob))


async def _client(hub: Hub, filters: Filters | None = None) -> tuple[Client, Recorder, RawWire, asyncio.Task[None]]:
    c = hub.attach(filters or Filters())
    rec = Recorder()
    wire = RawWire(rec)
    c.can_write, c.write_run, c.write_raw = wire.can_write, wire.write_run, wire.write_raw
    task = asyncio.create_task(hub_session.serve(hub, c, rec.send, since=None, snapshot=False,
                                                 send_many=rec.send_many))
    await _until(lambda: c.idle, "the writer to go idle")
    return c, rec, wire, task


async def _stop(*tasks: asyncio.Task[None]) -> None:
    for t in tasks:
        t.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await t


async def test_one_framed_write_per_client_per_iteration() -> None:
    """Three events in one iteration: each idle client gets one write of the same bytes (framed once), nothing
    is queued per client, and the events are not even looked at per client (the direct set skips the loop)."""
    hub = Hub(FakeCorrelator(), clock=lambda: 1e9)
    hub.frame = text_frame
    a, rec_a, wire_a, ta = await _client(hub)
    b, rec_b, wire_b, tb = await _client(hub)
    hub.publish_events([_event(1), _event(2)])
    hub.publish_events([_event(3)])
    assert a.direct
    assert b.direct
    assert not a.q
    assert not b.q
    assert a.n_events == b.n_events == 0
    await _until(lambda: wire_a.raw and wire_b.raw, "the flusher")
    assert len(wire_a.raw) == len(wire_b.raw) == 1
    assert wire_a.raw[0] is wire_b.raw[0]  # one blob for all: built once
    assert wire_a.raw[0] == b"".join(text_frame(d) for _, _, d in hub.ring)
    assert [m["type"] for m in rec_a.msgs[:1]] == ["hello"]
    assert [m["seq"] for m in rec_a.msgs[1:]] == [m["seq"] for m in rec_b.msgs[1:]] == [1, 2, 3]
    assert a.sent_messages == 3
    assert not a.direct
    assert not rec_a.batches
    assert rec_a.singles == 1  # only the hello went through the writer task
    await _stop(ta, tb)


async def test_demotion_keeps_order_and_seq() -> None:
    """A tunnel update for a direct client mid-iteration: its events so far, then the update, then later
    events, in seq order; the other direct client still gets the events in one write."""
    corr = FakeCorrelator()
    corr.add("t1")
    hub = Hub(corr, clock=lambda: 1e9)
    hub.frame = text_frame
    a, _, _, ta = await _client(hub, Filters(tunnel=frozenset({"t1"})))
    b, rec_b, wire_b, tb = await _client(hub)
    c, rec_c, wire_c, tc = await _client(hub)
    hub.publish_events([_event(1), _event(2)])
    assert not a.direct  # a filtered client is never direct
    assert b.direct
    assert c.direct
    b.push_reply(orjson.dumps({"type": "reply", "n": 1}))  # anything queued for b demotes it first
    assert not b.direct
    assert list(b.q)[:2] == [("e", 1), ("e", 2)]
    hub.publish_events([_event(3)])
    await _until(lambda: len(rec_b.msgs) >= 5 and wire_c.raw, "the flusher")
    types_b = [(m["type"], m.get("seq")) for m in rec_b.msgs[1:]]
    assert types_b == [("event", 1), ("event", 2), ("reply", None), ("event", 3)]
    assert [m["seq"] for m in rec_c.msgs[1:]] == [1, 2, 3]
    assert len(wire_c.raw) == 1
    assert wire_b.raw == []
    await _stop(ta, tb, tc)


async def test_paused_at_flush_falls_back_with_gaps() -> None:
    """A direct client whose transport is paused when the flusher runs is demoted: its events are queued
    (queue limit and gap apply) and its writer task (which has the flow control) delivers them."""
    hub = Hub(FakeCorrelator(), clock=lambda: 1e9, client_queue=3)
    hub.frame = text_frame
    a, rec, wire, task = await _client(hub)
    hub.publish_events([_event(i) for i in range(1, 6)])
    assert a.direct
    wire.writable = False
    await _until(lambda: not a.direct, "the flusher")
    assert wire.raw == []
    assert hub.dropped_total == 2  # queued as events: 3 fit, 2 counted into a gap
    await _until(lambda: any(m["type"] == "gap" for m in rec.msgs), "the gap")
    got = [(m["type"], m.get("seq") or m.get("from_seq")) for m in rec.msgs[1:]]
    assert got[:3] == [("event", 1), ("event", 2), ("event", 3)]
    assert got[3][0] == "gap"
    await _stop(task)


async def test_attach_mid_iteration_and_no_idle_clients() -> None:
    """A client attached after the iteration's first event gets the later ones through its queue; with no
    idle client at all no epoch is opened (the queued path, as before)."""
    hub = Hub(FakeCorrelator(), clock=lambda: 1e9)
    hub.frame = text_frame
    lone = hub.attach(Filters())  # no writer task: never idle
    hub.publish_events([_event(1)])
    assert not hub._epoch
    assert ("e", 1) in lone.q
    _, rec, wire, task = await _client(hub)
    hub.publish_events([_event(2)])
    late = hub.attach(Filters())
    hub.publish_events([_event(3)])
    assert hub._epoch
    assert list(late.q) == [("e", 3)]
    assert list(lone.q) == [("e", 1), ("e", 2), ("e", 3)]
    await _until(lambda: wire.raw, "the flusher")
    assert [m["seq"] for m in rec.msgs[1:]] == [2, 3]
    await _stop(task)
