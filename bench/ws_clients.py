"""The fan-out benchmark's load generator: many real websocket clients in ONE separate process.

    python -m bench.ws_clients --port P --clients 1000 [--stalled 10] [--snapshot-after 3] --out FILE

Each client is a minimal RFC 6455 client on ``asyncio`` (real TCP on 127.0.0.1, real HTTP upgrade,
real frames; it answers pings with masked pongs) rather than an aiohttp ``ClientSession`` per
connection: the load generator shares the 2-core machine with the server, and the lighter the
client, the less its own CPU shows up in the latencies it measures (its CPU use is reported too).

Per ``event`` message a client records ``receive time - event.ts`` (the bench injector stamps each
synthetic event with ``time.time()`` when it hands it to the hub; both processes read the same
clock) and checks that event ``seq`` numbers follow each other (a missing seq or a ``gap`` message
counts as a drop). A client is done when it sees the ``bench_end`` event.

Stalled clients are plain sockets with a 4 KiB receive buffer that finish the handshake and then
never read again. ``--snapshot-after S`` opens one more client S seconds after the injection starts
(``snapshot=1``), and records how long its snapshot takes and how many tunnels it holds.

The process prints ``ready N`` once every client is connected, and writes its results (JSON) to
``--out`` when all clients are done or ``--timeout`` expires.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import socket
import struct
import sys
import time
from collections.abc import Sequence
from typing import Any, cast

import orjson

from bench.common import percentile, raise_nofile, summary

__all__ = ["WsClient", "main", "run_clients"]

_H2 = struct.Struct("!H")
_H8 = struct.Struct("!Q")


def _handshake(port: int, query: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET /ws?{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()


def _masked(opcode: int, payload: bytes) -> bytes:
    """A client->server frame (clients must mask; RFC 6455 5.3)."""
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    else:
        head += bytes([0x80 | 126]) + _H2.pack(n)
    return head + mask + body


class WsClient(asyncio.Protocol):
    """One websocket client; parses server frames and records event latencies and seq gaps."""

    def __init__(self, port: int, query: str, started: float | None = None) -> None:
        self.port, self.query = port, query
        self.lat: list[float] = []
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.upgraded = False
        self.opened = asyncio.get_running_loop().create_future()
        self.done = asyncio.get_running_loop().create_future()
        self.last_seq: int | None = None
        self.events = 0
        self.dropped = 0
        self.gaps = 0
        self.messages = 0
        self.snapshot_tunnels = 0
        self.snapshot_done: float | None = None
        self.started = started if started is not None else time.perf_counter()
        self.closed_code: int | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        self.transport.write(_handshake(self.port, self.query))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"closed before upgrade: {exc}"))
        if not self.done.done():
            self.done.set_result(False)

    def data_received(self, data: bytes) -> None:
        now = time.time()
        buf = self.buf
        buf += data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self.opened.set_exception(ConnectionError(bytes(buf[:200]).decode(errors="replace")))
                assert self.transport is not None
                self.transport.close()
                return
            del buf[:end + 4]
            self.upgraded = True
            self.opened.set_result(True)
        pos, size = 0, len(buf)
        while size - pos >= 2:
            opcode, n = buf[pos] & 0x0F, buf[pos + 1] & 0x7F
            hdr = 2
            if n == 126:
                if size - pos < 4:
                    break
                n, hdr = _H2.unpack_from(buf, pos + 2)[0], 4
            elif n == 127:
                if size - pos < 10:
                    break
                n, hdr = _H8.unpack_from(buf, pos + 2)[0], 10
            if size - pos < hdr + n:
                break
            payload = bytes(buf[pos + hdr:pos + hdr + n])
            pos += hdr + n
            self._frame(opcode, payload, now)
        if pos:
            del buf[:pos]

    def _frame(self, opcode: int, payload: bytes, now: float) -> None:
        if opcode == 1:
            self.messages += 1
            self._message(orjson.loads(payload), now)
        elif opcode == 9 and self.transport is not None:
            self.transport.write(_masked(10, payload))
        elif opcode == 8:
            self.closed_code = _H2.unpack_from(payload)[0] if len(payload) >= 2 else 1005
            if self.transport is not None:
                self.transport.close()

    def _message(self, m: dict[str, Any], now: float) -> None:
        kind = m.get("type")
        if kind == "event":
            ev = m["event"]
            seq = ev["seq"]
            if self.last_seq is not None and seq != self.last_seq + 1:
                self.dropped += max(0, seq - self.last_seq - 1)
            self.last_seq = seq
            self.events += 1
            self.lat.append(now - ev["ts"])
            if ev["type"] == "bench_end" and not self.done.done():
                self.done.set_result(True)
        elif kind == "gap":
            self.gaps += 1
            self.dropped += int(m.get("dropped", 0))
            self.last_seq = int(m.get("to_seq", self.last_seq or 0))
        elif kind == "snapshot":
            self.snapshot_tunnels += len(m.get("tunnels", ()))
            if m.get("last"):
                self.snapshot_done = time.perf_counter() - self.started


def stalled_client(port: int) -> socket.socket:
    """A client that completes the upgrade and then never reads (4 KiB receive buffer)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    s.sendall(_handshake(port, "snapshot=0"))
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)
        if not chunk:
            raise ConnectionError("stalled client: server closed during the handshake")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(head.decode(errors="replace"))
    return s


