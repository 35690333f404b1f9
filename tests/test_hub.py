"""Unit tests of monitor.serve.hub: serialise-once fan-out, coalescing, bounded queues, gaps, resume."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson
import pytest

from monitor.serve import session as hub_session
from monitor.serve.hub import Hub
from monitor.serve.protocol import COUNTER_FIELDS, Filters
from tests.test_web_fakes import FakeCorrelator, validate


def make(n: int = 0, **kw: Any) -> tuple[FakeCorrelator, Hub]:
    c = FakeCorrelator()
    for i in range(n):
        c.add(f"t{i}", n=i)
    hub = Hub(c, clock=lambda: 1e9, **kw)
    hub.publish_events(c.drain_events())
    hub.note_dirty(c.take_dirty(), 1e9)
    return c, hub


def kinds(client: Any) -> list[str]:
    return [k[0] for k in client.q]


class Sink:
    """A send() that records decoded messages; can be paused to simulate a client that stops reading."""

    def __init__(self) -> None:
        self.msgs: list[dict[str, Any]] = []
        self.open = asyncio.Event()
        self.open.set()

    async def __call__(self, data: bytes) -> None:
        await self.open.wait()
        msg = orjson.loads(data)
        validate("ws-message.json", msg)
        self.msgs.append(msg)


async def wait_for(cond: Any, what: str, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def test_filters_parse_repeat_and_comma() -> None:
    """Repeated parameters and comma lists mean the same; an unknown state is refused."""
    from multidict import MultiDict

    f = Filters.from_query(MultiDict([("state", "down,idle"), ("state", "up"), ("type", "rekey_failed")]))
    assert f.state == frozenset({"down", "idle", "up"})
    assert f.event == frozenset({"rekey_failed"})
    with pytest.raises(ValueError, match="sleepy"):
        Filters.from_query(MultiDict([("state", "sleepy")]))


def test_event_serialised_once_for_all_clients() -> None:
    """Two clients get the very same bytes object for one event (no per-client serialisation)."""
    c, hub = make()
    a, b = hub.attach(Filters()), hub.attach(Filters())
    c.emit("rekey_started", "t0")
    hub.publish_events(c.drain_events())
    (_, da), (_, db) = next(iter(a.q.values())), next(iter(b.q.values()))
    assert da is db
    assert orjson.loads(da)["event"]["type"] == "rekey_started"


def test_tunnel_updates_coalesce_latest_wins() -> None:
    """Three updates of one tunnel leave one queued entry holding the latest state, after newer events."""
    c, hub = make(2)
    cl = hub.attach(Filters())
    for state in ("idle", "one-way", "down"):
        c.update("t0", state=state)
        hub.publish_tunnels(["t0"], 1e9)
    c.emit("sa_added", "t1")
    hub.publish_events(c.drain_events())
    c.update("t0", state="up")
    hub.publish_tunnels(["t0"], 1e9)
    assert kinds(cl) == ["e", "t"]
    _label, data = cl.q[("t", "t0")]
    assert orjson.loads(data)["tunnel"]["state"] == "up"
    assert cl.n_updates == 1


def test_event_overflow_becomes_counted_gap() -> None:
    """Beyond client_queue events, newer ones are dropped into one gap entry with their seq range."""
    c, hub = make(client_queue=3)
    cl = hub.attach(Filters())
    seqs = [c.emit("sa_added", "t0") for _ in range(10)]
    hub.publish_events(c.drain_events())
    assert kinds(cl) == ["e", "e", "e", "g"]
    _, gap = cl.q[next(k for k in cl.q if k[0] == "g")]
    assert gap == [seqs[3], seqs[-1], 7]
    assert hub.dropped_total == 7


async def test_gap_message_then_more_events() -> None:
    """The writer sends the kept events, a gap message, then events queued after space freed up."""
    c, hub = make(client_queue=2)
    cl = hub.attach(Filters())
    sink = Sink()
    sink.open.clear()
    task = asyncio.create_task(hub_session.serve(hub, cl, sink, since=None, snapshot=False))
    for _ in range(5):
        c.emit("sa_added", "t0")
    hub.publish_events(c.drain_events())
    sink.open.set()
    await wait_for(lambda: not cl.q, "queue drained")
    c.emit("sa_deleted", "t0")
    hub.publish_events(c.drain_events())
    await wait_for(lambda: any(m.get("type") == "event" and m["seq"] == 6 for m in sink.msgs), "seq 6")
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    types = [(m["type"], m.get("seq")) for m in sink.msgs]
    assert types == [("hello", 0), ("event", 1), ("event", 2), ("gap", 5), ("event", 6)]
    gap = sink.msgs[3]
    assert (gap["from_seq"], gap["to_seq"], gap["dropped"]) == (3, 5, 3)


def test_tunnel_overflow_replaced_by_snapshot_marker() -> None:
    """More than client_max_updates pending tunnels: they are dropped for one resync entry; memory stays bounded."""
    c, hub = make(20, client_max_updates=5)
    cl = hub.attach(Filters())
    for i in range(20):
        c.update(f"t{i}", state="idle")
        hub.publish_tunnels([f"t{i}"], 1e9)
    assert kinds(cl) == ["r"]
    assert len(cl.q) == 1


async def test_counters_frame_and_catch_up() -> None:
    """A frame carries rows of changed tunnels; a client that missed a frame gets one catch-up with latest rows."""
    c, hub = make(3)
    await hub.flush_counters(1e9)  # initial rows for all three
    fast, slow = hub.attach(Filters()), hub.attach(Filters())
    c.update("t0", bytes_in=100)
    hub.note_dirty(c.take_dirty(), 1e9)
    await hub.flush_counters(1e9)
    _, (gen, frames) = fast.q[("c",)]
    assert len(frames) == 1
    frame = orjson.loads(frames[0])
    validate("ws-counters.json", frame)
    assert frame["fields"] == list(COUNTER_FIELDS)
    assert [r[0] for r in frame["rows"]] == ["t0"]
    assert frame["rows"][0][COUNTER_FIELDS.index("bytes_in")] == 100
    fast.q.clear()
    fast.delivered_gen = gen
    c.update("t1", bytes_in=7)
    c.update("t0", bytes_in=200)
    hub.note_dirty(c.take_dirty(), 1e9)
    await hub.flush_counters(1e9)
    # the slow client never sent the first frame: its entry is a catch-up marker
    label, value = slow.q[("c",)]
    assert value is None
    sink = Sink()
    await hub_session.catch_up(hub, slow, label, sink)
    assert len(sink.msgs) == 1
    rows = {r[0]: r for r in sink.msgs[0]["rows"]}
    assert set(rows) == {"t0", "t1"}
    assert rows["t0"][COUNTER_FIELDS.index("bytes_in")] == 200


async def test_state_change_in_counters_sends_full_update() -> None:
    """A state change noticed only through the counters row still produces a full tunnel update."""
    c, hub = make(1)
    await hub.flush_counters(1e9)
    cl = hub.attach(Filters())
    c.update("t0", state="idle")
    hub.note_dirty(c.take_dirty(), 1e9)
    await hub.flush_counters(1e9)
    assert ("t", "t0") in cl.q
    assert orjson.loads(cl.q[("t", "t0")][1])["tunnel"]["state"] == "idle"


def test_state_filter_sees_tunnel_leave() -> None:
    """With state=down, a tunnel going down then up is sent both times (the second tells it left the view)."""
    c, hub = make(1)
    cl = hub.attach(Filters(state=frozenset({"down"})))
    c.update("t0", state="down")
    hub.publish_tunnels(["t0"], 1e9)
    assert ("t", "t0") in cl.q
    cl.q.clear()
    cl.n_updates = 0
    c.update("t0", state="up")
    hub.publish_tunnels(["t0"], 1e9)
    assert orjson.loads(cl.q[("t", "t0")][1])["tunnel"]["state"] == "up"
    cl.q.clear()
    cl.n_updates = 0
    c.update("t0", state="idle")
    hub.publish_tunnels(["t0"], 1e9)
    assert not cl.q


async def test_snapshot_chunks_then_deltas_in_seq_order() -> None:
    """Five tunnels with chunk size 2: chunks 0..2 (last flagged), then deltas with non-decreasing seq."""
    c, hub = make(5, snapshot_chunk=2)
    cl = hub.attach(Filters())
    sink = Sink()
    task = asyncio.create_task(hub_session.serve(hub, cl, sink, since=None, snapshot=None))
    await wait_for(lambda: any(m.get("last") for m in sink.msgs), "last snapshot chunk")
    c.emit("rekey_started", "t1")
    c.update("t1", state="rekeying")
    hub.publish_events(c.drain_events())
    hub.publish_tunnels(["t1"], 1e9)
    await wait_for(lambda: any(m["type"] == "tunnel" for m in sink.msgs), "tunnel update")
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    snaps = [m for m in sink.msgs if m["type"] == "snapshot"]
    assert [(m["chunk"], m["last"], len(m["tunnels"])) for m in snaps] == [(0, False, 2), (1, False, 2), (2, True, 1)]
    assert sorted(t["id"] for m in snaps for t in m["tunnels"]) == [f"t{i}" for i in range(5)]
    seqs = [m["seq"] for m in sink.msgs if "seq" in m]
    assert seqs == sorted(seqs)
    assert [m["type"] for m in sink.msgs[-2:]] == ["event", "tunnel"]


async def test_resume_replays_missed_events_without_snapshot() -> None:
    """since=SEQ inside the ring: hello resumed, exactly the later events, then changed tunnels; no snapshot."""
    c, hub = make(3)
    last = c.seq
    c.emit("rekey_started", "t2")
    c.update("t2", state="rekeying")
    hub.publish_events(c.drain_events())
    hub.publish_tunnels(["t2"], 1e9)
    cl = hub.attach(Filters())
    sink = Sink()
    task = asyncio.create_task(hub_session.serve(hub, cl, sink, since=last, snapshot=None))
    await wait_for(lambda: any(m["type"] == "tunnel" for m in sink.msgs), "tunnel after resume")
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert sink.msgs[0]["resumed"] is True
    assert [m["event"]["type"] for m in sink.msgs if m["type"] == "event"] == ["rekey_started"]
    assert not any(m["type"] == "snapshot" for m in sink.msgs)
    assert [m["tunnel"]["id"] for m in sink.msgs if m["type"] == "tunnel"] == ["t2"]


async def test_resume_too_old_gets_gap_and_snapshot() -> None:
    """since older than the ring: resumed false, a too_old gap naming the lost range, then a snapshot."""
    c, hub = make(0, ring_size=3)
    c.add("t0")
    for _ in range(6):
        c.emit("sa_added", "t0")
    hub.publish_events(c.drain_events())
    hub.note_dirty(c.take_dirty(), 1e9)
    cl = hub.attach(Filters())
    sink = Sink()
    task = asyncio.create_task(hub_session.serve(hub, cl, sink, since=1, snapshot=None))
    await wait_for(lambda: any(m.get("last") for m in sink.msgs), "snapshot")
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert sink.msgs[0]["resumed"] is False
    gap = sink.msgs[1]
    assert (gap["type"], gap["reason"], gap["from_seq"], gap["to_seq"]) == ("gap", "too_old", 2, 4)


def test_events_since_truncation() -> None:
    """events_since flags a since older than the ring and filters by type."""
    c, hub = make(0, ring_size=4)
    for i in range(8):
        c.emit("sa_added" if i % 2 else "sa_deleted", "t0")
    hub.publish_events(c.drain_events())
    evs, truncated = hub.events_since(2, Filters())
    assert [e["seq"] for e in evs] == [5, 6, 7, 8]
    assert truncated
    evs, truncated = hub.events_since(6, Filters(event=frozenset({"sa_added"})))
    assert [e["seq"] for e in evs] == [8]
    assert not truncated


def test_stalled_clients_detected_by_progress() -> None:
    """A client with queued data and no progress for stall_timeout is reported; an idle one is not."""
    c, hub = make(stall_timeout=10)
    busy, idle = hub.attach(Filters()), hub.attach(Filters())
    c.emit("sa_added", "t0", netns="other")
    hub.publish_events(c.drain_events())
    idle.q.clear()
    assert hub.stalled(busy.progress + 5) == []
    assert hub.stalled(busy.progress + 11) == [busy]


async def test_100k_new_tunnels_published_in_chunks() -> None:
    """100k tunnels appearing at once: note_dirty publishes none of them itself, the flush publishes them
    500 at a time and lets the loop run other tasks between chunks (counted by ``LoopTicks``, not timed:
    the wall-clock figures are in ``bench/timing_bench.py``), every tunnel gets known, and an attached
    client's queue stays bounded (one snapshot marker)."""
    from monitor.serve.hub import SYNC_TUNNELS
    from tests.test_web_fakes import LoopTicks

    n = 100_000
    c = FakeCorrelator()
    for i in range(n):
        c.add(f"t{i:06d}", n=i)
    c.drain_events()
    ticks = LoopTicks()
    built: list[int] = []  # tick of each tunnel_json call (publishing full updates)
    rowed: list[int] = []  # tick of each counters_row call (the counters frame)
    c.tunnel_json = ticks.record(c.tunnel_json, built)  # type: ignore[method-assign]
    c.counters_row = ticks.record(c.counters_row, rowed)  # type: ignore[method-assign]
    hub = Hub(c, clock=lambda: 1e9)
    published: list[tuple[int, int]] = []  # (tick, tunnels) of each publish_tunnels call
    publish = hub.publish_tunnels

    def spy(ids: Any, now: float) -> None:
        ids = list(ids)
        published.append((ticks.n, len(ids)))
        publish(ids, now)

    hub.publish_tunnels = spy  # type: ignore[method-assign]
    cl = hub.attach(Filters())
    ticks.start()
    hub.note_dirty(c.take_dirty(), 1e9)
    # note_dirty is synchronous: it must leave the 100k full updates to the chunked flush
    assert published == []
    assert built == []
    assert n == len(hub.pending_full)
    rows = await hub.flush_counters(1e9)
    await ticks.stop()
    assert n == rows
    assert n == len(hub.meta)
    assert [SYNC_TUNNELS] * (n // SYNC_TUNNELS) == [k for _, k in published]
    pub_ticks = [t for t, _ in published]
    assert len(set(pub_ticks)) == len(pub_ticks), "two chunks were published without the loop running in between"
    assert ticks.longest_run(built) <= SYNC_TUNNELS
    assert n == len(rowed)
    assert ticks.longest_run(rowed) <= 2000, f"{ticks.longest_run(rowed)} counters rows in one loop turn"
    assert len(cl.q) <= hub.client_max_updates + 2
    assert ("r",) in cl.q
    _, (_, frames) = cl.q[("c",)]
    assert [len(orjson.loads(f)["rows"]) for f in frames] == [5000] * 20
