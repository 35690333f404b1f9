"""A fake charon: a real VICI unix socket served from threads, speaking the protocol through the ``vici``
package's own encoding classes (``vici.protocol.Transport`` framing, ``Packet`` type codes, ``Message``
serialisation), so nothing here is a second, hand-written codec.

It answers ``list-sas``/``list-conns`` by streaming ``list-sa``/``list-conn`` events then an empty
``CMD_RESPONSE`` (README.md: "a request triggers a series of events ... before the response message
completes the stream"), confirms event registrations, and ``emit`` pushes an event to every connection
registered for it. ``stop`` closes every connection and removes the socket file (charon vanishing).
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
from collections.abc import Mapping
from typing import Any

from vici.protocol import FiniteStream, Message, Packet, Transport


def _named(kind: int, name: str, message: Mapping[str, Any] | None = None) -> bytes:
    raw = name.encode()
    return struct.pack("!BB", kind, len(raw)) + raw + (Message.serialize(message) if message else b"")


class FakeCharon:
    """``sas``/``conns``: the list-sa / list-conn event messages it streams (mutable between requests)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sas: list[Mapping[str, Any]] = []
        self.conns: list[Mapping[str, Any]] = []
        self.requests: list[str] = []
        self.registered: dict[Transport, set[str]] = {}
        self._lock = threading.Lock()
        self._server: socket.socket | None = None
        self._conns: list[socket.socket] = []

    def start(self) -> None:
        """Bind the socket and accept connections in a thread."""
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(self.path)
        server.listen(8)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def stop(self) -> None:
        """Close the listener and every connection, remove the socket file."""
        server, self._server = self._server, None
        if server is not None:
            with contextlib.suppress(OSError):
                server.shutdown(socket.SHUT_RDWR)
            server.close()
        with self._lock:
            conns, self._conns = self._conns, []
            self.registered.clear()
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def emit(self, event: str, message: Mapping[str, Any]) -> int:
        """Send an event to every connection registered for it; returns how many got it."""
        with self._lock:
            targets = [t for t, names in self.registered.items() if event in names]
        for t in targets:
            with contextlib.suppress(OSError):
                t.send(_named(Packet.EVENT, event, message))
        return len(targets)

    def listeners(self, event: str) -> int:
        """Connections registered for ``event``."""
        with self._lock:
            return sum(event in names for names in self.registered.values())

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with self._lock:
                self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        t = Transport(conn)
        with self._lock:
            self.registered[t] = set()
        try:
            while True:
                self._handle(t, t.receive())
        except (OSError, struct.error):
            pass
        finally:
            with self._lock:
                self.registered.pop(t, None)

    def _handle(self, t: Transport, packet: bytes) -> None:
        stream = FiniteStream(packet)
        kind = packet[0]
        stream.read(1)
        name = stream.read(stream.read(1)[0]).decode()
        if kind in (Packet.EVENT_REGISTER, Packet.EVENT_UNREGISTER):
            with self._lock:
                names = self.registered.setdefault(t, set())
                (names.add if kind == Packet.EVENT_REGISTER else names.discard)(name)
            t.send(struct.pack("!B", Packet.EVENT_CONFIRM))
            return
        self.requests.append(name)
        streams = {"list-sas": ("list-sa", self.sas), "list-conns": ("list-conn", self.conns)}
        if name not in streams:
            t.send(struct.pack("!B", Packet.CMD_UNKNOWN))
            return
        event, items = streams[name]
        with self._lock:
            wanted = event in self.registered.get(t, set())
        if wanted:
            for item in list(items):
                t.send(_named(Packet.EVENT, event, item))
        t.send(struct.pack("!B", Packet.CMD_RESPONSE) + Message.serialize({}))
