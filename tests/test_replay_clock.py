"""A replayed capture runs on the capture's own clock in ``serve`` (issue 12 item 2, issue 11 item 10).

Before the fix ``serve --source replay:`` fed the wall clock to the core: on the committed VM run
``hard_expires_in`` was -547733 s, every SA instantly ``expiring`` and rekey durations 0.0001 s. The
reference here is ``monitor check``'s replay path (``read_replay``), which plays the same capture through
the core on its timestamps without any daemon, loop or clock.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from monitor.commands.check import read_replay
from monitor.serve.config import Settings
from monitor.serve.handlers import DAEMON
from monitor.serve.web import create_app
from monitor.sources.replay import ReplaySource
from monitor.wire.pcap import read_pcap

CAPTURE = Path(__file__).parent / "data" / "vm-run-2026-11-26" / "monitor-a.pcap"
COMPARED = ("id", "state", "reasons", "bytes_in", "bytes_out", "rekeys", "rekey_failures", "hard_expires_in",
            "since", "last_rekey")


async def test_serve_replay_matches_the_capture_clock_reference() -> None:
    expected, end = read_replay(str(CAPTURE))
    app = create_app(Settings(source=f"replay:{CAPTURE}", speed=0, port=0))
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        daemon = app[DAEMON]
        for _ in range(600):
            if daemon.state != "starting" and daemon.state != "running":
                break
            await asyncio.sleep(0.05)
        assert daemon.state == "finished", (daemon.state, daemon.error)
        assert daemon.clock() == end  # the capture's last timestamp, not the wall clock
        async with aiohttp.ClientSession() as http, http.get(server.make_url("/api/v1/tunnels")) as r:
            got = (await r.json())["tunnels"]
    finally:
        await server.close()
    assert got
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert {k: g[k] for k in COMPARED} == {k: e[k] for k in COMPARED}
    live = [t for t in got if t["state"] != "down"]
    assert all(0 < t["hard_expires_in"] <= 60 for t in live if t["hard_expires_in"] is not None), live
    durations = [t["last_rekey"]["duration"] for t in got if t["last_rekey"]]
    assert durations
    assert all(d >= 0.01 for d in durations), durations


def _two_record_capture(tmp: Path, gap: float) -> Path:
    """A copy of the first two records of the capture with ``gap`` seconds between them."""
    out = tmp / "gap.pcap"
    raw = CAPTURE.read_bytes()
    header, rest = raw[:24], raw[24:]
    (sec, usec, incl, _orig) = struct.unpack("<IIII", rest[:16])
    first = rest[:16 + incl]
    rest = rest[16 + incl:]
    (_, _, incl2, orig2) = struct.unpack("<IIII", rest[:16])
    second = struct.pack("<IIII", sec + int(gap), usec, incl2, orig2) + rest[16:16 + incl2]
    out.write_bytes(header + first + second)
    assert len(list(read_pcap(out))) == 2
    return out


async def test_paced_replay_caps_a_huge_gap_and_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _two_record_capture(tmp_path, gap=2_000_000_000)  # a corrupt 63-year gap
    slept: list[float] = []
    real_sleep = asyncio.sleep

    async def fake_sleep(delay: float, *a: Any) -> None:
        slept.append(delay)
        await real_sleep(0)

    clock = [100.0]
    source = ReplaySource(path, speed=1.0, max_pause=10.0, monotonic=lambda: clock[0])
    mp = pytest.MonkeyPatch()
    mp.setattr(asyncio, "sleep", fake_sleep)
    try:
        with caplog.at_level(logging.WARNING, logger="monitor.sources.replay"):
            got = [item async for item in source.items()]
    finally:
        mp.undo()
    assert len(got) == 2
    assert slept == [10.0], slept  # paced by the capture, but never longer than max_pause
    assert source.capped == 1
    assert "pausing 10 s instead" in caplog.text
    assert source.now() == got[-1].ts  # the capture's clock (time stands still with the fake clock)
