"""Fan-out of tunnel state and health events to websocket clients (I/O shell, transport-agnostic).

Theory of operation
-------------------
* Every update is serialised **once** with orjson; the same ``bytes`` object is queued to every client
  whose filters match. Counters frames are serialised once per distinct filter set.
* Each client owns one ``OrderedDict`` queue whose keys make coalescing O(1):
  ``("e", seq)`` an event, ``("t", id)`` the latest full tunnel (re-inserted at the end on update, so the
  stream stays in ``seq`` order), ``("c",)`` the pending counters frame, ``("g", n)`` a gap marker,
  ``("r",)`` "send a fresh snapshot", ``("d", n)`` a reply to the client's own request.
* Memory per client is bounded: at most ``client_queue`` events (newer ones are dropped and reported by
  a ``gap``), at most ``client_max_updates`` tunnel updates (beyond that they are replaced by one
  snapshot), one counters entry (a client that missed frames gets a catch-up frame built from the hub's
  latest rows), and at most ``MAX_REPLIES`` replies.
* Every queued entry carries a ``seq`` label: the newest event ``seq`` when it was queued. Content that
  is generated lazily (snapshots, catch-ups) may be newer than its label, never older, so the stream
  stays monotonic in ``seq`` and every state message is idempotent.
* Stall detection is the caller's job via :meth:`Hub.stalled` (``monitor.serve.web`` closes such clients
  with code 4008).
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from monitor import __version__

SCHEMA = 1
MAX_REPLIES = 8
#: Tunnel updates published synchronously at most; bigger batches go out in chunks from flush_counters.
SYNC_TUNNELS = 500
#: Rows per counters frame: a big fleet's interval goes out as several frames, serialised between yields.
COUNTERS_CHUNK = 5000
# The row layout of ``Correlator.counters_row`` (monitor/health/tunnel.py ``Tunnel.counters_row``).
COUNTER_FIELDS = ("id", "bytes_in", "bytes_out", "packets_in", "packets_out", "rate_in_bps", "rate_out_bps",
                  "state")
_STATE = COUNTER_FIELDS.index("state")
STATES = ("up", "idle", "one-way", "rekeying", "expiring", "down", "errors")

Send = Callable[[bytes], Awaitable[None]]
SendMany = Callable[[list[bytes]], Awaitable[None]]
#: Most messages handed to one ``send_many`` call (one transport write of that many frames).
MAX_BATCH = 256


class TunnelView(Protocol):
    """What the hub reads from the correlator (``monitor.health.correlate.Correlator`` satisfies it)."""

    @property
    def seq(self) -> int:
        """Sequence number of the newest health event."""
        ...

    def tunnel_ids(self) -> Iterable[str]:
        """Ids of all known tunnels."""
        ...

    def tunnel_json(self, tunnel_id: str, now: float) -> dict[str, Any] | None:
        """Public JSON of one tunnel, or None if unknown."""
        ...


def _default(obj: Any) -> Any:
    if isinstance(obj, tuple | set | frozenset):
        return list(obj)
    return str(obj)


def dumps(obj: Any) -> bytes:
    """Serialise with orjson (tuples and unknown types degrade to lists and strings)."""
    return orjson.dumps(obj, default=_default)


def _snapshot_message(seq: int, ts: float, n: int, last: bool, tunnels: list[bytes]) -> bytes:
    """A ``snapshot`` message from already serialised tunnels (the same bytes as serialising them nested)."""
    head = dumps({"schema": SCHEMA, "type": "snapshot", "seq": seq, "ts": ts, "chunk": n, "last": last})
    return head[:-1] + b',"tunnels":[' + b",".join(tunnels) + b"]}"


@dataclass(frozen=True)
class Filters:
    """Client filters; empty means "everything". See docs/api.md "Common query filters"."""

    tunnel: frozenset[str] = frozenset()
    netns: frozenset[str] = frozenset()
    state: frozenset[str] = frozenset()
    event: frozenset[str] = frozenset()

    @classmethod
    def from_query(cls, query: Mapping[str, str] | Any) -> Filters:
        """Build from a (multi)dict of query parameters; raises ValueError on a bad state."""
        def values(*names: str) -> frozenset[str]:
            out: set[str] = set()
            for name in names:
                raw = query.getall(name, []) if hasattr(query, "getall") else [query.get(name, "")]
                for item in raw:
                    out.update(v.strip() for v in str(item).split(",") if v.strip())
            return frozenset(out)

        f = cls(values("tunnel"), values("netns"), values("state"), values("event", "type"))
        bad = f.state - set(STATES)
        if bad:
            raise ValueError(f"unknown state {sorted(bad)[0]!r} (states: {', '.join(STATES)})")
        return f

    @property
    def empty(self) -> bool:
        """True when nothing is filtered out."""
        return not (self.tunnel or self.netns or self.state or self.event)

    def tunnel_ok(self, tid: str, netns: str, state: str | None) -> bool:
        """Does a tunnel with these attributes pass?"""
        return (
            (not self.tunnel or tid in self.tunnel)
            and (not self.netns or netns in self.netns)
            and (not self.state or state in self.state)
        )

    def event_ok(self, ev: Mapping[str, Any]) -> bool:
        """Does an event pass? (The state filter does not apply to events.)"""
        return (
            (not self.tunnel or ev.get("tunnel") in self.tunnel)
            and (not self.netns or ev.get("netns") in self.netns)
            and (not self.event or ev.get("type") in self.event)
        )

    def to_json(self) -> dict[str, list[str]]:
        """The filters as sorted lists (for the hello message)."""
        return {k: sorted(getattr(self, k)) for k in ("tunnel", "netns", "state", "event")}


class Client:
    """One subscriber's bounded queue. Created by :meth:`Hub.attach`."""

    def __init__(self, hub: Hub, filters: Filters) -> None:
        self.hub = hub
        self.filters = filters
        self.q: OrderedDict[Hashable, tuple[int, Any]] = OrderedDict()
        self.n_events = 0
        self.n_updates = 0
        self.n_replies = 0
        self.resync = False
        self.delivered_gen = hub.gen
        #: Newest event seq when the client attached: later events are in its queue, earlier ones not.
        self.attach_seq = hub.view.seq
        self.wake = asyncio.Event()
        self.progress = time.monotonic()
        self.sent_messages = 0
        self.dropped_total = 0
        #: Set by the transport (monitor.serve.web): called once when the client is found stalled.
        self.on_stall: Callable[[], None] | None = None
        #: Set by the transport for the hub's flusher: ``can_write()`` (not paused, not closing) and
        #: ``write_run(messages)`` (write them now, synchronously, in order).
        self.can_write: Callable[[], bool] | None = None
        self.write_run: Callable[[list[bytes]], None] | None = None
        #: True while this client's writer task waits with an empty queue (nothing in flight).
        self.idle = False
        self._open_gap: list[int] | None = None  # [from_seq, to_seq, count] of the last gap entry
        self._ids = itertools.count()

    def _put(self, key: Hashable, value: tuple[int, Any]) -> None:
        if not self.q:
            self.progress = time.monotonic()
        self.q[key] = value
        if self.idle and self.write_run is not None:
            self.hub.want_flush(self)  # written by the hub's flusher this loop iteration, no task wake-up
        else:
            self.wake.set()

    def push_event(self, seq: int, data: bytes) -> None:
        """Queue an event, or count it into a gap when the queue is full."""
        if self.n_events < self.hub.client_queue:
            self.n_events += 1
            self._open_gap = None
            self._put(("e", seq), (seq, data))
            return
        self.dropped_total += 1
        self.hub.dropped_total += 1
        if self._open_gap is not None:
            self._open_gap[1] = seq
            self._open_gap[2] += 1
        else:
            self._open_gap = [seq, seq, 1]
            self._put(("g", next(self._ids)), (seq, self._open_gap))

    def push_tunnel(self, tid: str, seq: int, data: bytes | None) -> None:
        """Queue the latest full tunnel (``None``: generate at send time); replaces a pending one."""
        if self.resync:
            return
        key = ("t", tid)
        if key in self.q:
            del self.q[key]
        elif self.n_updates >= self.hub.client_max_updates:
            for k in [k for k in self.q if k[0] == "t"]:  # type: ignore[index]
                del self.q[k]
            self.n_updates = 0
            self.resync = True
            self._put(("r",), (seq, None))
            return
        else:
            self.n_updates += 1
        self._put(key, (seq, data))

    def push_counters(self, seq: int, gen: int, data: list[bytes] | None) -> None:
        """Queue a counters frame; a client that is behind gets a catch-up marker instead."""
        key = ("c",)
        behind = key in self.q or self.delivered_gen != gen - 1
        if key in self.q:
            del self.q[key]
        self._put(key, (seq, None if behind else (gen, data)))

    def push_reply(self, data: bytes) -> bool:
        """Queue a reply to the client's own request; False if too many are pending."""
        if self.n_replies >= MAX_REPLIES:
            return False
        self.n_replies += 1
        self._put(("d", next(self._ids)), (0, data))
        return True


