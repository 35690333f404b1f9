"""DNS rebinding (issue 11 item 5): a page whose name was re-pointed at the monitor cannot read it.

Before the fix, with no token (the loopback default), a request with ``Host: attacker.example`` and
``Origin: http://attacker.example:P`` got REST 200 and ``/ws`` 101. Real server, real HTTP requests.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from monitor.serve.config import Settings
from monitor.serve.web import create_app


@pytest.fixture
async def server() -> AsyncIterator[TestServer]:
    app = create_app(Settings(source="simulate", tunnels=2, port=0, allowed_hosts=("monitor.example.net",)))
    srv = TestServer(app, host="127.0.0.1", port=0)
    await srv.start_server()
    yield srv
    await srv.close()


async def _get(server: TestServer, path: str, **headers: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(server.make_url(path), headers=headers) as r:
        return r.status, await r.read()


async def test_foreign_host_is_refused_on_rest_ws_and_dashboard(server: TestServer) -> None:
    port = server.port
    rebinding = {"Host": f"attacker.example:{port}", "Origin": f"http://attacker.example:{port}"}
    for path in ("/api/v1/tunnels", "/healthz", "/metrics", "/"):
        status, body = await _get(server, path, **rebinding)
        assert status == 421, (path, status, body[:200])
    ws_headers = {**rebinding, "Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                  "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    status, _ = await _get(server, "/ws", **ws_headers)
    assert status == 421


async def test_loopback_and_listed_names_are_served(server: TestServer) -> None:
    port = server.port
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", f"monitor.example.net:{port}"):
        status, _ = await _get(server, "/api/v1/tunnels", Host=host)
        assert status == 200, host


async def test_origin_must_match_scheme_too(server: TestServer) -> None:
    port = server.port
    async with aiohttp.ClientSession() as http:
        ok = await http.ws_connect(server.make_url("/ws"), origin=f"http://127.0.0.1:{port}")
        await ok.close()
        with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
            await http.ws_connect(server.make_url("/ws"), origin=f"https://127.0.0.1:{port}")
    assert exc.value.status == 403
