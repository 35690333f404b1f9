"""Network namespace plumbing for the kernel source (I/O): sockets, listing, ``/proc/net/xfrm_stat``.

Namespaces are named as ``ip netns`` names them (bind mounts under ``/var/run/netns``), plus
``"default"`` for the namespace this process runs in. Nothing here ever creates a namespace:
pyroute2's ``create_socket`` is always called with ``flags=0`` (its default, ``O_CREAT``, would
silently create a mistyped one), and names are checked to exist first.

Every failure to open a source becomes one of ``monitor.errors``' three source errors with a
message that says what to do.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import socket
import threading
from collections.abc import Callable, Mapping

from monitor.errors import NetnsNotFound, PermissionDenied, SourceError, XfrmUnsupported
from monitor.wire import xfrm as X

__all__ = [
    "DEFAULT",
    "NETNS_DIR",
    "SocketFactory",
    "list_netns",
    "open_xfrm_socket",
    "open_xfrm_stat",
    "parse_xfrm_stat",
    "read_xfrm_stat",
]

DEFAULT = "default"
NETNS_DIR = "/var/run/netns"
CLONE_NEWNET = 0x40000000
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # asm-generic/socket.h

SocketFactory = Callable[[str], socket.socket]  # netns name -> unbound NETLINK_XFRM socket

GRANT_HINT = (
    "every XFRM netlink operation, even a read, needs CAP_NET_ADMIN in the namespace: run as root, "
    "or grant only that capability to a service user, e.g. `sudo setpriv --reuid=USER --regid=GROUP "
    "--clear-groups --inh-caps=+net_admin --ambient-caps=+net_admin monitor ...` or systemd "
    "`AmbientCapabilities=CAP_NET_ADMIN` (named namespaces also need CAP_SYS_ADMIN to enter them)"
)

_NAME = re.compile(r"^[^/\0]+$")


def list_netns(netns_dir: str = NETNS_DIR) -> list[str]:
    """Names of the namespaces ``ip netns`` knows about, sorted (empty if the directory is missing)."""
    try:
        return sorted(n for n in os.listdir(netns_dir) if not n.startswith("."))
    except FileNotFoundError:
        return []


def same_as_own(name: str, netns_dir: str = NETNS_DIR) -> bool:
    """True if the named namespace is the one this process runs in (e.g. under ``ip netns exec``)."""
    try:
        a = os.stat(os.path.join(netns_dir, name))
        b = os.stat("/proc/self/ns/net")
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _path(name: str, netns_dir: str) -> str:
    if not _NAME.match(name) or name in (".", ".."):
        raise NetnsNotFound(f"{name!r} is not a valid network namespace name")
    path = os.path.join(netns_dir, name)
    if not os.path.exists(path):
        raise NetnsNotFound(f"network namespace {name!r} does not exist ({path} is missing; see `ip netns list`)")
    return path


def _raw_socket(name: str, netns_dir: str = NETNS_DIR) -> socket.socket:
    """The default factory: a plain socket here, or one made inside ``name`` by pyroute2 (flags=0)."""
    if name == DEFAULT:
        return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, X.NETLINK_XFRM)
    path = _path(name, netns_dir)
    from pyroute2 import config as pr_config  # noqa: PLC0415 - slow import, only needed for named netns
    from pyroute2 import netns as pr_netns  # noqa: PLC0415

    # The forked child inherits asyncio's SIGTERM/SIGINT handlers and their wakeup fd; pyroute2 ends it
    # with SIGTERM, which would then reach *our* loop as a SIGTERM. Make the child reset them first.
    pr_config.disable_mp_signal = True
    # create_socket forks a child that setns()es into the namespace and passes the fd back.
    sock: socket.socket = pr_netns.create_socket(
        netns=path, family=socket.AF_NETLINK, socket_type=socket.SOCK_RAW, proto=X.NETLINK_XFRM, flags=0
    )
    return sock


def open_xfrm_socket(
    name: str, groups: int, rcvbuf: int, factory: SocketFactory | None = None, netns_dir: str = NETNS_DIR
) -> socket.socket:
    """Open a non-blocking NETLINK_XFRM socket in namespace ``name`` and join ``groups`` (bitmask).

    The receive buffer is set with SO_RCVBUFFORCE (needs CAP_NET_ADMIN; the kernel doubles it),
    falling back to SO_RCVBUF, which ``net.core.rmem_max`` caps.

    Raises:
        NetnsNotFound: ``name`` is not ``"default"`` and no such ``ip netns`` namespace exists.
        XfrmUnsupported: the kernel refuses NETLINK_XFRM sockets (CONFIG_XFRM_USER unset).
        PermissionDenied: joining the groups (or entering the namespace) is not allowed.
    """
    try:
        sock = factory(name) if factory is not None else _raw_socket(name, netns_dir)
    except FileNotFoundError as exc:
        raise NetnsNotFound(f"network namespace {name!r} does not exist ({exc})") from exc
    except OSError as exc:
        if exc.errno in (errno.EPROTONOSUPPORT, errno.EAFNOSUPPORT):
            raise XfrmUnsupported(
                f"netns {name}: the kernel has no NETLINK_XFRM ({exc.strerror}); it needs CONFIG_XFRM_USER "
                "(module xfrm_user: `modprobe xfrm_user`)"
            ) from exc
        if exc.errno in (errno.EPERM, errno.EACCES):
            raise PermissionDenied(f"netns {name}: cannot open an XFRM socket ({exc.strerror}); {GRANT_HINT}") from exc
        raise SourceError(f"netns {name}: cannot open an XFRM socket: {exc}") from exc
    try:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        try:
            sock.bind((0, groups))
        except OSError as exc:
            if exc.errno in (errno.EPERM, errno.EACCES):
                raise PermissionDenied(
                    f"netns {name}: joining XFRM multicast groups was refused ({exc.strerror}); {GRANT_HINT}"
                ) from exc
            raise SourceError(f"netns {name}: cannot bind the XFRM socket: {exc}") from exc
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


_libc: ctypes.CDLL | None = None


def _setns_open(path: str, proc_file: str, out: dict[str, int | OSError]) -> None:
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        nsfd = os.open(path, os.O_RDONLY)
        try:
            if _libc.setns(nsfd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))
        finally:
            os.close(nsfd)
        # /proc/thread-self/net follows this thread's namespace; the open file stays bound to it.
        out["fd"] = os.open(f"/proc/thread-self/{proc_file}", os.O_RDONLY)
    except OSError as exc:
        out["err"] = exc


def open_xfrm_stat(name: str, netns_dir: str = NETNS_DIR) -> int | None:
    """An fd of ``/proc/net/xfrm_stat`` as seen from namespace ``name``, or None if unavailable.

    For a named namespace a short-lived thread ``setns()``es into it and opens the file (a proc
    file stays bound to the namespace it was opened in), so the process itself never moves and
    no pooled thread is left in a foreign namespace. ``read_xfrm_stat`` re-reads it with ``pread``.
    None means the kernel lacks CONFIG_XFRM_STATISTICS or we may not enter the namespace.
    """
    if name == DEFAULT:
        try:
            return os.open("/proc/self/net/xfrm_stat", os.O_RDONLY)
        except OSError:
            return None
    out: dict[str, int | OSError] = {}
    t = threading.Thread(target=_setns_open, args=(os.path.join(netns_dir, name), "net/xfrm_stat", out),
                         name=f"setns-{name}", daemon=True)
    t.start()
    t.join()
    fd = out.get("fd")
    return fd if isinstance(fd, int) else None


def parse_xfrm_stat(text: str) -> dict[str, int]:
    """Parse ``/proc/net/xfrm_stat`` (``Name<whitespace>value`` lines) into a dict (pure)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out


def read_xfrm_stat(fd: int) -> Mapping[str, int]:
    """Re-read an fd from ``open_xfrm_stat`` from the start and parse it."""
    return parse_xfrm_stat(os.pread(fd, 65536, 0).decode("ascii", "replace"))
