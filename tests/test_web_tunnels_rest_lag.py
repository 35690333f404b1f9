"""``GET /api/v1/tunnels`` on a big fleet must not block the event loop while it streams.

The client runs in a worker thread (as a real remote client would). The server's transport is given a
huge write buffer, so aiohttp's ``write`` never waits on it: any point where the loop runs another task
comes from the handler's own yields. A ticker task counts the loop's turns, and every ``tunnel_json``
call notes the tick it ran at, so the test sees how many tunnels the handler builds between yields:
the mechanism, not a wall-clock lag (that figure is in ``bench/timing_bench.py``).
"""

from __future__ import annotations

import asyncio
import gc
import json
import urllib.request

from aiohttp.test_utils import TestServer

from monitor.serve.config import Settings
from monitor.serve.web import create_app
from tests.test_web_fakes import FakeCorrelator, FakePipeline, LoopTicks, QueueSource, no_write_backpressure

YIELD_EVERY = 500  # tunnels the handler may build between two yields to the loop


async def test_rest_tunnels_100k_streams_without_blocking_the_loop() -> None:
    """100,000 tunnels through ``/api/v1/tunnels``: all arrive, and the loop runs other tasks at least
    every 500 tunnels while the list is built."""
    n = 100_000
    fake = FakeCorrelator()
    for i in range(n):
        fake.add(f"t{i:06d}", netns="default", n=i)
    fake.drain_events()
    fake.take_dirty()
    ticks = LoopTicks()
    fake.tunnel_json = ticks.record(fake.tunnel_json)  # type: ignore[method-assign]
    app = create_app(Settings(source="simulate", port=0), source=QueueSource(), correlator=fake,
                     pipeline=FakePipeline(fake))
    no_write_backpressure(app)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        url = str(server.make_url("/api/v1/tunnels"))

        def fetch() -> bytes:
            with urllib.request.urlopen(url, timeout=60) as r:
                return bytes(r.read())

        ticks.start()
        body = await asyncio.to_thread(fetch)
        await ticks.stop()
    finally:
        await server.close()
        del app, server
        gc.collect()
    doc = json.loads(body)
    assert n == len(doc["tunnels"]), f"got {len(doc['tunnels'])} tunnels"
    assert n == len(ticks.seen)
    assert ticks.longest_run() <= YIELD_EVERY, (
        f"the handler built {ticks.longest_run()} tunnels without letting the loop run another task")
    # and the yields were spread over the whole list, not bunched at its start
    assert len(set(ticks.seen)) >= n // YIELD_EVERY
