"""The prober wired into `monitor serve`: with `[prober] enabled`, the served tunnel JSON carries `probe`.

Real app (create_app) on the real simulator, correlator and hub. The targets are deliberately OUTSIDE the
simulated tunnels' selectors (10.x), so the prober refuses them: this shows the wiring and the safety rule end
to end while sending no packet at all (the real sender is covered in tests/test_prober_netns.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer

from monitor.errors import ConfigError
from monitor.probe.safety import tunnel_view
from monitor.serve.config import Settings
from monitor.serve.handlers import HUB
from monitor.serve.web import create_app
from tests.test_web_fakes import validate

PROBER = {
    "enabled": True, "idle_after": 1, "interval": 1, "timeout": 1,
    "targets": [{"reqid": 2, "target": "203.0.113.99", "source": "10.0.0.1"}],
}


@pytest.fixture
async def server() -> AsyncIterator[TestServer]:
    """serve on the simulator (4 tunnels) with the prober enabled, on 127.0.0.1:0."""
    app = create_app(Settings(source="simulate", tunnels=4, speed=30, seed=3, port=0, prober=PROBER))
    srv = TestServer(app, host="127.0.0.1", port=0)
    await srv.start_server()
    yield srv
    await srv.close()


async def tunnels(srv: TestServer) -> list[dict[str, Any]]:
    """GET /api/v1/tunnels."""
    async with aiohttp.ClientSession() as s, s.get(srv.make_url("/api/v1/tunnels")) as r:
        assert r.status == 200
        body: dict[str, Any] = orjson.loads(await r.read())
        validate("rest-tunnels.json", body)  # the probe object included (docs/schema/tunnel.json)
        return list(body["tunnels"])


async def test_probe_field_is_served_and_refusal_reported(server: TestServer) -> None:
    """The reqid-2 tunnel gets a probe object with the refusal (target outside its remote selectors), nothing
    sent; the other tunnels have probe null."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    ts: list[dict[str, Any]] = []
    while loop.time() < deadline:
        ts = await tunnels(server)
        probed = [t for t in ts if t.get("probe")]
        if probed and probed[0]["probe"]["refused"] >= 1:
            break
        await asyncio.sleep(0.1)
    by_reqid = {t["reqid"]: t for t in ts}
    p = by_reqid[2]["probe"]
    assert p is not None, by_reqid[2]
    assert (p["target"], p["sent"], p["answered"]) == ("203.0.113.99", 0, 0)
    assert p["refused"] >= 1
    assert "outside the tunnel's remote selectors" in p["last_error"]
    assert all(t["probe"] is None for r, t in by_reqid.items() if r != 2)


async def test_real_correlator_selectors_are_read_by_the_prober(server: TestServer) -> None:
    """tunnel_view reads every selector of the correlator's real JSON, oriented local -> remote."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while loop.time() < deadline and not any(t["selectors"] for t in await tunnels(server)):
        await asyncio.sleep(0.1)
    ts = [t for t in await tunnels(server) if t["selectors"]]
    assert ts
    for t in ts:
        view = tunnel_view(t)
        assert len(view.selectors) == len(t["selectors"])
        # the simulator's local nets are 10.0.x.y and its remote nets 10.(1+n).x.0/24
        assert all(str(s.local).startswith("10.0.") for s in view.selectors), t["selectors"]
        assert all(not str(s.remote).startswith("10.0.") for s in view.selectors), t["selectors"]


def test_bad_prober_table_is_a_config_error() -> None:
    """A bad [prober] table stops start-up with ConfigError (validated with the other settings)."""
    with pytest.raises(ConfigError, match="prober"):
        Settings(prober={"enabled": True, "rate": -1, "targets": []})


async def test_prober_off_leaves_probe_null() -> None:
    """Without a [prober] table the correlator is not wrapped (the JSON keeps the correlator's probe: null)."""
    app = create_app(Settings(source="simulate", tunnels=2, speed=30, seed=3, port=0))
    assert type(app[HUB].view).__name__ != "ProbedCorrelator"
