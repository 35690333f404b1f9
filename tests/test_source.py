"""KernelSource unit tests against a scripted fake kernel socket (the real kernel: test_source_hostkernel.py)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import time
from collections.abc import AsyncIterator

import pytest
from fake_xfrm_socket import FakeXfrmSocket

from monitor.errors import NetnsNotFound, PermissionDenied, XfrmUnsupported
from monitor.sources.items import Control, Datagram, SourceItem
from monitor.sources.kernel import KernelSource
from monitor.sources.netns import parse_xfrm_stat
from monitor.wire import xfrm as X
from monitor.wire.decode import decode_datagram, iter_messages
from monitor.wire.encode import encode, encode_datagram
from monitor.wire.events import SA, Done, LifetimeCfg, LifetimeCur, NlHeader, SAAdded, SADInfo, Selector, Stats


def _sa(spi: int) -> SA:
    return SA(Selector("0.0.0.0", "0.0.0.0"), "192.0.2.2", spi, X.IPPROTO_ESP, "192.0.2.1", LifetimeCfg(),
              LifetimeCur(), Stats(), 0, 1, X.AF_INET, 1, 0, 0)


class FakeKernel(FakeXfrmSocket):
    """Answers dumps with one SA and lets a test inject datagrams/ENOBUFS (the source binds this one fake twice:
    events, then dumps with no group)."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[int] = []

    def send(self, data: bytes) -> int:
        """Answer a request like the kernel: a dump record + DONE, or NEWSADINFO."""
        nl = iter_messages(data)[0][0]
        self.requests.append(nl.type)
        if nl.type == X.XFRM_MSG_GETSA:
            # a foreign notification with the same seq must not end our dump
            self.b.send(encode(Done(NlHeader(X.NLMSG_DONE, 0, nl.seq, 999))))
            self.b.send(encode_datagram([SAAdded(NlHeader(X.XFRM_MSG_NEWSA, X.NLM_F_MULTI, nl.seq, self.PORTID),
                                                 _sa(len(self.requests))),
                                         Done(NlHeader(X.NLMSG_DONE, X.NLM_F_MULTI, nl.seq, self.PORTID))]))
        elif nl.type == X.XFRM_MSG_GETPOLICY:
            self.b.send(encode(Done(NlHeader(X.NLMSG_DONE, X.NLM_F_MULTI, nl.seq, self.PORTID))))
        else:
            self.b.send(encode(SADInfo(NlHeader(X.XFRM_MSG_NEWSADINFO, 0, nl.seq, self.PORTID), 0, 1, 8, 64)))
        return len(data)


async def _take(gen: AsyncIterator[SourceItem], n: int) -> list[SourceItem]:
    out = []
    async with asyncio.timeout(10):
        async for item in gen:
            out.append(item)
            if len(out) == n:
                break
    return out


async def test_dump_cycle_order_and_groups() -> None:
    """Each cycle: GETSA, GETPOLICY, GETSADINFO, each request before its replies; default groups exclude AEVENTS."""
    fake = FakeKernel()
    src = KernelSource(interval=0.05, socket_factory=lambda name: fake)  # type: ignore[arg-type,return-value]
    async with contextlib.aclosing(src.items()) as gen:
        items = await _take(gen, 12)
    kinds = [(i.outgoing, decode_datagram(i.data)[0].nl.type) if isinstance(i, Datagram) else i.kind
             for i in items]
    assert kinds[:8] == [
        "netns_added",
        (True, X.XFRM_MSG_GETSA), (False, X.NLMSG_DONE), (False, X.XFRM_MSG_NEWSA),
        (True, X.XFRM_MSG_GETPOLICY), (False, X.NLMSG_DONE),
        (True, X.XFRM_MSG_GETSADINFO), (False, X.XFRM_MSG_NEWSADINFO),
    ]
    assert fake.groups & (1 << (X.XFRMNLGRP_SA - 1))
    assert fake.groups & (1 << (X.XFRMNLGRP_AEVENTS - 1)) == 0
    assert fake.requests[:4] == [X.XFRM_MSG_GETSA, X.XFRM_MSG_GETPOLICY, X.XFRM_MSG_GETSADINFO, X.XFRM_MSG_GETSA]


async def test_aevents_only_on_request() -> None:
    """aevents=True joins XFRMNLGRP_AEVENTS as well."""
    fake = FakeKernel()
    src = KernelSource(interval=10, aevents=True, socket_factory=lambda name: fake)  # type: ignore[arg-type,return-value]
    async with contextlib.aclosing(src.items()) as gen:
        await _take(gen, 1)
    assert fake.groups & (1 << (X.XFRMNLGRP_AEVENTS - 1))


