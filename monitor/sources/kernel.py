"""The live kernel source (asyncio I/O shell): NETLINK_XFRM sockets per netns, dumps, resync.

Theory of operation
-------------------
Two NETLINK_XFRM sockets per watched namespace: one joins the multicast groups and only receives
events; the other joins none and carries our requests and their replies. With one shared socket an
event storm starved the dumps: the kernel continues a dump only while the socket's receive queue is
under half its buffer (``netlink_recvmsg``), which multicast keeps full, and drops a unicast reply
(GETSADINFO, an error ACK) outright when the buffer is full; every request then timed out and the view
froze exactly when the gateway was busiest (issue 18). The event socket joins its groups *before* the
first dump (the kernel's dump has no consistency flag; the pipeline reconciles dump results with events
that arrive meanwhile). Bytes are read raw with ``loop.add_reader`` and handed on untouched: the pure
``monitor.wire.decode`` is the parser, pyroute2 only creates sockets inside named namespaces.

Per namespace a poll task runs, every ``interval`` seconds: GETSA dump, GETPOLICY dump, GETSADINFO,
then ``/proc/net/xfrm_stat``. One request is outstanding at a time (the kernel allows one dump per
socket); a request is finished by its NLMSG_DONE, NLMSG_ERROR or (GETSADINFO) its NEWSADINFO, matched
by sequence number and our port id. Every request we send is also yielded as an outgoing
``Datagram``, so a capture contains it and the pipeline sees where each dump begins. A reply's end is
handed on only after every datagram the event socket holds at that moment (``_drain_events``): the
notifications the kernel queued before a dump ended come before its NLMSG_DONE, as on one socket.

On ENOBUFS (the kernel dropped multicast events for us) the source counts it, logs it, yields
``Control("enobufs")`` and runs a full dump cycle *after* the overrun (an earlier dump could contain
SAs whose DELSA was just lost): the dump in flight on the other socket is finished, not abandoned, and
any number of overruns during one cycle make one more cycle, not a cascade. ``enobufs`` counts
overruns, ``resyncs`` the resync cycles actually run. After an overrun (and at every cycle) the readers are
registered again: uvloop stops watching a socket whose poll reported the error, which left ``monitor serve``
deaf to every later event (``_rearm_soon``). If the consumer falls behind, the readers pause so the kernel's
buffer, not our memory, absorbs the burst: at worst that is another ENOBUFS and a resync.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import time
from collections.abc import AsyncGenerator, Sequence
from typing import Literal

from monitor.errors import PermissionDenied, SourceError
from monitor.sources import netns as N
from monitor.sources.items import Control, ControlKind, Datagram, SourceItem
from monitor.wire import xfrm as X
from monitor.wire.encode import encode_dump_request

__all__ = ["DEFAULT_GROUPS", "KernelSource"]

log = logging.getLogger(__name__)

DEFAULT_GROUPS = (
    X.XFRMNLGRP_ACQUIRE, X.XFRMNLGRP_EXPIRE, X.XFRMNLGRP_SA, X.XFRMNLGRP_POLICY,
    X.XFRMNLGRP_REPORT, X.XFRMNLGRP_MIGRATE, X.XFRMNLGRP_MAPPING,
)
RECV_SIZE = 262144  # > the kernel's 32 KiB dump skbs; equals monitor.wire.pcap.SNAPLEN
REQUEST_TIMEOUT = 15.0  # a reply lost anyway (a dump socket overrun): give up and resync, not wait a minute
DUMP_RCVBUF = 4 << 20  # the dump socket only ever holds our own replies, one request at a time
_HIGH_WATER = 4096  # queued datagrams before the readers pause
_BURST = 64  # datagrams read per reader callback before yielding to the loop
_DRAIN_MAX = 1 << 16  # event datagrams read at most before a reply's end (a storm cannot hold the loop forever)


def _mask(groups: Sequence[int]) -> int:
    # legacy bind() bitmask: group n is bit n-1
    m = 0
    for g in groups:
        m |= 1 << (g - 1)
    return m


class _Watch:
    """One watched namespace: its socket, poll task, pending request and xfrm_stat fd."""

    def __init__(self, name: str, sock: socket.socket, dsock: socket.socket, stat_fd: int | None) -> None:
        self.name = name
        self.sock = sock  # multicast events
        self.dsock = dsock  # our requests and their replies (the same socket when a test factory gives one)
        self.shared = dsock is sock
        self.portid: int = dsock.getsockname()[0]
        self.stat_fd = stat_fd
        self.seq = 0
        self.pending: tuple[int, asyncio.Future[int]] | None = None
        self.wake = asyncio.Event()
        self.resync = False
        self.rearm = False  # a re-registration of the readers is scheduled (see KernelSource._rearm_soon)
        self.task: asyncio.Task[None] | None = None
        self.buf = bytearray(RECV_SIZE)

    def sockets(self) -> tuple[socket.socket, ...]:
        return (self.sock,) if self.shared else (self.sock, self.dsock)

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        for s in self.sockets():
            s.close()
        if self.stat_fd is not None:
            os.close(self.stat_fd)
            self.stat_fd = None


class KernelSource:
    """Live XFRM source for the default namespace, named ``ip netns`` namespaces, or all of them.

    Args:
        netns: namespace names (``"default"`` is this process's own) or ``"all"`` (default plus
            every name under ``/var/run/netns``, followed as they come and go).
        interval: seconds between SA/policy dumps, GETSADINFO and xfrm_stat reads.
        aevents: also join XFRMNLGRP_AEVENTS (turns on per-packet NEWAE for every SA in the netns).
        rcvbuf: socket receive buffer in bytes (SO_RCVBUFFORCE; the kernel doubles the value).
        socket_factory: for tests: ``name -> unbound NETLINK_XFRM socket``.
        netns_dir: where ``ip netns`` keeps its bind mounts.
    """

    def __init__(
        self,
        netns: Sequence[str] | Literal["all"] = (N.DEFAULT,),
        interval: float = 2.0,
        aevents: bool = False,
        rcvbuf: int = 32 << 20,
        *,
        socket_factory: N.SocketFactory | None = None,
        netns_dir: str = N.NETNS_DIR,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.follow_all = netns == "all"
        self.names: tuple[str, ...] = () if netns == "all" else tuple(dict.fromkeys(netns))
        self.interval = interval
        self.groups = _mask(DEFAULT_GROUPS + ((X.XFRMNLGRP_AEVENTS,) if aevents else ()))
        self.rcvbuf = rcvbuf
        self.factory = socket_factory
        self.netns_dir = netns_dir
        self.enobufs: dict[str, int] = {}
        self.resyncs: dict[str, int] = {}
        self._watches: dict[str, _Watch] = {}
        self._queue: asyncio.Queue[SourceItem] = asyncio.Queue()
        self._paused = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._error: SourceError | None = None

    # --- public -----------------------------------------------------------------------------

    async def items(self) -> AsyncGenerator[SourceItem, None]:
        """Open every namespace, then yield datagrams and control notes until cancelled.

        Raises:
            PermissionDenied, XfrmUnsupported, NetnsNotFound: at start, for the namespaces asked for.
        """
        self._loop = asyncio.get_running_loop()
        watcher: asyncio.Task[None] | None = None
        try:
            for name in self._wanted():
                self._add(name)
            if self.follow_all or any(n != N.DEFAULT for n in self.names):
                watcher = asyncio.create_task(self._follow())
            while True:
                if self._error is not None:
                    raise self._error
                item = await self._queue.get()
                if self._paused and self._queue.qsize() < _HIGH_WATER // 2:
                    self._resume()
                yield item
        finally:
            if watcher is not None:
                watcher.cancel()
            for name in list(self._watches):
                self._drop(name)

    # --- namespaces -------------------------------------------------------------------------

    def _wanted(self) -> list[str]:
        if not self.follow_all:
            return list(self.names)
        named = [n for n in N.list_netns(self.netns_dir) if not N.same_as_own(n, self.netns_dir)]
        return [N.DEFAULT, *named]

    def _control(self, netns: str, kind: ControlKind, **kw: object) -> None:
        self._queue.put_nowait(Control(netns, kind, time.time(), **kw))  # type: ignore[arg-type]

    def _add(self, name: str) -> None:
        sock = N.open_xfrm_socket(name, self.groups, self.rcvbuf, self.factory, self.netns_dir)
        try:
            dsock = N.open_xfrm_socket(name, 0, DUMP_RCVBUF, self.factory, self.netns_dir)
        except BaseException:
            sock.close()
            raise
        w = _Watch(name, sock, dsock, N.open_xfrm_stat(name, self.netns_dir))
        self._watches[name] = w
        self._control(name, "netns_added")
        assert self._loop is not None
        if not self._paused:
            self._add_readers(w)
        w.task = asyncio.create_task(self._poll(w), name=f"xfrm-poll-{name}")
        log.info("watching netns %s (port id %d)", name, w.portid)

    def _drop(self, name: str, announce: bool = False) -> None:
        w = self._watches.pop(name)
        if self._loop is not None and not self._loop.is_closed():
            for s in w.sockets():
                self._loop.remove_reader(s.fileno())
        w.close()
        if announce:
            self._control(name, "netns_removed")
            log.info("netns %s is gone", name)

    async def _follow(self) -> None:
        """Every interval: open namespaces that appeared, drop the ones that disappeared."""
        while True:
            await asyncio.sleep(self.interval)
            present = set(N.list_netns(self.netns_dir))
            wanted = set(self._wanted()) if self.follow_all else set(self.names)
            for name in sorted(set(self._watches) - {N.DEFAULT}):
                if name not in present or name not in wanted:
                    self._drop(name, announce=True)
            for name in sorted(wanted - set(self._watches)):
                if name != N.DEFAULT and name not in present:
                    continue
                try:
                    self._add(name)
                except SourceError as exc:  # e.g. it vanished again; tell, keep running
                    self._control(name, "source_error", message=str(exc))
                    log.warning("%s", exc)

    # --- reading ----------------------------------------------------------------------------

    def _pause(self) -> None:
        assert self._loop is not None
        self._paused = True
        for w in self._watches.values():
            for s in w.sockets():
                self._loop.remove_reader(s.fileno())

    def _resume(self) -> None:
        assert self._loop is not None
        self._paused = False
        for w in self._watches.values():
            self._add_readers(w)

    def _add_readers(self, w: _Watch) -> None:
        assert self._loop is not None
        self._loop.add_reader(w.sock.fileno(), self._on_readable, w, w.sock)
        if not w.shared:
            self._loop.add_reader(w.dsock.fileno(), self._on_readable, w, w.dsock)

    def _on_readable(self, w: _Watch, sock: socket.socket) -> None:
        replies = sock is w.dsock
        for _ in range(_BURST):
            try:
                n = self._recv(w, sock, replies)
            except OSError as exc:
                # a pending socket error (sk_err) is reported once: tell, keep reading; never raise into the loop
                log.warning("netns %s: receive failed: %s", w.name, exc)
                self._control(w.name, "source_error", message=f"netns {w.name}: receive failed: {exc}")
                self._rearm_soon(w)
                return
            if n is None:
                return
            data = bytes(w.buf[:n])
            end = self._reply_end(w, data) if replies and w.pending is not None else None
            if end is not None and not w.shared:
                self._drain_events(w)  # what the kernel queued before this reply ended goes first
            self._queue.put_nowait(Datagram(w.name, data, time.time(), False))
            if end is not None and w.pending is not None and not w.pending[1].done():
                w.pending[1].set_result(end)
            if self._queue.qsize() >= _HIGH_WATER:
                self._pause()
                return

    def _drain_events(self, w: _Watch) -> None:
        """Queue what the event socket holds now, before a reply's end (module docstring; issue 18: a dump during a
        rekey can miss the old outbound SA and its replacement alike, whose notifications must then come first). An
        overrun met here is reported before the DONE, so that dump reconciles nothing."""
        for _ in range(_DRAIN_MAX):
            try:
                n = self._recv(w, w.sock, False)
            except OSError:
                return  # the event socket's own reader reports it
            if n is None:
                return
            self._queue.put_nowait(Datagram(w.name, bytes(w.buf[:n]), time.time(), False))

    def _recv(self, w: _Watch, sock: socket.socket, replies: bool) -> int | None:
        """One datagram into ``w.buf``: its length, or None when the socket holds nothing more. An ENOBUFS is
        reported (``_overrun``) and reading goes on; any other error is raised."""
        while True:
            try:
                return sock.recv_into(w.buf)
            except BlockingIOError:
                return None
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                self._overrun(w, replies)

    def _overrun(self, w: _Watch, replies: bool) -> None:
        """Messages were lost. On the event socket: resync after the cycle in flight. Where our replies
        come (the dump socket, or a shared one), the pending request's end may be lost too: it is failed
        at once, so the resync starts now instead of after REQUEST_TIMEOUT."""
        self.enobufs[w.name] = self.enobufs.get(w.name, 0) + 1
        log.warning("netns %s: receive buffer overrun (ENOBUFS #%d); events were lost, resyncing",
                    w.name, self.enobufs[w.name])
        self._control(w.name, "enobufs")
        if replies and w.pending is not None and not w.pending[1].done():
            w.pending[1].set_result(-errno.ENOBUFS)
        w.resync = True
        w.wake.set()
        self._rearm_soon(w)

    def _rearm_soon(self, w: _Watch) -> None:
        """Register ``w``'s readers again once the current callback is done.

        A pending socket error (``sk_err``: ENOBUFS after an overrun) makes epoll report POLLERR, and libuv
        (uvloop, ``monitor serve``'s loop) then stops watching the socket for good (``uv__poll_io``): the
        reader never runs again, the never-emptied socket stays congested (``NETLINK_S_CONGESTED``) and the
        kernel drops every later event silently, without a second ENOBUFS (issue 18, seen in the VM storm:
        12 KiB left in the queue forever, drops growing). asyncio's own loop keeps watching; re-adding is
        harmless there.
        """
        if not w.rearm:
            w.rearm = True
            assert self._loop is not None
            self._loop.call_soon(self._rearm, w)

    def _rearm(self, w: _Watch) -> None:
        w.rearm = False
        if self._paused or self._watches.get(w.name) is not w or self._loop is None or self._loop.is_closed():
            return
        for s in w.sockets():
            self._loop.remove_reader(s.fileno())
        self._add_readers(w)

    @staticmethod
    def _reply_end(w: _Watch, data: bytes) -> int | None:
        """0 or -errno if ``data`` holds the pending request's DONE, ERROR or NEWSADINFO reply; else None."""
        assert w.pending is not None
        seq = w.pending[0]
        off, size = 0, len(data)
        while off + 16 <= size:
            length, mtype, _flags, mseq, pid = X.NLMSGHDR.unpack_from(data, off)
            if mseq == seq and pid == w.portid and mtype in (X.NLMSG_DONE, X.XFRM_MSG_NEWSADINFO, X.NLMSG_ERROR):
                if mtype == X.NLMSG_ERROR:
                    return int(X.I32.unpack_from(data, off + 16)[0]) if off + 20 <= size else -errno.EIO
                return 0
            if length < 16:
                return None
            off += (length + 3) & ~3
        return None

    # --- polling ----------------------------------------------------------------------------

    async def _request(self, w: _Watch, data: bytes) -> int:
        """Send one request, yield it as an outgoing datagram, and wait for its end (0 or -errno)."""
        assert self._loop is not None
        seq = X.NLMSGHDR.unpack_from(data)[3]
        fut: asyncio.Future[int] = self._loop.create_future()
        w.pending = (seq, fut)
        self._queue.put_nowait(Datagram(w.name, data, time.time(), True))
        try:
            w.dsock.send(data)
            async with asyncio.timeout(REQUEST_TIMEOUT):
                return await fut
        except TimeoutError:
            log.warning("netns %s: no reply to request seq %d within %.0f s", w.name, seq, REQUEST_TIMEOUT)
            return -errno.ETIMEDOUT
        except OSError as exc:
            log.warning("netns %s: sending request seq %d failed: %s", w.name, seq, exc)
            return -(exc.errno or errno.EIO)
        finally:
            w.pending = None

    def _next_seq(self, w: _Watch) -> int:
        w.seq = w.seq % 0x7FFFFFFF + 1
        return w.seq

    async def _poll(self, w: _Watch) -> None:
        first = True
        while True:
            w.wake.clear()
            if not first:  # a reader libuv stopped without our callback seeing the error: back within a cycle
                self._rearm(w)
            if w.resync:
                self.resyncs[w.name] = self.resyncs.get(w.name, 0) + 1
            w.resync = False
            failed = False
            for mtype in (X.XFRM_MSG_GETSA, X.XFRM_MSG_GETPOLICY, X.XFRM_MSG_GETSADINFO):
                seq = self._next_seq(w)
                if mtype == X.XFRM_MSG_GETSADINFO:
                    # xfrm_get_sadinfo(): the payload is a single u32 of flags
                    req = X.NLMSGHDR.pack(20, mtype, X.NLM_F_REQUEST, seq, 0) + X.U32.pack(0)
                else:
                    req = encode_dump_request(mtype, seq)
                err = await self._request(w, req)
                if err in (-errno.EPERM, -errno.EACCES) and first:
                    # the consumer gets the note, then items() raises
                    self._error = PermissionDenied(f"netns {w.name}: the kernel refused a dump; {N.GRANT_HINT}")
                    self._control(w.name, "source_error", message=str(self._error))
                    return
                if err:
                    failed = True
                    log.warning("netns %s: request %s failed: %s", w.name, X.MSG_NAMES.get(mtype, mtype),
                                os.strerror(-err))
            first = False
            if w.stat_fd is not None:
                try:
                    self._control(w.name, "xfrm_stat", counters=N.read_xfrm_stat(w.stat_fd))
                except OSError as exc:
                    log.warning("netns %s: reading xfrm_stat failed: %s", w.name, exc)
            if w.resync:
                await asyncio.sleep(0.05 if failed else 0)
                continue
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await w.wake.wait()
