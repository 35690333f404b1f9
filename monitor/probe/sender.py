"""The probe sender: one probe out through a socket in the right network namespace, its answer back (I/O).

``ProbeSender.send(probe, timeout)`` sends one probe and waits for its answer:

- ``icmp``: an ICMP(v6) echo request. It first tries an unprivileged "ping socket"
  (``socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP)``, allowed when the process's group is inside the netns's
  ``net.ipv4.ping_group_range``), then a raw socket (needs ``CAP_NET_RAW``). If neither is allowed the
  probe fails with a message that says so.
- ``udp``: a small datagram to ``target:port`` from a connected UDP socket; any reply, *or* the ICMP
  port-unreachable that comes back through the tunnel (``ECONNREFUSED``), counts as an answer. Needs no
  privilege at all.

Sockets for another network namespace are created after ``setns(2)`` into it (then switching back),
which needs ``CAP_SYS_ADMIN``; a monitor that runs *inside* the netns (systemd ``NetworkNamespacePath=``,
``ip netns exec``) names it ``""`` and needs nothing extra. ``monitor.probe.runner.ProberRunner`` is the
loop that uses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import ipaddress
import logging
import os
import socket
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

from monitor.probe.prober import Probe
from monitor.probe.targets import IPAddress

log = logging.getLogger(__name__)

CLONE_NEWNET = 0x40000000
ICMP_ECHO, ICMP_ECHOREPLY = 8, 0
ICMP6_ECHO_REQUEST, ICMP6_ECHO_REPLY = 128, 129
# Names under which the monitor's own netns is known (no setns needed); "default" is monitor.sources.netns.DEFAULT.
OWN_NETNS = frozenset({"", "default", "host", "self"})

_libc: ctypes.CDLL | None = None


def _setns(fd: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)} (entering another netns needs CAP_SYS_ADMIN)")


def netns_path(netns: str) -> str:
    """``/run/netns/NAME`` for a name, the path itself for a path (``/proc/PID/ns/net``)."""
    return netns if netns.startswith("/") else os.path.join("/run/netns", netns)


@contextlib.contextmanager
def in_netns(netns: str) -> Iterator[None]:
    """Run the body with this *thread* inside ``netns`` (sockets created there stay bound to it)."""
    if netns in OWN_NETNS:
        yield
        return
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(netns_path(netns), os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(own)


RTM_NEWADDR, RTM_GETADDR = 20, 22
NLMSG_ERROR, NLMSG_DONE = 2, 3
IFA_ADDRESS, IFA_LOCAL = 1, 2


def local_addresses(netns: str) -> list[IPAddress]:
    """Every address configured on an interface of ``netns``: one RTM_GETADDR dump (no privilege needed)."""
    with in_netns(netns):
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    with sock:
        # struct nlmsghdr (16 bytes) + struct ifaddrmsg { u8 family, prefixlen, flags, scope; u32 index; }
        req = struct.pack("=IHHII", 16 + 8, RTM_GETADDR, 0x1 | 0x300, 1, 0) + struct.pack("=BBBBI", 0, 0, 0, 0, 0)
        sock.sendto(req, (0, 0))
        found: list[IPAddress] = []
        while True:
            data = sock.recv(65536)
            off = 0
            while off + 16 <= len(data):
                length, typ = struct.unpack_from("=IH", data, off)
                if typ == NLMSG_DONE:
                    return found
                if typ == NLMSG_ERROR or length < 16:
                    raise OSError(errno.EIO, "RTM_GETADDR dump failed")
                if typ == RTM_NEWADDR:
                    found.extend(_ifaddr(data[off + 16 : off + length]))
                off += (length + 3) & ~3


def _ifaddr(body: bytes) -> list[IPAddress]:
    family = body[0]
    attrs: dict[int, bytes] = {}
    off = 8
    while off + 4 <= len(body):
        alen, atype = struct.unpack_from("=HH", body, off)
        if alen < 4:
            break
        attrs[atype] = body[off + 4 : off + alen]
        off += (alen + 3) & ~3
    raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
    if raw is None or family not in (socket.AF_INET, socket.AF_INET6):
        return []
    return [ipaddress.ip_address(raw)]


def icmp_checksum(data: bytes) -> int:
    """RFC 1071 internet checksum."""
    if len(data) % 2:
        data += b"\0"
    s: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def echo_request(v6: bool, ident: int, seq: int, payload: bytes) -> bytes:
    """An ICMP (v4, with checksum) or ICMPv6 (checksum left to the kernel) echo request."""
    if v6:
        return struct.pack("!BBHHH", ICMP6_ECHO_REQUEST, 0, 0, ident, seq) + payload
    hdr = struct.pack("!BBHHH", ICMP_ECHO, 0, 0, ident, seq)
    csum = icmp_checksum(hdr + payload)
    return struct.pack("!BBHHH", ICMP_ECHO, 0, csum, ident, seq) + payload


def parse_echo_reply(data: bytes, v6: bool, raw: bool) -> tuple[int, int] | None:
    """``(ident, seq)`` of an echo reply, or None for anything else. Raw IPv4 reads include the IP header."""
    if raw and not v6:
        if len(data) < 20:
            return None
        data = data[(data[0] & 0x0F) * 4 :]
    if len(data) < 8:
        return None
    typ, _code, _csum, ident, seq = struct.unpack("!BBHHH", data[:8])
    if typ != (ICMP6_ECHO_REPLY if v6 else ICMP_ECHOREPLY):
        return None
    return ident, seq


def _open_icmp(v6: bool) -> tuple[socket.socket, bool]:
    fam = socket.AF_INET6 if v6 else socket.AF_INET
    proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
    try:
        return socket.socket(fam, socket.SOCK_DGRAM, proto), False
    except PermissionError:
        pass
    try:
        return socket.socket(fam, socket.SOCK_RAW, proto), True
    except PermissionError:
        raise PermissionError(
            errno.EPERM,
            "ICMP probes need the monitor's group inside net.ipv4.ping_group_range, or CAP_NET_RAW; "
            "or use kind = \"udp\"",
        ) from None


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


async def _recvfrom(sock: socket.socket, size: int) -> tuple[bytes, Any]:
    """``loop.sock_recvfrom`` for a non-blocking socket; uvloop (``monitor serve``'s loop) lacks it."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            return sock.recvfrom(size)
        except BlockingIOError:
            pass
        ready: asyncio.Future[None] = loop.create_future()
        loop.add_reader(sock.fileno(), _wake, ready)
        try:
            await ready
        finally:
            loop.remove_reader(sock.fileno())


class ProbeSender:
    """Sends one probe and waits for its answer. Returns ``("answer", t)``, ``("lost", t)`` or ``("error", msg)``."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.ident = os.getpid() & 0xFFFF

    async def send(self, probe: Probe, timeout: float) -> tuple[str, float | str]:
        """Send ``probe`` from its source address inside its netns; wait up to ``timeout`` seconds."""
        try:
            if probe.kind == "udp":
                return await self._udp(probe, timeout)
            return await self._icmp(probe, timeout)
        except OSError as exc:
            return "error", f"{probe.kind} probe {probe.source} -> {probe.target}: {exc.strerror or exc}"

    async def _icmp(self, probe: Probe, timeout: float) -> tuple[str, float | str]:
        loop = asyncio.get_running_loop()
        v6 = probe.target.version == 6
        with in_netns(probe.netns):
            sock, raw = _open_icmp(v6)
        with sock:
            sock.setblocking(False)
            if probe.source is not None:
                sock.bind((str(probe.source), 0))
            payload = b"ipsec-monitor\0\0\0"[: probe.payload].ljust(probe.payload, b"\0")
            ident = self.ident if raw else (sock.getsockname()[1] & 0xFFFF)
            sock.sendto(echo_request(v6, ident, probe.seq, payload), (str(probe.target), 0))  # never blocks long
            deadline = loop.time() + timeout
            while (left := deadline - loop.time()) > 0:
                try:
                    data, addr = await asyncio.wait_for(_recvfrom(sock, 65535), left)
                except TimeoutError:
                    break
                got = parse_echo_reply(data, v6, raw)
                if got is None or ipaddress.ip_address(addr[0].split("%")[0]) != probe.target:
                    continue
                if got[1] == probe.seq and (got[0] == ident or not raw):
                    return "answer", self.clock()
            return "lost", self.clock()

    async def _udp(self, probe: Probe, timeout: float) -> tuple[str, float | str]:
        loop = asyncio.get_running_loop()
        fam = socket.AF_INET6 if probe.target.version == 6 else socket.AF_INET
        with in_netns(probe.netns):
            sock = socket.socket(fam, socket.SOCK_DGRAM)
        with sock:
            sock.setblocking(False)
            if probe.source is not None:
                sock.bind((str(probe.source), 0))
            await loop.sock_connect(sock, (str(probe.target), probe.port))
            await loop.sock_sendall(sock, b"ipsec-monitor probe %d\n" % probe.seq)
            try:
                await asyncio.wait_for(loop.sock_recv(sock, 2048), timeout)
            except TimeoutError:
                return "lost", self.clock()
            except ConnectionRefusedError:
                pass  # ICMP port unreachable came back through the tunnel: the path works
            return "answer", self.clock()


