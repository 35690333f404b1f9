"""The dump's end and the events queued before it (issue 18, the VM storm's false ``tunnel_down``s).

The source reads events and dump replies on two sockets. The kernel links each new SA at the head of its SA
list and a dump walks from the head, so an SA added while a dump runs is never listed, and one deleted before
the walk reaches it is not listed either: during a rekey the dump can miss the old outbound SA *and* its
replacement. Their NEWSA/DELSA notifications were queued on the event socket before the dump's NLMSG_DONE was
even built; if the DONE is handed on first (a backlog of events, read 64 datagrams per callback), the correlator
reconciles without them and takes the tunnel down (``missing_from_dump``) until the notifications are read. Run
9 of the VM storm had four such false downs, each followed within a second by ``tunnel_up`` from those very
notifications. A scripted fake kernel plays that history through the real ``KernelSource`` and ``Pipeline``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from correlate_builders import delsa, make_policy, make_sa, newpolicy, newsa, updsa
from fake_xfrm_socket import PORTID, FakeXfrmSocket

from monitor.health.correlate import Correlator
from monitor.health.model import HealthEvent
from monitor.health.pipeline import Pipeline
from monitor.sources.items import Datagram, SourceItem
from monitor.sources.kernel import KernelSource
from monitor.wire import xfrm as X
from monitor.wire.decode import decode_datagram, iter_messages
from monitor.wire.encode import encode, encode_datagram
from monitor.wire.events import SA, Done, Event, NlHeader, PolicyDeleted, PolicyId, SAAdded, SADInfo

I0, O0 = make_sa(0x1000, inbound=True, add_time=1000), make_sa(0x2000, inbound=False, add_time=1000)
I1, O1 = make_sa(0x1001, inbound=True, add_time=1070), make_sa(0x2001, inbound=False, add_time=1070)


class FakeSocket(FakeXfrmSocket):
    """The event socket: ``notify`` queues multicast notifications, ``overrun()`` makes the next read ENOBUFS."""

    def notify(self, events: list[Event]) -> None:
        """Multicast notifications: one per datagram, as the kernel sends them."""
        for ev in events:
            self.b.send(encode(ev))


class DumpSocket(FakeSocket):
    """Answers requests; ``walk`` says what a GETSA dump lists (and may queue events on the event socket)."""

    def __init__(self, walk: Callable[[], list[SA]]) -> None:
        super().__init__()
        self.walk = walk

    def send(self, data: bytes) -> int:
        """A dump's records and NLMSG_DONE in one datagram (as the kernel appends DONE when it fits)."""
        nl = iter_messages(data)[0][0]
        done = Done(NlHeader(X.NLMSG_DONE, X.NLM_F_MULTI, nl.seq, PORTID))
        if nl.type == X.XFRM_MSG_GETSA:
            records = [SAAdded(NlHeader(X.XFRM_MSG_NEWSA, X.NLM_F_MULTI, nl.seq, PORTID), sa) for sa in self.walk()]
            self.b.send(encode_datagram([*records, done]))
        elif nl.type == X.XFRM_MSG_GETPOLICY:
            self.b.send(encode(done))
        else:
            self.b.send(encode(SADInfo(NlHeader(X.XFRM_MSG_NEWSADINFO, 0, nl.seq, PORTID), 0, 2, 8, 64)))
        return len(data)


async def _until(what: str, cond: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def _burst(n: int) -> list[Event]:
    """``n`` policy changes with no template (no tunnel), like the scenario's ``ip -batch`` burst."""
    out: list[Event] = []
    for k in range(n // 2):
        p = make_policy(1, index=5000 + 8 * k)._replace(templates=())
        out += [newpolicy(p), PolicyDeleted(NlHeader(X.XFRM_MSG_DELPOLICY), PolicyId(p.sel, p.index, p.dir), p)]
    return out


async def test_events_queued_before_a_dump_end_are_applied_before_it() -> None:
    """An overrun, then a resync dump while a rekey runs: the walk misses the old outbound SA (deleted before it
    got there) and the new pair (linked at the list's head behind it); the new pair's UPDSA/NEWSA and the old
    outbound SA's DELSA wait on the event socket behind 100 policy notifications. No tunnel_down, no second
    tunnel_up, the rekey counted. (Before the fix: the DONE was handed on after the first 64 of the event
    socket's datagrams: tunnel_down ``missing_from_dump``, then tunnel_up from the notifications read next.)"""
    ev = FakeSocket()
    kernel: list[SA] = [O0, I0]  # head first

    def walk() -> list[SA]:
        if resyncing and len(kernel) == 2:
            # the rekey runs while the dump walks: in and out linked at the head, the old out deleted
            ev.notify([*_burst(100), updsa(I1), newsa(O1), delsa(O0)])
            kernel[:] = [O1, I1, I0]
            return [I0]
        return list(kernel)

    resyncing = False
    dump = DumpSocket(walk)
    socks = iter([ev, dump])
    src = KernelSource(interval=60, socket_factory=lambda name: next(socks))  # type: ignore[arg-type,return-value]
    c = Correlator()
    p = Pipeline(c)
    order: list[str] = []
    events: list[HealthEvent] = []

    async def consume() -> None:
        async with contextlib.aclosing(src.items()) as gen:
            async for item in gen:
                order.extend(_kinds(item))
                p.feed(item, time.monotonic())
                events.extend(c.drain_events())

    task = asyncio.create_task(consume())
    try:
        await _until("the initial load", lambda: any(e.type == "resync" for e in events))
        tid = c.tunnel_ids()[0]
        resyncing = True
        ev.overrun()
        await _until("the resync dump and every notification",
                     lambda: sum(e.type == "resync" for e in events) >= 2 and "DELSA" in order)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert order.index("DELSA") < order.index("DONE:resync"), order[-12:]
    mine = [e.type for e in events if e.tunnel == tid]
    assert [t for t in mine if t in ("tunnel_down", "tunnel_up", "rekey_failed")] == [], mine
    j = c.tunnel_json(tid, time.monotonic())
    assert j is not None
    assert ({"0x00001000", "0x00001001", "0x00002001"}, 1, "up") == ({s["spi"] for s in j["sas"]}, j["rekeys"],
                                                                      j["state"])


def _kinds(item: SourceItem) -> list[str]:
    """What the test follows of each item: the DELSA notification and the second SA dump's DONE."""
    if not isinstance(item, Datagram) or item.outgoing:
        return []
    out = []
    for e in decode_datagram(item.data):
        if e.nl.type == X.XFRM_MSG_DELSA:
            out.append("DELSA")
        elif isinstance(e, Done) and e.nl.seq == 4:  # the resync cycle's GETSA (seqs 1-3: the first cycle)
            out.append("DONE:resync")
    return out
