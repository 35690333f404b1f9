"""Fan-out of tunnel state and health events to websocket clients (I/O shell, transport-agnostic).

Theory of operation
-------------------
* Every update is serialised **once** with orjson; the same ``bytes`` object is queued to every client
  whose filters match. Counters frames are serialised once per distinct filter set.
* Each client owns one coalescing queue (:mod:`monitor.serve.client_queue`); a client's session
  (:mod:`monitor.serve.session`) drains it; message bytes come from :mod:`monitor.serve.protocol`.
* Memory per client is bounded: at most ``client_queue`` events (newer ones are dropped and reported by
  a ``gap``), at most ``client_max_updates`` tunnel updates (beyond that they are replaced by one
  snapshot), one counters entry (a client that missed frames gets a catch-up frame built from the hub's
  latest rows), and at most ``MAX_REPLIES`` replies.
* Every queued entry carries a ``seq`` label: the newest event ``seq`` when it was queued. Content that
  is generated lazily (snapshots, catch-ups) may be newer than its label, never older, so the stream
  stays monotonic in ``seq`` and every state message is idempotent.
* Stall detection is the caller's job via :meth:`Hub.stalled` (``monitor.serve.web`` closes such clients
  with code 4008).
* **Direct broadcast** (the hot path at 1,000 clients; bench/RESULTS.md, fan-out): the first event published
  in a loop iteration opens an *epoch* and sorts the clients once: those with no filters whose writer is idle
  with an empty queue and whose transport can take data are *direct*; their events are not queued one by one
  but collected once for all of them, and the flusher at the end of the iteration frames the epoch's events
  once and writes the same bytes to each direct client (one transport write per client per iteration, no
  per-client Python work per event). Anything else queued for a direct client (a tunnel update, counters, a
  reply) first *demotes* it: the epoch's events so far go into its queue as ordinary events (queue limit and
  gaps apply), then the new entry, so nothing overtakes. A direct client whose transport is paused at flush
  time is demoted the same way and its writer task takes over with flow control.
* **Flush tick** (``flush_tick``, setting ``flush_tick``): a direct broadcast is written at the end of the
  loop iteration, unless the previous one ended less than *hold* ago, hold = min(``flush_tick``,
  ``HOLD_FACTOR`` x the time the previous one took to write); then it is written at previous end + hold and
  collects the events published meanwhile. So writing to idle clients takes at most about a third of the
  loop's time however many events come (one write, one ``send``, per client per broadcast: the kernel's
  share of a delivery is per write, not per event), an isolated event goes out at once, and no event waits
  more than ``flush_tick``. Only direct clients' events are held; anything else for such a client demotes it as
  before, and demoted and queued clients are written by the flusher in the same iteration.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from monitor import __version__
from monitor.serve.client_queue import Client
from monitor.serve.protocol import (
    COUNTER_FIELDS,
    COUNTERS_CHUNK,
    SCHEMA,
    STATE_COLUMN,
    Filters,
    TunnelView,
    counters_frame,
    dumps,
    removed_message,
    tunnel_message,
)

#: Tunnel updates published synchronously at most; bigger batches go out in chunks from flush_counters.
SYNC_TUNNELS = 500
#: A direct broadcast that took d seconds to write holds the next one min(flush_tick, HOLD_FACTOR * d): writing
#: to idle clients then takes at most 1 / (1 + HOLD_FACTOR) of the loop's time (module docstring, "Flush tick").
HOLD_FACTOR = 2.0


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
        flush_tick: float = 0.0,
        clock: Callable[[], float] = time.time,
        timer: Callable[[], float] = time.perf_counter,
        hello: Mapping[str, Any] | None = None,
    ) -> None:
        self.view = view
        #: The seq of the newest event published to clients. Every frame is stamped with it, never with the
        #: correlator's own ``seq``, which runs ahead until the daemon's next publish: a frame stamped ahead
        #: of an event still to come would make the stream's seqs go backwards.
        self.seq = 0
        #: Constant fields of the hello message (server, instance, counters_interval, counters_fields).
        self.hello: dict[str, Any] = {"server": f"monitor {__version__}", "instance": uuid.uuid4().hex,
                                      "counters_interval": 1.0, "counters_fields": COUNTER_FIELDS,
                                      **(hello or {})}
        self.client_queue = client_queue
        self.client_max_updates = client_max_updates
        self.snapshot_chunk = snapshot_chunk
        self.stall_timeout = stall_timeout
        #: Longest hold of a direct broadcast (module docstring, "Flush tick"); ``timer`` times its writes.
        self.flush_tick = flush_tick
        self.timer = timer
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
        #: The open epoch (see the module docstring): its events, its direct and its other clients.
        self._epoch = False
        self._bcast: list[tuple[int, bytes]] = []
        self._direct: list[Client] = []
        self._slow: list[Client] = []
        self._bcast_handle: asyncio.Handle | None = None
        self._last_bcast, self._hold = float("-inf"), 0.0  # loop time of the last direct broadcast; the hold
        self.bcast_epochs = self.bcast_writes = 0  # direct broadcasts written; client writes they made
        #: Set by the transport (``monitor.serve.websocket``): message bytes -> one framed message, so the
        #: epoch's frames are built once for every direct client. None: each client's ``write_run`` frames.
        self.frame: Callable[[bytes], bytes] | None = None
        self.pending_full: set[str] = set()  # tunnels owed a full update, sent in chunks by flush_counters
        self.dropped_total = 0
        self.gaps_total = 0
        self.stalled_total = 0

    # -- publishing (called by the daemon) -------------------------------------------------------

    def attach(self, filters: Filters) -> Client:
        """Register a client; from now on it receives every matching delta."""
        c = Client(self, filters)
        self.clients.add(c)
        if self._epoch:
            self._slow.append(c)  # the rest of this epoch's events reach it through its queue
        return c

    def detach(self, c: Client) -> None:
        """Forget a client (idempotent)."""
        self.clients.discard(c)
        self._flush_set.pop(c, None)
        c.direct = False

    def _open_epoch(self) -> None:
        """Sort the clients for this epoch's events (module docstring): plain attribute reads per client; whether
        a direct client's transport can take data is asked once, when it is written."""
        self._epoch = True
        direct: list[Client] = []
        slow: list[Client] = []
        self._direct, self._slow = direct, slow
        for c in self.clients:
            if c.idle and c.plain and not c.q and c.write_run is not None and not c.wake.is_set():
                c.direct = True
                direct.append(c)
            else:
                slow.append(c)
        if not direct:  # nothing to broadcast to: no epoch, every client through its queue as before
            self._epoch = False
            slow.clear()
            return
        loop = asyncio.get_running_loop()
        due = self._last_bcast + self._hold
        if due <= loop.time():
            self._bcast_handle = loop.call_soon(self._flush_direct)
        else:  # the previous broadcast ended less than the hold ago: this one collects events until then
            self._bcast_handle = loop.call_at(due, self._flush_direct)

    def demote(self, c: Client) -> None:
        """Take ``c`` out of the direct set: this epoch's events so far go into its queue, later ones too."""
        c.direct = False
        if self._epoch:
            self._slow.append(c)
        for seq, data in self._bcast:
            c.push_event(seq, data)

    def _flush_direct(self) -> None:
        self._bcast_handle = None
        if self._epoch:
            self._write_direct()

    def _write_direct(self) -> None:
        """Write the closing epoch's events to its direct clients: framed once, one write per client."""
        bcast, direct = self._bcast, self._direct
        self._epoch, self._direct, self._slow = False, [], []
        if not bcast:
            for c in direct:
                c.direct = False
            return
        datas = [d for _, d in bcast]
        n = len(datas)
        blob = b"".join([self.frame(d) for d in datas]) if self.frame is not None else None
        now = time.monotonic()
        t0 = self.timer()
        written = 0
        for c in direct:  # the hot loop: one check and one write per client
            if not c.direct:  # demoted or detached meanwhile
                continue
            c.direct = False
            if c.can_write is not None and c.can_write():
                if blob is not None and c.write_raw is not None:
                    c.write_raw(blob)
                elif c.write_run is not None:
                    c.write_run(datas)
                c.sent_messages += n
                c.progress = now
                written += 1
            else:
                self.demote(c)
        self._bcast = []
        self._hold = min(self.flush_tick, HOLD_FACTOR * (self.timer() - t0))
        self._last_bcast = asyncio.get_running_loop().time()
        self.bcast_epochs += 1
        self.bcast_writes += written

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
            run = c.ready_run()
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
            self.seq = max(self.seq, seq)
            data = dumps({"schema": SCHEMA, "type": "event", "seq": seq, "event": d})
            self.ring.append((seq, d, data))
            if not self._epoch:
                self._open_epoch()
            if self._epoch:
                self._bcast.append((seq, data))
            for c in self._slow if self._epoch else self.clients:  # direct clients: from the flusher
                if c.filters.event_ok(d):
                    c.push_event(seq, data)

    def publish_netns(self, doc: Mapping[str, Any], now: float) -> None:
        """Send one namespace's view (hints, xfrm_stat, counts) to every client whose filters take the netns."""
        name = str(doc["netns"])
        data = self._netns_message(doc, now)
        for c in self.clients:
            if not c.filters.netns or name in c.filters.netns:
                c.push_netns(name, self.seq, data)

    def push_netns_to(self, c: Client, now: float) -> None:
        """Queue every namespace's current view for one (new) client."""
        for doc in netns_docs(self.view, now):
            if not c.filters.netns or doc["netns"] in c.filters.netns:
                c.push_netns(doc["netns"], self.seq, self._netns_message(doc, now))

    def _netns_message(self, doc: Mapping[str, Any], now: float) -> bytes:
        return dumps({"schema": SCHEMA, "type": "netns", "seq": self.seq, "ts": self.wall(now), "netns": doc})

    def publish_tunnels(self, ids: Iterable[str], now: float) -> None:
        """Send full updates (or removals) for these tunnels to every matching client."""
        seq = self.seq
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
                data = removed_message(seq, self.wall(now), tid, old[0])
                new: tuple[str, str | None] = (old[0], None)
            else:
                new = (str(t.get("netns")), t.get("state"))
                self.meta[tid] = new
                self.upd_seq[tid] = seq
                data = tunnel_message(seq, self.wall(now), t)
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
            if row is None or old is None or old[1] != row[STATE_COLUMN]:
                changed.append(tid)
            if row is not None:
                self.rows[tid] = row
                self.row_gen[tid] = gen
                rows.append(row)
        await self._publish_chunked(changed, now)
        self.gen = gen
        if not rows:
            return 0
        seq = self.seq
        by_filter: dict[Filters, list[bytes]] = {}
        for c in list(self.clients):
            data = by_filter.get(c.filters)
            if data is None:
                mine = rows if c.filters.empty else self.filter_rows(rows, c.filters)
                data = by_filter[c.filters] = []
                for i in range(0, len(mine), COUNTERS_CHUNK):
                    if i:
                        await asyncio.sleep(0)
                    data.append(counters_frame(mine[i:i + COUNTERS_CHUNK], seq, self.wall(now)))
            if data:
                c.push_counters(seq, gen, data)
            elif c.delivered_gen == gen - 1:
                c.delivered_gen = gen  # nothing for this client in this frame
        return len(rows)

    def wall(self, now: float) -> float:
        """Core time ``now`` as wall-clock time, for the ``ts`` of messages (the core's ``wall_skew``)."""
        return now + float(getattr(self.view, "wall_skew", 0.0))

    def filter_rows(self, rows: Iterable[list[Any]], f: Filters) -> list[list[Any]]:
        """The counters rows whose tunnel passes ``f`` (netns and state from the hub's last update)."""
        return [r for r in rows if f.tunnel_ok(r[0], self.meta.get(r[0], ("", None))[0], r[STATE_COLUMN])]

    # -- queries -------------------------------------------------------------------------------

    def events_since(self, since: int | None, filters: Filters) -> tuple[list[dict[str, Any]], bool]:
        """Ring events with ``seq > since`` passing ``filters``; second value: some were evicted."""
        oldest = self.ring[0][0] if self.ring else self.seq + 1
        truncated = since is not None and since < oldest - 1
        out = [d for s, d, _ in self.ring if (since is None or s > since) and filters.event_ok(d)]
        return out, truncated

    def stalled(self, now_monotonic: float) -> list[Client]:
        """Clients with queued data and no progress for ``stall_timeout`` seconds."""
        return [c for c in self.clients if c.q and now_monotonic - c.progress > self.stall_timeout]


def netns_docs(view: Any, now: float, only: str | None = None) -> list[dict[str, Any]]:
    """The correlator's namespace views (``docs/schema/netns.json``); none from a core without them."""
    names = getattr(view, "netns_names", None)
    if names is None:
        return []
    docs = (view.netns_json(ns, now) for ns in names() if only is None or ns == only)
    return [d for d in docs if d is not None]
