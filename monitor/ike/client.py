"""The VICI client: strongSwan's own ``vici`` package, in a thread of its own (I/O).

``vici`` is synchronous, so one daemon thread owns two connections to charon's socket: one registered for
``ike-updown``, ``ike-rekey``, ``child-updown``, ``child-rekey`` and ``log`` (a VICI connection carries
"only one command ... at a time", and events may arrive "at any time while registered, even during an
active request command", so requests go over the other one). ``list-sas`` and ``list-conns`` are read at
connect, ``debounce`` seconds after each updown/rekey event, and every ``refresh`` seconds. Everything the
thread learns is parsed there (``monitor.ike.records``, ``monitor.ike.rules``: pure) and handed to the event
loop as immutable records with ``loop.call_soon_threadsafe``; the loop never waits on charon.

No socket, no permission, charon restarting: one :class:`ViciStatus` (and one log line per new error), then
reconnects with exponential backoff. ``stop()`` shuts the sockets down so a blocked read returns at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import vici
from vici.exception import CommandException, DeserializationException, SessionException

from monitor.ike.records import Conn, IkeSa, parse_all, parse_list_conn, parse_list_sa
from monitor.ike.rules import match_log, updown_error

log = logging.getLogger(__name__)

#: Where charon puts its socket (``charon.plugins.vici.socket``'s default, and /run on systemd hosts).
DEFAULT_SOCKETS = ("/var/run/charon.vici", "/run/charon.vici")
EVENTS = ("ike-updown", "ike-rekey", "child-updown", "child-rekey", "log")
VICI_ERRORS = (OSError, SessionException, CommandException, DeserializationException, ValueError, EOFError)


@dataclass(frozen=True, slots=True)
class ViciStatus:
    """Connected or not, to which socket, and why not."""

    connected: bool
    socket: str | None
    error: str | None
    ts: float


@dataclass(frozen=True, slots=True)
class Listing:
    """One ``list-sas`` + ``list-conns`` read, at ``ts`` (wall clock)."""

    sas: tuple[IkeSa, ...]
    conns: tuple[Conn, ...]
    ts: float


def describe(exc: BaseException, path: str) -> str:
    """One line an operator can act on."""
    if isinstance(exc, FileNotFoundError):
        return f"no VICI socket at {path} (is charon running with the vici plugin?)"
    if isinstance(exc, PermissionError):
        return (f"permission denied on {path}: run the monitor as root or give its user access to the socket "
                "(docs/operations.md \"IKE view\")")
    if isinstance(exc, BrokenPipeError | ConnectionResetError) or str(exc) == "Connection closed":  # vici's words
        return f"charon closed the VICI connection at {path} (stopped or restarting)"
    if isinstance(exc, ConnectionRefusedError):
        return f"charon does not accept connections on {path} (stopped or restarting)"
    return f"VICI connection to {path} failed: {exc or type(exc).__name__}"


def find_socket(path: str | None, candidates: Sequence[str] = DEFAULT_SOCKETS) -> str | None:
    """``path``, else the first of ``candidates`` that exists, else None."""
    if path is not None:
        return path
    return next((p for p in candidates if os.path.exists(p)), None)


def read_listing(path: str, *, timeout: float = 5.0, clock: Callable[[], float] = time.time) -> Listing:
    """One ``list-sas`` + ``list-conns`` read over a connection of its own (``monitor check``: no thread, no
    events). Raises one of :data:`VICI_ERRORS` (:func:`describe` makes a line of it)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        cmd = vici.Session(s)
        sas = parse_all(cmd.list_sas(), parse_list_sa)
        conns = parse_all(cmd.list_conns(), parse_list_conn)
    return Listing(tuple(sas), tuple(conns), clock())


