"""A duck-typed NETLINK_XFRM socket over an ``AF_UNIX`` datagram socketpair, for ``KernelSource`` unit tests.

The source reads end ``a`` (the fd the event loop watches); a test, or a subclass playing the kernel, writes
datagrams to end ``b``. ``overrun()`` makes the next read fail with ENOBUFS, as the kernel reports dropped
multicast events.
"""

from __future__ import annotations

import errno
import socket

PORTID = 4242


class FakeXfrmSocket:
    """The socket API ``open_xfrm_socket`` and ``KernelSource`` use; no request is answered here."""

    PORTID = PORTID

    def __init__(self) -> None:
        self.a, self.b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.groups = 0
        self.enobufs_next = False

    def setsockopt(self, *args: object) -> None:
        """Accept any option."""

    def bind(self, addr: tuple[int, int]) -> None:
        """Record the joined groups."""
        self.groups |= addr[1]

    def setblocking(self, flag: bool) -> None:
        """Make the readable end non-blocking."""
        self.a.setblocking(flag)

    def getsockname(self) -> tuple[int, int]:
        """Our port id and groups."""
        return (self.PORTID, self.groups)

    def fileno(self) -> int:
        """The fd the event loop watches."""
        return self.a.fileno()

    def close(self) -> None:
        """Close both ends."""
        self.a.close()
        self.b.close()

    def recv_into(self, buf: bytearray) -> int:
        """The next datagram, or ENOBUFS once when armed (the wake-up byte is consumed)."""
        if self.enobufs_next:
            self.enobufs_next = False
            self.a.recv(65536)
            raise OSError(errno.ENOBUFS, "No buffer space available")
        return self.a.recv_into(buf)

    def overrun(self) -> None:
        """The kernel dropped events for us: the next read reports it."""
        self.enobufs_next = True
        self.b.send(b"\0")