class Hub:
    """Publishes correlator output to attached clients; owns the event ring buffer."""

    def __init__(
        self,
        view: TunnelView,
        *,
        ring_size: int = 10_000,
        client_queue: int = 1_000,
        client_max_updates: int = 10_000,
        snapshot_chunk: int = 500,
        stall_timeout: float = 30.0,
        clock: Callable[[], float] = time.time,
        hello: Mapping[str, Any] | None = None,
    ) -> None:
        self.view = view
        #: Constant fields of the hello message (server, instance, counters_interval, counters_fields).
        self.hello: dict[str, Any] = {"server": f"monitor {__version__}", "instance": uuid.uuid4().hex,
                                      "counters_interval": 1.0, "counters_fields": COUNTER_FIELDS,
                                      **(hello or {})}
        self.client_queue = client_queue
        self.client_max_updates = client_max_updates
        self.snapshot_chunk = snapshot_chunk
        self.stall_timeout = stall_timeout
        self.clock = clock
        self.clients: set[Client] = set()
        self.ring: deque[tuple[int, dict[str, Any], bytes]] = deque(maxlen=ring_size)
        self.meta: dict[str, tuple[str, str | None]] = {}  # id -> (netns, state)
        self.upd_seq: dict[str, int] = {}  # id -> seq label of its last full update
        self._removed: deque[tuple[int, str]] = deque()  # (seq label, id) of removals, oldest first
        self.rows: dict[str, list[Any]] = {}  # id -> latest counters row
        self.row_gen: dict[str, int] = {}
        self.gen = 0
        self.pending: set[str] = set()
        self._flush_set: dict[Client, None] = {}
        self._flush_handle: asyncio.Handle | None = None
        self.pending_full: set[str] = set()  # tunnels owed a full update, sent in chunks by flush_counters
        self.dropped_total = 0
        self.gaps_total = 0
        self.stalled_total = 0

    # -- publishing (called by the daemon) -------------------------------------------------------

    def attach(self, filters: Filters) -> Client:
        """Register a client; from now on it receives every matching delta."""
        c = Client(self, filters)
        self.clients.add(c)
        return c

    def detach(self, c: Client) -> None:
        """Forget a client (idempotent)."""
        self.clients.discard(c)
        self._flush_set.pop(c, None)

    def want_flush(self, c: Client) -> None:
        """Have the flusher write this idle client's queue at the end of this loop iteration."""
        self._flush_set[c] = None
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Write every idle client's ready run in one transport write each (bench/RESULTS.md, fan-out).

        One callback per loop iteration instead of one writer-task wake-up per client per event. A
        client that cannot take data now (paused transport), or whose queue holds more than a ready run
        (gap markers, counters, snapshots), is handed to its own writer task, which has the flow
        control and the slow paths. Only idle clients are written here, so nothing overtakes.
        """
        self._flush_handle = None
        todo, self._flush_set = self._flush_set, {}
        for c in todo:
            if not c.idle or c.wake.is_set() or not c.q:
                continue
            if c.write_run is None or c.can_write is None or not c.can_write():
                c.wake.set()
                continue
            run = self._ready_run(c)
            if run:
                c.write_run(run)
                c.sent_messages += len(run)
                c.progress = time.monotonic()
            if c.q:
                c.wake.set()

    def publish_events(self, events: Sequence[Any]) -> None:
        """Fan out health events (objects with ``to_json()`` or dicts), oldest first."""
        for ev in events:
            d: dict[str, Any] = ev.to_json() if hasattr(ev, "to_json") else dict(ev)
            seq = int(d["seq"])
            data = dumps({"schema": SCHEMA, "type": "event", "seq": seq, "event": d})
            self.ring.append((seq, d, data))
            for c in self.clients:
                if c.filters.event_ok(d):
                    c.push_event(seq, data)

    def publish_tunnels(self, ids: Iterable[str], now: float) -> None:
        """Send full updates (or removals) for these tunnels to every matching client."""
        seq = self.view.seq
        for tid in ids:
            t = self.view.tunnel_json(tid, now)
            old = self.meta.get(tid)
            if t is None:
                if old is None:
                    continue
                del self.meta[tid]
                self.rows.pop(tid, None)
                self.row_gen.pop(tid, None)
                self.upd_seq[tid] = seq
                self._forget_removed(tid, seq)
                data = dumps({"schema": SCHEMA, "type": "tunnel_removed", "seq": seq, "ts": now,
                              "id": tid, "netns": old[0]})
                new: tuple[str, str | None] = (old[0], None)
            else:
                new = (str(t.get("netns")), t.get("state"))
                self.meta[tid] = new
                self.upd_seq[tid] = seq
                data = dumps({"schema": SCHEMA, "type": "tunnel", "seq": seq, "ts": now, "tunnel": t})
            for c in self.clients:
                f = c.filters
                if f.tunnel_ok(tid, new[0], new[1]) or (
                    old is not None and f.state and f.tunnel_ok(tid, old[0], old[1])
                ):
                    c.push_tunnel(tid, seq, data)

    def _forget_removed(self, tid: str, seq: int) -> None:
        """Record a removal; drop those older than the ring (no ``?since=`` resume can ask for them)."""
        self._removed.append((seq, tid))
        oldest = self.ring[0][0] if self.ring else seq + 1
        while self._removed and self._removed[0][0] < oldest:
            s, old = self._removed.popleft()
            if old not in self.meta and self.upd_seq.get(old) == s:
                del self.upd_seq[old]

    def publish_tunnels_soon(self, ids: Iterable[str], now: float) -> None:
        """Publish full updates now if they are few, else queue them for the chunked flush."""
        ids = list(ids)
        if len(ids) + len(self.pending_full) <= SYNC_TUNNELS:
            self.publish_tunnels(ids, now)
        else:
            self.pending_full.update(ids)

    def note_dirty(self, ids: Iterable[str], now: float) -> None:
        """Remember changed tunnels for the next counters frame; new tunnels are published soon."""
        ids = list(ids)
        self.pending.update(ids)
        fresh = [tid for tid in ids if tid not in self.meta]
        if fresh:
            self.publish_tunnels_soon(fresh, now)

    async def _publish_chunked(self, ids: Iterable[str], now: float) -> None:
        todo = list(ids)
        for i in range(0, len(todo), SYNC_TUNNELS):
            if i:
                await asyncio.sleep(0)
            self.publish_tunnels(todo[i:i + SYNC_TUNNELS], now)

    def counters_row(self, tid: str, now: float) -> list[Any] | None:
        """One counters row in ``COUNTER_FIELDS`` order, from the correlator."""
        fn = getattr(self.view, "counters_row", None)
        r: Any = fn(tid) if fn is not None else self.view.tunnel_json(tid, now)
        if r is None:
            return None
        if isinstance(r, Mapping):
            return [r.get(k, tid if k == "id" else None) for k in COUNTER_FIELDS]
        return list(r)

    async def flush_counters(self, now: float) -> int:
        """Build and fan out one counters frame for the pending tunnels; returns its row count."""
        full, self.pending_full = self.pending_full, set()
        await self._publish_chunked(full, now)
        ids, self.pending = self.pending, set()
        rows: list[list[Any]] = []
        changed: list[str] = []
        gen = self.gen + 1
        for i, tid in enumerate(ids):
            if i and i % 2000 == 0:
                await asyncio.sleep(0)
            row = self.counters_row(tid, now)
            old = self.meta.get(tid)
            if row is None or old is None or old[1] != row[_STATE]:
                changed.append(tid)
            if row is not None:
                self.rows[tid] = row
                self.row_gen[tid] = gen
                rows.append(row)
        await self._publish_chunked(changed, now)
        self.gen = gen
        if not rows:
            return 0
        seq = self.view.seq
        by_filter: dict[Filters, list[bytes]] = {}
        for c in list(self.clients):
            data = by_filter.get(c.filters)
            if data is None:
                mine = rows if c.filters.empty else self._filter_rows(rows, c.filters)
                data = by_filter[c.filters] = []
                for i in range(0, len(mine), COUNTERS_CHUNK):
                    if i:
                        await asyncio.sleep(0)
                    data.append(self._frame(mine[i:i + COUNTERS_CHUNK], seq, now))
            if data:
                c.push_counters(seq, gen, data)
            elif c.delivered_gen == gen - 1:
                c.delivered_gen = gen  # nothing for this client in this frame
        return len(rows)

    def _filter_rows(self, rows: Iterable[list[Any]], f: Filters) -> list[list[Any]]:
        return [r for r in rows if f.tunnel_ok(r[0], self.meta.get(r[0], ("", None))[0], r[_STATE])]

    def _frame(self, rows: list[list[Any]], seq: int, now: float) -> bytes:
        return dumps({"schema": SCHEMA, "type": "counters", "seq": seq, "ts": now,
                      "fields": COUNTER_FIELDS, "rows": rows})

    # -- queries -------------------------------------------------------------------------------

    def events_since(self, since: int | None, filters: Filters) -> tuple[list[dict[str, Any]], bool]:
        """Ring events with ``seq > since`` passing ``filters``; second value: some were evicted."""
        oldest = self.ring[0][0] if self.ring else self.view.seq + 1
        truncated = since is not None and since < oldest - 1
        out = [d for s, d, _ in self.ring if (since is None or s > since) and filters.event_ok(d)]
        return out, truncated

    def stalled(self, now_monotonic: float) -> list[Client]:
        """Clients with queued data and no progress for ``stall_timeout`` seconds."""
        return [c for c in self.clients if c.q and now_monotonic - c.progress > self.stall_timeout]

    # -- one client's session ------------------------------------------------------------------

    async def serve(self, c: Client, send: Send, *, since: int | None, snapshot: bool | None,
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
            oldest = self.ring[0][0] if self.ring else seq + 1
            if since <= seq and since >= oldest - 1:
                resumed = True
                replay = [data for s, d, data in self.ring if since < s <= seq and c.filters.event_ok(d)]
                for tid, s in self.upd_seq.items():
                    if s > since:
                        c.push_tunnel(tid, seq, None)
                c.delivered_gen = 0
                c.push_counters(seq, self.gen, None)
        want_snapshot = snapshot if snapshot is not None else not resumed
        await send(dumps({"schema": SCHEMA, "type": "hello", "seq": seq, "resumed": resumed,
                          "snapshot": want_snapshot, **self.hello, "filters": c.filters.to_json()}))
        if since is not None and not resumed and since < seq:
            oldest = self.ring[0][0] if self.ring else seq + 1
            await send(dumps({"schema": SCHEMA, "type": "gap", "seq": seq, "reason": "too_old",
                              "dropped": max(0, min(oldest - 1, seq) - since),
                              "from_seq": since + 1, "to_seq": min(oldest - 1, seq),
                              "snapshot_follows": want_snapshot}))
        for data in replay:
            await send(data)
        if want_snapshot:
            await self.send_snapshot(c, send, seq)
        await self._drain(c, send, send_many)

    async def send_snapshot(self, c: Client, send: Send, seq: int) -> None:
        """Send all (filtered) tunnels in chunks, yielding to the loop between them.

        Each tunnel is serialised as soon as it is built, so only bytes (not GC-tracked dicts) pile up
        in a chunk: holding 500 tunnel dicts per chunk promoted thousands of objects per chunk into the
        old generation and set off full garbage collections of the whole 100k-tunnel heap in the middle
        of the snapshot (bench/RESULTS.md, fan-out (d)).
        """
        c.delivered_gen = self.gen
        now = self.clock()
        ids = list(self.view.tunnel_ids())
        f = c.filters
        chunk: list[bytes] = []
        n = 0
        for i, tid in enumerate(ids):
            if f.tunnel and tid not in f.tunnel:
                continue
            if i % 1000 == 999:
                await asyncio.sleep(0)
            t = self.view.tunnel_json(tid, now)
            if t is None or not f.tunnel_ok(tid, str(t.get("netns")), t.get("state")):
                continue
            chunk.append(dumps(t))
            del t
            if len(chunk) >= self.snapshot_chunk:
                await send(_snapshot_message(seq, now, n, False, chunk))
                c.progress = time.monotonic()
                n += 1
                chunk = []
                await asyncio.sleep(0)
                now = self.clock()
        await send(_snapshot_message(seq, now, n, True, chunk))

    @staticmethod
    def _ready_run(c: Client) -> list[bytes]:
        """Pop the leading run of queue entries that are ready bytes (events, built tunnels, replies)."""
        out: list[bytes] = []
        q = c.q
        while q and len(out) < MAX_BATCH:
            key = next(iter(q))
            kind = key[0]
            value = q[key][1]
            if kind == "e":
                c.n_events -= 1
            elif kind == "t" and value is not None:
                c.n_updates -= 1
            elif kind == "d":
                c.n_replies -= 1
            else:
                break
            del q[key]
            out.append(value)
        return out

    async def _drain(self, c: Client, send: Send, send_many: SendMany | None = None) -> None:
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
                run = self._ready_run(c)
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
                data = value if value is not None else self._lazy_tunnel(key[1], label)  # type: ignore[index]
            elif kind == "c":
                if value is not None:
                    c.delivered_gen, frames = value
                    for data in frames:
                        await send(data)
                else:
                    await self._catch_up(c, label, send)
                c.sent_messages += 1
                c.progress = time.monotonic()
                continue
            elif kind == "g":
                c._open_gap = None if c._open_gap is value else c._open_gap
                self.gaps_total += 1
                data = dumps({"schema": SCHEMA, "type": "gap", "seq": value[1], "reason": "slow_client",
                              "dropped": value[2], "from_seq": value[0], "to_seq": value[1],
                              "snapshot_follows": False})
            elif kind == "r":
                c.resync = False
                self.gaps_total += 1
                await send(dumps({"schema": SCHEMA, "type": "gap", "seq": label, "reason": "overflow",
                                  "dropped": 0, "from_seq": label, "to_seq": label,
                                  "snapshot_follows": True}))
                await self.send_snapshot(c, send, self.view.seq)
                c.progress = time.monotonic()
                continue
            else:
                c.n_replies -= 1
                data = value
            if data:
                await send(data)
                c.sent_messages += 1
            c.progress = time.monotonic()

    def _lazy_tunnel(self, tid: str, label: int) -> bytes:
        now = self.clock()
        t = self.view.tunnel_json(tid, now)
        if t is None:
            netns = self.meta.get(tid, ("", None))[0]
            return dumps({"schema": SCHEMA, "type": "tunnel_removed", "seq": label, "ts": now,
                          "id": tid, "netns": netns})
        return dumps({"schema": SCHEMA, "type": "tunnel", "seq": label, "ts": now, "tunnel": t})

    async def _catch_up(self, c: Client, label: int, send: Send) -> None:
        """Send the latest rows of every tunnel changed since the client's last delivered frame."""
        since = c.delivered_gen
        rows = [self.rows[t] for t, g in self.row_gen.items() if g > since and t in self.rows]
        if not c.filters.empty:
            rows = self._filter_rows(rows, c.filters)
        c.delivered_gen = self.gen
        now = self.clock()
        for i in range(0, len(rows), COUNTERS_CHUNK):
            await send(self._frame(rows[i:i + COUNTERS_CHUNK], label, now))

    def detail(self, ids: Sequence[str]) -> bytes:
        """The ``detail`` reply for these tunnel ids."""
        now = self.clock()
        found: list[dict[str, Any]] = []
        unknown: list[str] = []
        for tid in ids:
            t = self.view.tunnel_json(tid, now)
            if t is None:
                unknown.append(tid)
            else:
                found.append(t)
        return dumps({"schema": SCHEMA, "type": "detail", "seq": self.view.seq, "ts": now,
                      "tunnels": found, "unknown": unknown})
