"""Slow websocket clients and big snapshots, against a real server on 127.0.0.1 with real clients.

* A raw TCP client with a tiny receive buffer that stops reading must not slow the others, must not make
  the server's memory grow without bound, and is closed with code 4008 after ``stall_timeout``.
* A 100,000-tunnel snapshot is sent in chunks without stalling the event loop for other clients.

Neither test bounds the event loop's lag in seconds (that flaked on a loaded 2-core machine; the figure
is in ``bench/timing_bench.py``): each asserts the mechanism instead. The stalled client's test checks that
the fast client kept receiving while the server held unsent bytes for the stalled one; the snapshot test
counts the loop's turns (``LoopTicks``) to see that the server yields at least once per chunk.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
from typing import Any

import aiohttp
import orjson
from aiohttp.test_utils import TestServer

from monitor.serve.config import Settings
from monitor.serve.handlers import DAEMON, HUB, SOCKETS
from monitor.serve.web import create_app
from tests.test_web_fakes import (
    FakeCorrelator,
    FakePipeline,
    LoopTicks,
    QueueSource,
    no_write_backpressure,
    validate,
)

BACKLOG = 64 * 1024  # unsent bytes for one client that mean it is not reading (one frame is far smaller)


def read_frames(buf: bytearray) -> list[tuple[int, bytes]]:
    """Parse complete server->client websocket frames (unmasked) off the front of ``buf``."""
    out = []
    while len(buf) >= 2:
        opcode, n = buf[0] & 0x0F, buf[1] & 0x7F
        pos = 2
        if n == 126:
            if len(buf) < 4:
                break
            n, pos = struct.unpack("!H", buf[2:4])[0], 4
        elif n == 127:
            if len(buf) < 10:
                break
            n, pos = struct.unpack("!Q", buf[2:10])[0], 10
        if len(buf) < pos + n:
            break
        out.append((opcode, bytes(buf[pos:pos + n])))
        del buf[:pos + n]
    return out


def raw_ws_client(host: str, port: int, rcvbuf: int = 4096) -> socket.socket:
    """A websocket client on a plain socket with a tiny receive buffer (set before connect)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(5)
    s.connect((host, port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return s


def masked_text(payload: bytes) -> bytes:
    """A client->server text frame (clients must mask)."""
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack("!H", n))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def test_stalled_client_isolated_bounded_and_closed_4008() -> None:
    """A client that stops reading: others keep getting every event in order, its queue and the transport
    buffer stay bounded, and after stall_timeout it is closed with code 4008 (seen once it reads again)."""
    settings = Settings(source="simulate", port=0, tunnels=60, speed=80, seed=11, stall_timeout=2.0,
                        close_grace=4.0, client_queue=50, counters_interval=0.2)
    app = create_app(settings)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    hub, loop = app[HUB], asyncio.get_running_loop()
    try:
        await asyncio.wait_for(_until(lambda: len(hub.view.tunnel_ids()) >= 60), 15)
        ids = sorted(hub.view.tunnel_ids())
        slow = await loop.run_in_executor(None, raw_ws_client, "127.0.0.1", server.port)
        slow.setblocking(False)
        async with aiohttp.ClientSession() as sess, sess.ws_connect(server.make_url("/ws?snapshot=0")) as fast:
            # make the slow client's backlog big quickly: ask for the full detail of every tunnel, repeatedly
            req = masked_text(orjson.dumps({"op": "detail", "ids": ids}))
            for _ in range(40):
                await loop.sock_sendall(slow, req)
            fast_events: list[int] = []
            peak_q, peak_buf = 0, 0
            backed_up, during_backlog = False, 0
            deadline = loop.time() + 20
            while hub.stalled_total == 0:
                assert loop.time() < deadline, "the stalled client was never closed"
                msg = await fast.receive(timeout=5)
                assert msg.type is aiohttp.WSMsgType.TEXT
                m = orjson.loads(msg.data)
                validate("ws-message.json", m)
                if m["type"] == "event":
                    fast_events.append(m["seq"])
                    if backed_up:
                        during_backlog += 1
                for c in hub.clients:
                    peak_q = max(peak_q, c.n_events)
                bufs = [ws._req.transport.get_write_buffer_size() for ws in app[SOCKETS]
                        if ws._req is not None and ws._req.transport is not None]
                peak_buf = max([peak_buf, *bufs])
                # the server holds unsent bytes for the stalled client (the fast one reads everything)
                backed_up = max(bufs, default=0) >= BACKLOG
            # the stalled client is detached; the fast one is still served
            await asyncio.wait_for(_until(lambda: len(hub.clients) == 1), 5)
            more = await fast.receive(timeout=5)
            assert more.type is aiohttp.WSMsgType.TEXT
        # now read everything the slow client was sent: it ends with a close frame carrying 4008
        buf = bytearray()
        close: bytes | None = None
        end = loop.time() + 10
        while close is None and loop.time() < end:
            try:
                chunk = await asyncio.wait_for(loop.sock_recv(slow, 1 << 20), 5)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            buf += chunk
            for op, payload in read_frames(buf):
                if op == 0x8:
                    close = payload
        slow.close()
    finally:
        await server.close()
    assert close is not None, "no close frame reached the slow client"
    assert struct.unpack("!H", close[:2])[0] == 4008
    assert fast_events == list(range(fast_events[0], fast_events[0] + len(fast_events))), "fast client lost events"
    assert len(fast_events) >= 5
    # the server did not wait on the stalled client: the fast one was served while that backlog stood
    assert during_backlog >= 5, f"only {during_backlog} events reached the fast client while the other was stalled"
    assert peak_q <= settings.client_queue
    assert peak_buf < 4 * 1024 * 1024, f"transport buffer grew to {peak_buf} bytes"
    assert app[DAEMON].hub.stalled_total == 1


async def _until(cond: Any) -> None:
    while not cond():
        await asyncio.sleep(0.02)


async def test_snapshot_100k_tunnels_chunked_without_stalling() -> None:
    """100,000 tunnels: the snapshot arrives complete in chunks, the server lets the loop run other tasks
    at least once per chunk, and an event published meanwhile reaches another client before the snapshot
    has finished."""
    n, chunk = 100_000, 500
    fake = FakeCorrelator()
    for i in range(n):
        fake.add(f"t{i:06d}", netns="default" if i % 2 else "blue", n=i)
    fake.drain_events()
    fake.take_dirty()
    ticks = LoopTicks()
    source = QueueSource()
    app = create_app(Settings(source="simulate", port=0, snapshot_chunk=chunk), source=source,
                     correlator=fake, pipeline=FakePipeline(fake))
    no_write_backpressure(app)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as sess, \
                sess.ws_connect(server.make_url("/ws?snapshot=0")) as watcher:
            assert orjson.loads((await watcher.receive(timeout=5)).data)["type"] == "hello"
            # only the snapshot's tunnel_json calls are recorded (the watcher asked for no snapshot)
            fake.tunnel_json = ticks.record(fake.tunnel_json)  # type: ignore[method-assign]
            ticks.start()
            async with sess.ws_connect(server.make_url("/ws"), max_msg_size=0) as big:
                got: list[str] = []
                first: dict[str, Any] = {}
                chunks = 0
                published_at: int | None = None  # chunk counts, not seconds
                seen_at: int | None = None
                watch = asyncio.create_task(watcher.receive(timeout=30))
                while True:
                    m = orjson.loads((await big.receive(timeout=30)).data)
                    if m["type"] != "snapshot":
                        continue
                    if chunks == 0:
                        first = m  # validated after the loop: jsonschema is slow and would block the loop
                    chunks += 1
                    got.extend(t["id"] for t in m["tunnels"])
                    if chunks == 20 and published_at is None:
                        source.push(lambda c, now: c.emit("rekey_failed", "t000001"))
                        published_at = chunks
                    if watch.done() and seen_at is None:
                        seen_at = chunks
                    if m["last"]:
                        break
                await ticks.stop()
                ev = orjson.loads((await watch).data)
    finally:
        await server.close()
    validate("ws-snapshot.json", first)
    assert n == len(got)
    assert n == len(set(got))
    assert chunks >= n // chunk
    assert ev["type"] == "event"
    assert ev["event"]["type"] == "rekey_failed"
    assert published_at is not None
    assert seen_at is not None
    assert seen_at < chunks, (
        f"the other client got the event only after the whole snapshot ({chunks} chunks)")
    assert len(ticks.seen) >= n
    assert ticks.longest_run() <= chunk, (
        f"the server built {ticks.longest_run()} tunnels without letting the loop run another task")
    print(f"100k snapshot: {chunks} chunks, at most {ticks.longest_run()} tunnels per loop turn, "
          f"event seen at chunk {seen_at} (published at {published_at})")