async def test_enobufs_is_counted_announced_and_resynced() -> None:
    """ENOBUFS gives Control('enobufs'), a count, and a new SA dump long before the 60 s interval."""
    fake = FakeKernel()
    src = KernelSource(interval=60, socket_factory=lambda name: fake)  # type: ignore[arg-type,return-value]
    async with contextlib.aclosing(src.items()) as gen:
        first = await _take(gen, 9)  # added + one full cycle (7 datagrams) + xfrm_stat
        assert [i for i in first if isinstance(i, Control) and i.kind == "xfrm_stat"], first
        fake.enobufs_next = True
        fake.b.send(b"x")  # make the socket readable
        rest = await _take(gen, 3)
    assert isinstance(rest[0], Control)
    assert rest[0].kind == "enobufs"
    assert src.enobufs == {"default": 1}
    assert isinstance(rest[1], Datagram)
    assert rest[1].outgoing
    assert decode_datagram(rest[1].data)[0].nl.type == X.XFRM_MSG_GETSA


@pytest.mark.parametrize(
    ("err", "exc", "text"),
    [
        (errno.EPROTONOSUPPORT, XfrmUnsupported, "CONFIG_XFRM_USER"),
        (errno.EPERM, PermissionDenied, "CAP_NET_ADMIN"),
        (errno.ENOENT, NetnsNotFound, "does not exist"),
    ],
)
async def test_socket_errors_become_clear_source_errors(err: int, exc: type[Exception], text: str) -> None:
    """socket() failures map to XfrmUnsupported / PermissionDenied / NetnsNotFound with advice."""

    def factory(name: str) -> socket.socket:
        raise (FileNotFoundError if err == errno.ENOENT else OSError)(err, "boom")

    src = KernelSource(netns=["default"], socket_factory=factory)
    with pytest.raises(exc, match=text):
        await anext(src.items())


def test_parse_xfrm_stat() -> None:
    """Counter lines become a dict; junk lines are ignored."""
    text = "XfrmInError             \t3\nXfrmOutPolBlock         \t17\ngarbage\n"
    assert parse_xfrm_stat(text) == {"XfrmInError": 3, "XfrmOutPolBlock": 17}


def test_bad_interval_is_refused() -> None:
    """A zero interval would spin; it is rejected up front."""
    with pytest.raises(ValueError, match="interval"):
        KernelSource(interval=0)


async def test_slow_consumer_pauses_reading_and_loses_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the high-water mark the source stops reading (the kernel buffer holds the rest); all arrive in order."""
    monkeypatch.setattr("monitor.sources.kernel._HIGH_WATER", 8)
    fake = FakeKernel()
    src = KernelSource(interval=60, socket_factory=lambda name: fake)  # type: ignore[arg-type,return-value]
    async with contextlib.aclosing(src.items()) as gen:
        await _take(gen, 9)  # netns_added + first cycle + xfrm_stat
        sent = [encode(Done(NlHeader(X.NLMSG_DONE, 0, 1000 + i, 7))) for i in range(40)]
        for d in sent:
            fake.b.send(d)
        await asyncio.sleep(0.05)  # let the reader run until it pauses
        assert src._paused
        assert src._queue.qsize() < len(sent)
        got = await _take(gen, len(sent))
    assert [i.data for i in got if isinstance(i, Datagram)] == sent


class LosingKernel(FakeKernel):
    """Drops the reply to the first GETSADINFO and reports the overrun, as a full receive buffer does (the
    kernel drops a unicast reply outright when the buffer is full, and the next recv says ENOBUFS)."""

    def __init__(self) -> None:
        super().__init__()
        self.lost = False

    def send(self, data: bytes) -> int:
        nl = iter_messages(data)[0][0]
        if nl.type == X.XFRM_MSG_GETSADINFO and not self.lost:
            self.lost = True
            self.requests.append(nl.type)
            self.enobufs_next = True
            self.b.send(b"\0")  # the wake-up byte recv_into eats before raising ENOBUFS
            return len(data)
        return super().send(data)


async def test_an_overrun_that_eats_the_pending_reply_resyncs_at_once() -> None:
    """Issue 11 item 3: the overrun fails the pending request instead of leaving it to REQUEST_TIMEOUT
    (60 s before the fix), and one resync cycle follows right away; both counters say what happened."""
    fake = LosingKernel()
    src = KernelSource(interval=60, socket_factory=lambda name: fake)  # type: ignore[arg-type,return-value]
    started = time.monotonic()
    async with contextlib.aclosing(src.items()) as gen:
        items = await _take(gen, 12)
    took = time.monotonic() - started
    kinds = [i.kind if isinstance(i, Control) else (i.outgoing, decode_datagram(i.data)[0].nl.type)
             for i in items]
    assert "enobufs" in kinds
    after = kinds[kinds.index("enobufs"):]
    assert (True, X.XFRM_MSG_GETSA) in after, kinds  # the resync cycle started (interval is 60 s)
    assert fake.requests[:4] == [X.XFRM_MSG_GETSA, X.XFRM_MSG_GETPOLICY, X.XFRM_MSG_GETSADINFO, X.XFRM_MSG_GETSA]
    assert src.enobufs == {"default": 1}
    assert src.resyncs == {"default": 1}
    assert took < 10  # _take's own bound; the old code waited 60 s here
