"""The hub's flush tick (issue 15 item 3): after a direct broadcast that took d seconds to write, the next one
is held until min(flush_tick, HOLD_FACTOR x d) after it, and events published meanwhile share its write. The hold is
checked on the loop's own clock through the scheduled handle (not by sleeping and timing), with the write's
cost given by an explicit timer; an isolated event is not delayed at all, and anything else for a waiting
client demotes it with order, seq and gaps kept."""

from __future__ import annotations

import asyncio

import orjson

from monitor.serve.hub import HOLD_FACTOR, Hub
from monitor.serve.protocol import Filters
from monitor.serve.websocket import text_frame
from tests.test_hub_batch import _event, _until
from tests.test_hub_direct import _client, _stop, read_frames
from tests.test_web_fakes import FakeCorrelator

TICK = 0.2  # long against a loop iteration, so "still waiting for the tick" is observable without timing


class Timer:
    """An explicit clock for the cost of a broadcast write: every reading is ``step`` seconds later."""

    def __init__(self, step: float) -> None:
        self.t, self.step = 0.0, step

    def __call__(self) -> float:
        self.t += self.step
        return self.t


def _hub(cost: float = 1.0, client_queue: int = 1000) -> Hub:
    hub = Hub(FakeCorrelator(), clock=lambda: 1e9, flush_tick=TICK, timer=Timer(cost), client_queue=client_queue)
    hub.frame = text_frame
    return hub


async def test_events_within_a_tick_share_one_write() -> None:
    """The first event goes out in its own iteration; the next two, published in later iterations less than a
    tick after that write, wait for one write at exactly last write + tick (the handle's deadline)."""
    hub = _hub()
    loop = asyncio.get_running_loop()
    a, rec, wire, task = await _client(hub)
    _, rec_b, wire_b, task_b = await _client(hub)
    hub.publish_events([_event(1)])
    await asyncio.sleep(0)  # one iteration: the broadcast is written at its end, no timer
    assert len(wire.raw) == len(wire_b.raw) == 1
    first = hub._last_bcast
    hub.publish_events([_event(2)])
    handle = hub._bcast_handle
    assert isinstance(handle, asyncio.TimerHandle)
    assert handle.when() == first + TICK  # the write "took" 1 s: the hold is capped by the tick
    await asyncio.sleep(0)
    hub.publish_events([_event(3)])  # a later iteration, same held broadcast
    assert hub._bcast_handle is handle
    assert a.direct
    assert not a.q
    await asyncio.sleep(0)
    assert len(wire.raw) == 1, "written before the tick"
    await _until(lambda: len(wire.raw) == 2, "the tick")
    assert loop.time() >= first + TICK
    assert [m["seq"] for m in read_frames(wire.raw[1])] == [2, 3]
    assert wire.raw[1] is wire_b.raw[1]  # still framed once for every client
    assert [m["seq"] for m in rec.msgs[1:]] == [m["seq"] for m in rec_b.msgs[1:]] == [1, 2, 3]
    assert (hub.bcast_epochs, hub.bcast_writes) == (2, 4)
    await _stop(task, task_b)


async def test_hold_is_what_the_last_write_took() -> None:
    """A broadcast that took 0.03 s to write holds the next one HOLD_FACTOR x 0.03 s (less than the tick); one
    that took nothing holds nothing."""
    hub = _hub(cost=0.03)
    _, _, wire, task = await _client(hub)
    hub.publish_events([_event(1)])
    await asyncio.sleep(0)
    hub.publish_events([_event(2)])
    assert isinstance(hub._bcast_handle, asyncio.TimerHandle)
    assert abs(hub._bcast_handle.when() - (hub._last_bcast + HOLD_FACTOR * 0.03)) < 1e-9
    await _until(lambda: len(wire.raw) == 2, "the hold")
    await _stop(task)
    hub = _hub(cost=0.0)
    _, _, wire, task = await _client(hub)
    for s in (1, 2):
        hub.publish_events([_event(s)])
        assert not isinstance(hub._bcast_handle, asyncio.TimerHandle)
        await asyncio.sleep(0)
    assert len(wire.raw) == 2
    await _stop(task)


async def test_isolated_event_is_not_delayed() -> None:
    """An event published more than a tick after the last write goes out at the end of its iteration."""
    hub = _hub()
    _, _, wire, task = await _client(hub)
    hub.publish_events([_event(1)])
    await asyncio.sleep(0)
    hub._last_bcast -= TICK  # as if the tick had passed (the loop clock, moved instead of slept)
    hub.publish_events([_event(2)])
    assert not isinstance(hub._bcast_handle, asyncio.TimerHandle)
    await asyncio.sleep(0)
    assert [[m["seq"] for m in read_frames(b)] for b in wire.raw] == [[1], [2]]
    await _stop(task)


async def test_demotion_while_waiting_keeps_order_and_is_not_delayed() -> None:
    """A reply for a client that waits for the tick demotes it: its held events, the reply, later events, in
    order, written by the flusher at once (before the tick); the other client still waits for the tick."""
    hub = _hub()
    a, rec_a, wire_a, ta = await _client(hub)
    _, rec_b, wire_b, tb = await _client(hub)
    hub.publish_events([_event(1)])
    await asyncio.sleep(0)
    hub.publish_events([_event(2), _event(3)])
    assert isinstance(hub._bcast_handle, asyncio.TimerHandle)
    a.push_reply(orjson.dumps({"type": "reply"}))
    assert not a.direct
    hub.publish_events([_event(4)])
    await _until(lambda: len(rec_a.msgs) >= 6, "a's queued run")
    assert hub._bcast_handle is not None, "a was written before the tick"
    assert [(m["type"], m.get("seq")) for m in rec_a.msgs[1:]] == [
        ("event", 1), ("event", 2), ("event", 3), ("reply", None), ("event", 4)]
    assert len(wire_b.raw) == 1
    await _until(lambda: len(wire_b.raw) == 2, "b's tick")
    assert [m["seq"] for m in rec_b.msgs[1:]] == [1, 2, 3, 4]
    assert len(wire_a.raw) == 1  # a got 2..4 from its queue, never from the held broadcast
    await _stop(ta, tb)


async def test_paused_at_the_tick_falls_back_with_a_gap() -> None:
    """A client paused when the held broadcast is written is demoted: queue limit and gap apply as without
    the tick, and a filtered client (never direct) gets its events through its queue meanwhile."""
    hub = _hub(client_queue=3)
    a, rec, wire, task = await _client(hub)
    _, rec_f, _, tf = await _client(hub, Filters(netns=frozenset({"x"})))
    hub.publish_events([_event(1)])
    await asyncio.sleep(0)
    for s in range(2, 7):
        hub.publish_events([_event(s)])
        await asyncio.sleep(0)
    assert a.direct
    assert [m["seq"] for m in rec_f.msgs[1:]][:2] == [1, 2]  # not held: the filtered client's queue
    wire.writable = False
    await _until(lambda: not a.direct, "the tick")
    assert hub.dropped_total == 2  # events 2..6 queued: 3 fit, 2 counted into one gap
    await _until(lambda: any(m["type"] == "gap" for m in rec.msgs), "the gap")
    got = [(m["type"], m.get("seq"), m.get("from_seq"), m.get("to_seq")) for m in rec.msgs[1:]]
    assert got == [("event", 1, None, None), ("event", 2, None, None), ("event", 3, None, None),
                   ("event", 4, None, None), ("gap", 6, 5, 6)]
    await _stop(task, tf)