async def _connect(port: int, query: str) -> WsClient:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(lambda: WsClient(port, query), "127.0.0.1", port)
    await asyncio.wait_for(proto.opened, 30)
    return proto


async def run_clients(port: int, clients: int, stalled: int = 0, snapshot_after: float | None = None,
                      timeout: float = 120.0, ready: Any = None, start_signal: Any = None) -> dict[str, Any]:
    """Connect, report ready, wait for ``bench_end`` on every client; returns the results dict."""
    sem = asyncio.Semaphore(64)

    async def one() -> WsClient:
        async with sem:
            return await _connect(port, "snapshot=0")

    t0 = time.perf_counter()
    conns = await asyncio.gather(*(one() for _ in range(clients)))
    connect_s = time.perf_counter() - t0
    stalls = [stalled_client(port) for _ in range(stalled)]
    if ready is not None:
        ready(len(conns))
    if start_signal is not None:
        await start_signal()
    snap_task = None
    if snapshot_after is not None:
        async def snap() -> WsClient:
            await asyncio.sleep(snapshot_after)
            loop = asyncio.get_running_loop()
            started = time.perf_counter()
            _, proto = await loop.create_connection(lambda: WsClient(port, "snapshot=1", started),
                                                    "127.0.0.1", port)
            await asyncio.wait_for(proto.opened, 30)
            while proto.snapshot_done is None and not proto.done.done():
                await asyncio.sleep(0.01)
            return proto

        snap_task = asyncio.create_task(snap())
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    w0 = time.perf_counter()
    _done, pending = await asyncio.wait([asyncio.ensure_future(c.done) for c in conns], timeout=timeout)
    wall = time.perf_counter() - w0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    snapshot: dict[str, Any] | None = None
    if snap_task is not None:
        try:
            p = await asyncio.wait_for(snap_task, timeout=max(1.0, timeout - wall))
            snapshot = {"seconds": p.snapshot_done, "tunnels": p.snapshot_tunnels, "messages": p.messages}
        except (TimeoutError, ConnectionError) as exc:
            snapshot = {"error": repr(exc)}
    lat_ms = [x * 1000 for c in conns for x in c.lat]
    per_client_p99 = sorted(p for p in (percentile(c.lat, 99) for c in conns) if p is not None)
    res = {
        "clients": len(conns),
        "stalled": len(stalls),
        "connect_s": connect_s,
        "finished": sum(1 for c in conns if c.done.done() and c.done.result()),
        "timed_out": len(pending),
        "events_received": sum(c.events for c in conns),
        "dropped": sum(c.dropped for c in conns),
        "gap_messages": sum(c.gaps for c in conns),
        "clients_with_drops": sum(1 for c in conns if c.dropped),
        "latency_ms": summary(lat_ms),
        "worst_client_p99_ms": per_client_p99[-1] * 1000 if per_client_p99 else None,
        "median_client_p99_ms": per_client_p99[len(per_client_p99) // 2] * 1000 if per_client_p99 else None,
        "client_cpu_s": (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime),
        "wall_s": wall,
        "snapshot": snapshot,
    }
    for c in conns:
        if c.transport is not None:
            c.transport.close()
    for s in stalls:
        s.close()
    return res


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point (run by ``bench.fanout_bench`` in its own process)."""
    parser = argparse.ArgumentParser(prog="python -m bench.ws_clients", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--stalled", type=int, default=0)
    parser.add_argument("--snapshot-after", type=float, default=None)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--out", required=True)
    parser.add_argument("--cpu", type=int, default=None, help="pin to this CPU")
    args = parser.parse_args(argv)
    if args.cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    raise_nofile()

    def ready(n: int) -> None:
        print(f"ready {n}", flush=True)

    async def start_signal() -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.readline)  # the orchestrator says "go" after injecting

    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency
        runner = asyncio.run
    res = runner(run_clients(args.port, args.clients, args.stalled, args.snapshot_after, args.timeout,
                             ready, start_signal))
    with open(args.out, "w") as f:
        json.dump(res, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
