"""Helpers for tests that run KernelSource against the host kernel (collector, raw requests)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable, Iterable
from types import TracebackType

from monitor.sources.items import Control, Datagram, SourceItem
from monitor.sources.kernel import KernelSource
from monitor.sources.netns import open_xfrm_socket
from monitor.wire import xfrm as X
from monitor.wire.decode import decode_datagram
from monitor.wire.encode import encode, encode_allocspi, encode_dump_request
from monitor.wire.events import (
    SA,
    Event,
    LifetimeCfg,
    LifetimeCur,
    NlHeader,
    SAAdded,
    SADeleted,
    SAId,
    Selector,
    Stats,
)


class Collector:
    """Runs ``source.items()`` in a task and keeps every item; ``wait`` polls a condition with a deadline."""

    def __init__(self, source: KernelSource) -> None:
        self.source = source
        self.items: list[SourceItem] = []
        self.task: asyncio.Task[None] | None = None
        self.error: BaseException | None = None

    async def _run(self) -> None:
        try:
            async with contextlib.aclosing(self.source.items()) as gen:
                async for item in gen:
                    self.items.append(item)
        except Exception as exc:  # surfaced by wait()
            self.error = exc

    async def __aenter__(self) -> Collector:
        self.task = asyncio.create_task(self._run())
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    async def wait(self, what: str, cond: Callable[[], bool], timeout: float = 15.0) -> None:
        """Wait until ``cond()``; on timeout fail with a summary of what was seen."""
        deadline = time.monotonic() + timeout
        while not cond():
            if self.error is not None:
                raise AssertionError(f"source failed while waiting for {what}: {self.error!r}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}; saw: {self.summary()}")
            await asyncio.sleep(0.02)

    def controls(self, kind: str, netns: str | None = None) -> list[Control]:
        """Control items of ``kind`` (for ``netns`` if given)."""
        return [i for i in self.items if isinstance(i, Control) and i.kind == kind
                and (netns is None or i.netns == netns)]

    def events(self, netns: str | None = None, incoming: bool = True) -> list[Event]:
        """Decoded events of every (incoming) datagram."""
        return [ev for i in self.items if isinstance(i, Datagram) and i.outgoing != incoming
                and (netns is None or i.netns == netns) for ev in decode_datagram(i.data)]

    def summary(self) -> str:
        """A short account of the items seen (for failure messages)."""
        counts: dict[str, int] = {}
        for i in self.items:
            if isinstance(i, Control):
                key = f"{i.netns}:{i.kind}"
            else:
                key = f"{i.netns}:{'out' if i.outgoing else 'in'}:" + ",".join(
                    sorted({type(e).__name__ for e in decode_datagram(i.data)}))
            counts[key] = counts.get(key, 0) + 1
        return repr(counts)


def larval_sa(n: int, reqid: int = 1) -> SA:
    """The usersa_info for an ALLOCSPI request (tunnel mode ESP between documentation addresses)."""
    return SA(Selector("0.0.0.0", "0.0.0.0"), "192.0.2.2", 0, X.IPPROTO_ESP, "192.0.2.1", LifetimeCfg(),
              LifetimeCur(), Stats(), 0, reqid, X.AF_INET, 1, 0, 0)


class RawXfrm:
    """A blocking NETLINK_XFRM socket in a namespace for driving the kernel (requests in batches)."""

    def __init__(self, netns: str) -> None:
        self.sock = open_xfrm_socket(netns, 0, 64 << 20)
        self.sock.setblocking(True)
        self.sock.settimeout(30)
        self.seq = 0

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()

    def _drain(self, expect: int) -> list[Event]:
        """Read replies until ``expect`` of our messages (by seq) have answered."""
        out: list[Event] = []
        while expect > 0:
            for ev in decode_datagram(self.sock.recv(1 << 20)):
                out.append(ev)
                expect -= 1
        return out

    def allocspi(self, spis: Iterable[int], batch: int = 100) -> list[Event]:
        """ALLOCSPI exactly these SPIs (min == max), ``batch`` requests per send; returns the replies."""
        replies: list[Event] = []
        todo = list(spis)
        for i in range(0, len(todo), batch):
            chunk = todo[i:i + batch]
            msgs = []
            for spi in chunk:
                self.seq += 1
                msgs.append(encode_allocspi(NlHeader(X.XFRM_MSG_ALLOCSPI, X.NLM_F_REQUEST, self.seq, 0),
                                            larval_sa(spi, reqid=spi), spi, spi))
            self.sock.send(b"".join(msgs))
            replies += self._drain(len(chunk))
        return replies

    def delsa(self, spis: Iterable[int], batch: int = 200) -> None:
        """DELSA these SPIs in batches (no ACK asked; errors would come back as NLMSG_ERROR)."""
        todo = list(spis)
        for i in range(0, len(todo), batch):
            msgs = []
            for spi in todo[i:i + batch]:
                self.seq += 1
                msgs.append(encode(SADeleted(NlHeader(X.XFRM_MSG_DELSA, X.NLM_F_REQUEST, self.seq, 0),
                                             SAId("192.0.2.2", spi, X.AF_INET, X.IPPROTO_ESP), None)))
            self.sock.send(b"".join(msgs))

    def dump_spis(self) -> set[int]:
        """A separate GETSA dump: the SPIs the kernel holds now."""
        self.seq += 1
        self.sock.send(encode_dump_request(X.XFRM_MSG_GETSA, self.seq))
        spis: set[int] = set()
        while True:
            for ev in decode_datagram(self.sock.recv(1 << 20)):
                if isinstance(ev, SAAdded):
                    spis.add(ev.sa.spi)
                elif ev.nl.type == X.NLMSG_DONE:
                    return spis
                elif ev.nl.type == X.NLMSG_ERROR:
                    raise AssertionError(f"dump failed: {ev}")


def other_socket_family_ok() -> bool:
    """True if this kernel lets us open NETLINK_XFRM sockets at all."""
    try:
        socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, X.NETLINK_XFRM).close()
    except OSError:
        return False
    return True
