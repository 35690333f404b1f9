"""``monitor tail``: line rendering, and the reconnecting client against a real in-process serve."""

from __future__ import annotations

import asyncio
import io
import json
import re
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from monitor.commands.tail import Tailer
from monitor.render import RESET, colour_enabled, format_event, summarise_detail
from monitor.serve.config import Settings
from monitor.serve.web import create_app

TOKEN = "s3cret-token-for-tests"


def test_format_event_plain_and_coloured() -> None:
    """A line has time, #seq, netns, tunnel, type and the detail; colour only when asked."""
    ev = {"seq": 42, "ts": 1_700_000_000.25, "type": "state_changed", "tunnel": "sim:4:a-b", "netns": "sim",
          "detail": {"from": "up", "to": "down", "reasons": [{"code": "sa_deleted", "text": "gone"}]}}
    plain = format_event(ev)
    assert re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.250  #42 +sim  sim:4:a-b +state_changed +up -> down "
                    r"\(sa_deleted: gone\)$", plain), plain
    assert "\x1b[" not in plain
    coloured = format_event(ev, colour=True)
    assert "\x1b[31m" in coloured  # down is red
    assert RESET in coloured


def test_summarise_detail_reason_text_and_timestamps() -> None:
    """reason+text become 'reason: text'; big floats are shown as clock times; None is skipped."""
    out = summarise_detail({"from": "up", "reason": "hard_expired", "text": "deleted", "deadline": 1_700_000_005.0,
                            "spi": "0x1", "gone": None})
    assert out.startswith("was up deadline=")
    assert "spi=0x1" in out
    assert out.endswith("(hard_expired: deleted)")
    assert "gone" not in out


def test_colour_policy() -> None:
    """Colour on a TTY unless NO_COLOR or TERM=dumb; FORCE_COLOR forces it."""
    assert colour_enabled(True, {})
    assert not colour_enabled(False, {})
    assert not colour_enabled(True, {"NO_COLOR": "1"})
    assert not colour_enabled(True, {"TERM": "dumb"})
    assert colour_enabled(False, {"FORCE_COLOR": "1"})


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A real serve application (simulator at speed 30) on 127.0.0.1:port, startable twice."""

    def __init__(self, port: int, token: str | None = None) -> None:
        self.port, self.token = port, token
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Build a fresh app (a new server instance) and listen."""
        app = create_app(Settings(source="simulate", port=self.port, speed=30.0, tunnels=12, token=self.token))
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        """Shut the server down."""
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def events(self) -> list[dict[str, Any]]:
        """Every event the server holds (REST)."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        async with aiohttp.ClientSession() as s, s.get(
                f"http://127.0.0.1:{self.port}/api/v1/events?since=0&limit=10000", headers=headers) as r:
            body = await r.json()
        return list(body["events"])


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    """A running in-process server."""
    srv = Server(free_port())
    await srv.start()
    yield srv
    await srv.stop()


async def wait_until(what: str, cond: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll ``cond`` until true; fail with a description."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def seqs_of(out: io.StringIO) -> list[int]:
    """The seq of every JSON line printed so far."""
    return [json.loads(ln)["seq"] for ln in out.getvalue().splitlines()]


async def test_tail_json_lines_match_server_events(server: Server) -> None:
    """--json: one JSON event per line, in order, the same events the server's REST API holds."""
    out, err = io.StringIO(), io.StringIO()
    tailer = Tailer(f"ws://127.0.0.1:{server.port}/ws", json_lines=True, lines=100000, out=out, err=err)
    task = asyncio.create_task(tailer.run())
    try:
        await wait_until("20 lines", lambda: len(out.getvalue().splitlines()) >= 20)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    lines = [json.loads(ln) for ln in out.getvalue().splitlines()]
    assert [e["seq"] for e in lines] == list(range(1, len(lines) + 1))
    held = {e["seq"]: e for e in await server.events()}
    for e in lines:
        assert held[e["seq"]] == e
    assert {"seq", "ts", "type", "tunnel", "netns", "detail"} <= set(lines[0])


async def test_tail_resumes_across_a_server_restart(server: Server) -> None:
    """After a restart (new instance, seq from 1 again), every event of both runs is printed once."""
    out, err = io.StringIO(), io.StringIO()
    tailer = Tailer(f"ws://127.0.0.1:{server.port}/ws", json_lines=True, lines=100000, out=out, err=err)
    task = asyncio.create_task(tailer.run())
    try:
        await wait_until("first lines", lambda: len(seqs_of(out)) >= 10)
        before = await server.events()
        await server.stop()
        await wait_until("the disconnect note", lambda: "reconnecting" in err.getvalue()
                         or "cannot reach" in err.getvalue())
        await asyncio.sleep(1.5)  # the tail retries with back-off meanwhile; the new server may run ahead of it
        await server.start()
        await wait_until("lines of the second run", lambda: 1 in seqs_of(out)[len(before):])
        second = await server.events()
        await wait_until("the tail to catch up", lambda: seqs_of(out)[-1] >= second[-1]["seq"])
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    seqs = seqs_of(out)
    cut = next(i for i in range(1, len(seqs)) if seqs[i] <= seqs[i - 1])
    assert seqs[:cut] == list(range(1, cut + 1))
    assert seqs[:cut][-1] >= before[-1]["seq"]
    assert seqs[cut:] == list(range(1, len(seqs) - cut + 1)), seqs[cut:]
    assert "server restarted" in err.getvalue()


async def test_tail_with_and_without_token() -> None:
    """A server with a token: no token -> exit status 2 with a clear note; the right token -> lines."""
    srv = Server(free_port(), token=TOKEN)
    await srv.start()
    try:
        out, err = io.StringIO(), io.StringIO()
        code = await asyncio.wait_for(Tailer(f"ws://127.0.0.1:{srv.port}/ws", out=out, err=err).run(), 10)
        assert code == 2
        assert "MONITOR_TOKEN" in err.getvalue()
        tailer = Tailer(f"ws://127.0.0.1:{srv.port}/ws", token=TOKEN, lines=1000, out=out, err=err)
        task = asyncio.create_task(tailer.run())
        try:
            await wait_until("lines with the token", lambda: len(out.getvalue().splitlines()) >= 3)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}  #1 ", out.getvalue())
    finally:
        await srv.stop()


def test_format_event_names_the_tunnel_from_detail_ike() -> None:
    """An event of a tunnel the IKE view named shows ``[conn/child]`` after the tunnel id and charon's last
    failure as ``ike_error=code``, not the raw ``ike`` dict; an unnamed one is unchanged."""
    ev = {"seq": 7, "ts": 1_700_000_000.0, "type": "tunnel_down", "tunnel": "default:1:a-b", "netns": "default",
          "detail": {"reason": "sa_deleted", "ike": {"conn": "gw", "child": "net",
                                                     "last_error": {"code": "peer_unreachable", "text": "t"}}}}
    line = format_event(ev)
    assert "default:1:a-b [gw/net]" in line, line
    assert "ike_error=peer_unreachable" in line
    assert "last_error" not in line
    bare = format_event({**ev, "detail": {"reason": "sa_deleted"}})
    assert "[" not in bare.split("#7", 1)[1]
