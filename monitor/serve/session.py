"""One websocket client's session: hello, resume or snapshot, then its queue until cancelled (I/O shell).

The transport (``monitor.serve.handlers``) hands in ``send`` (one message) and optionally ``send_many``
(several ready messages in one transport write); the session never touches a socket itself.
Resume (``?since=``) replays the hub's event ring and queues the tunnels updated since, so a client
that reconnects within the ring sees every event once and the current state of everything that changed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from monitor.serve.client_queue import Client
from monitor.serve.protocol import (
    COUNTERS_CHUNK,
    SCHEMA,
    counters_frame,
    dumps,
    gap_message,
    removed_message,
    snapshot_message,
    tunnel_message,
)

if TYPE_CHECKING:
    from monitor.serve.hub import Hub

Send = Callable[[bytes], Awaitable[None]]
SendMany = Callable[[list[bytes]], Awaitable[None]]


async def serve(hub: Hub, c: Client, send: Send, *, since: int | None, snapshot: bool | None,
                send_many: SendMany | None = None) -> None:
    """Run a client's session: hello, resume or snapshot, then its queue, until cancelled.

    ``send_many`` (optional) sends several ready messages at once, in order; when given, runs of
    queued events, tunnel updates and replies go out through it (one transport write per run instead
    of one per message: the fan-out profile in bench/RESULTS.md showed the per-frame write dominating).
    """
    seq = c.attach_seq
    resumed = False
    replay: list[bytes] = []
    if since is not None:
        oldest = hub.ring[0][0] if hub.ring else seq + 1
        if since <= seq and since >= oldest - 1:
            resumed = True
            replay = [data for s, d, data in hub.ring if since < s <= seq and c.filters.event_ok(d)]
            for tid, s in hub.upd_seq.items():
                if s > since:
                    c.push_tunnel(tid, seq, None)
            c.delivered_gen = 0
            c.push_counters(seq, hub.gen, None)
    want_snapshot = snapshot if snapshot is not None else not resumed
    await send(dumps({"schema": SCHEMA, "type": "hello", "seq": seq, "resumed": resumed,
                      "snapshot": want_snapshot, **hub.hello, "filters": c.filters.to_json()}))
    if since is not None and not resumed and since < seq:
        oldest = hub.ring[0][0] if hub.ring else seq + 1
        await send(gap_message(seq, "too_old", max(0, min(oldest - 1, seq) - since),
                               span=(since + 1, min(oldest - 1, seq)), snapshot_follows=want_snapshot))
    for data in replay:
        await send(data)
    if want_snapshot:
        await send_snapshot(hub, c, send, seq)
    hub.push_netns_to(c, hub.clock())  # every namespace's current view; later ones only when it changes
    await drain(hub, c, send, send_many)


async def send_snapshot(hub: Hub, c: Client, send: Send, seq: int) -> None:
    """Send all (filtered) tunnels in chunks, yielding to the loop between them.

    Each tunnel is serialised as soon as it is built, so only bytes (not GC-tracked dicts) pile up
    in a chunk: holding 500 tunnel dicts per chunk promoted thousands of objects per chunk into the
    old generation and set off full garbage collections of the whole 100k-tunnel heap in the middle
    of the snapshot (bench/RESULTS.md, fan-out (d)).
    """
    c.delivered_gen = hub.gen
    now = hub.clock()
    ids = list(hub.view.tunnel_ids())
    f = c.filters
    chunk: list[bytes] = []
    n = 0
    for i, tid in enumerate(ids):
        if f.tunnel and tid not in f.tunnel:
            continue
        if i % 1000 == 999:
            await asyncio.sleep(0)
        t = hub.view.tunnel_json(tid, now)
        if t is None or not f.tunnel_ok(tid, str(t.get("netns")), t.get("state")):
            continue
        chunk.append(dumps(t))
        del t
        if len(chunk) >= hub.snapshot_chunk:
            await send(snapshot_message(seq, hub.wall(now), n, False, chunk))
            c.progress = time.monotonic()
            n += 1
            chunk = []
            await asyncio.sleep(0)
            now = hub.clock()
    await send(snapshot_message(seq, hub.wall(now), n, True, chunk))


async def drain(hub: Hub, c: Client, send: Send, send_many: SendMany | None = None) -> None:
    """Send the client's queue as it fills, forever (the caller cancels the task to end the session)."""
    while True:
        if not c.q:
            c.wake.clear()
            c.idle = True
            try:
                await c.wake.wait()
            finally:
                c.idle = False
            continue
        if send_many is not None:
            run = c.ready_run()
            if run:
                await send_many(run)
                c.sent_messages += len(run)
                c.progress = time.monotonic()
                continue
        key, (label, value) = c.q.popitem(last=False)
        kind = key[0]  # type: ignore[index]
        if kind == "e":
            c.n_events -= 1
            data = value
        elif kind == "t":
            c.n_updates -= 1
            data = value if value is not None else lazy_tunnel(hub, key[1], label)  # type: ignore[index]
        elif kind == "c":
            if value is not None:
                c.delivered_gen, frames = value
                for data in frames:
                    await send(data)
            else:
                await catch_up(hub, c, label, send)
            c.sent_messages += 1
            c.progress = time.monotonic()
            continue
        elif kind == "g":
            c._open_gap = None if c._open_gap is value else c._open_gap
            hub.gaps_total += 1
            data = gap_message(value[1], "slow_client", value[2], span=(value[0], value[1]),
                               snapshot_follows=False)
        elif kind == "r":
            c.resync = False
            hub.gaps_total += 1
            await send(gap_message(label, "overflow", 0, span=(label, label), snapshot_follows=True))
            await send_snapshot(hub, c, send, hub.seq)
            c.progress = time.monotonic()
            continue
        elif kind == "n":
            data = value
        else:
            c.n_replies -= 1
            data = value
        if data:
            await send(data)
            c.sent_messages += 1
        c.progress = time.monotonic()


def lazy_tunnel(hub: Hub, tid: str, label: int) -> bytes:
    """A tunnel update generated at send time (queued as ``None`` by a resume), or its removal."""
    now = hub.clock()
    t = hub.view.tunnel_json(tid, now)
    if t is None:
        return removed_message(label, hub.wall(now), tid, hub.meta.get(tid, ("", None))[0])
    return tunnel_message(label, hub.wall(now), t)


async def catch_up(hub: Hub, c: Client, label: int, send: Send) -> None:
    """Send the latest rows of every tunnel changed since the client's last delivered frame."""
    since = c.delivered_gen
    rows = [hub.rows[t] for t, g in hub.row_gen.items() if g > since and t in hub.rows]
    if not c.filters.empty:
        rows = hub.filter_rows(rows, c.filters)
    c.delivered_gen = hub.gen
    now = hub.clock()
    for i in range(0, len(rows), COUNTERS_CHUNK):
        await send(counters_frame(rows[i:i + COUNTERS_CHUNK], label, hub.wall(now)))


def detail(hub: Hub, ids: Sequence[str]) -> bytes:
    """The ``detail`` reply for these tunnel ids."""
    now = hub.clock()
    found: list[dict[str, Any]] = []
    unknown: list[str] = []
    for tid in ids:
        t = hub.view.tunnel_json(tid, now)
        if t is None:
            unknown.append(tid)
        else:
            found.append(t)
    return dumps({"schema": SCHEMA, "type": "detail", "seq": hub.seq, "ts": hub.wall(now),
                  "tunnels": found, "unknown": unknown})