class ViciClient:
    """Runs the VICI session in a thread; ``deliver`` gets every update on the event loop.

    Args:
        path: the socket, or None to auto-detect (``candidates`` in order).
        deliver: called on the loop with a :class:`ViciStatus`, :class:`Listing` or ``IkeError``.
        debounce: seconds after an updown/rekey event before ``list-sas`` is read again.
        refresh: seconds between reads when nothing happens.
        backoff: first and longest wait between connection attempts.
    """

    def __init__(self, path: str | None, deliver: Callable[[object], None], *,
                 candidates: Sequence[str] = DEFAULT_SOCKETS, debounce: float = 0.5, refresh: float = 30.0,
                 backoff: tuple[float, float] = (1.0, 30.0), timeout: float = 5.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.deliver = deliver
        self.candidates = tuple(candidates)
        self.debounce = debounce
        self.refresh = refresh
        self.backoff = backoff
        self.timeout = timeout
        self.clock = clock
        self.connects = 0  #: sessions opened (read by tests and /api/v1/ike)
        self._stop = threading.Event()
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_error: str | None = None
        self._logged = False  # the current outage has been logged (once: later retries only update the status)

    # -- on the loop ---------------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the thread; updates go to ``loop``."""
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name="monitor-vici", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the thread (shutting its sockets down) and wait up to ``timeout`` seconds for it."""
        self._stop.set()
        with self._lock:
            for s in self._socks:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout)

    # -- in the thread -------------------------------------------------------------------------

    def _send(self, item: object) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(self.deliver, item)

    def _resolve(self) -> str:
        if self.path is not None:
            return self.path
        for p in self.candidates:
            if os.path.exists(p):
                return p
        return " or ".join(self.candidates)

    def _fail(self, path: str, exc: BaseException) -> None:
        msg = describe(exc, path)
        if not self._logged:
            quiet = self.path is None and self.connects == 0 and isinstance(exc, FileNotFoundError)
            (log.info if quiet else log.warning)("IKE view unavailable, kernel-only view (retrying): %s", msg)
            self._logged = True
        if msg != self._last_error:
            self._last_error = msg
            self._send(ViciStatus(False, path, msg, self.clock()))

    def _run(self) -> None:
        delay = self.backoff[0]
        while not self._stop.is_set():
            path = self._resolve()
            opened = self.connects
            try:
                self._session(path)
            except VICI_ERRORS as exc:
                if not self._stop.is_set():
                    self._fail(path, exc)
            except Exception as exc:  # a bug must not kill the thread silently, nor the monitor
                log.exception("VICI client error")
                self._fail(path, exc)
            finally:
                self._close()
            if self.connects > opened:
                delay = self.backoff[0]  # it worked until charon went away: retry soon
            if self._stop.wait(delay):
                break
            delay = min(delay * 2, self.backoff[1])

    def _connect(self, path: str) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with self._lock:
            self._socks.append(s)
        s.settimeout(self.timeout)
        s.connect(path)
        return s

    def _close(self) -> None:
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            with contextlib.suppress(OSError):
                s.close()

    def _read(self, cmd: Any) -> None:
        sas = parse_all(cmd.list_sas(), parse_list_sa)
        conns = parse_all(cmd.list_conns(), parse_list_conn)
        self._send(Listing(tuple(sas), tuple(conns), self.clock()))

    def _session(self, path: str) -> None:
        events = vici.Session(self._connect(path))
        cmd = vici.Session(self._connect(path))
        self.connects += 1
        stream = events.listen(list(EVENTS), timeout=0.5)  # registers on the first next()
        try:
            first = next(stream)
            log.info("IKE view: connected to charon at %s", path)
            self._last_error, self._logged = None, False
            self._send(ViciStatus(True, path, None, self.clock()))
            self._read(cmd)
            due: float | None = None
            periodic = self.clock() + self.refresh
            item: tuple[Any, Any] = first
            while not self._stop.is_set():
                label, msg = item
                now = self.clock()
                if label is not None:
                    name = label.decode() if isinstance(label, bytes) else str(label)
                    err = match_log(msg, now) if name == "log" else updown_error(name, msg, now)
                    if err is not None:
                        self._send(err)
                    if name != "log" and due is None:
                        due = now + self.debounce
                if (due is not None and now >= due) or now >= periodic:
                    self._read(cmd)
                    due, periodic = None, now + self.refresh
                item = next(stream)
        finally:
            with contextlib.suppress(*VICI_ERRORS):  # unregistering on a dead socket fails again
                stream.close()
