"""The dashboard's tunnel page (``/#/tunnel/ID``) in real headless Chromium, against a real ``monitor serve``
on the simulator with history on, and a token (the page's REST calls carry it).

The page's timeline must have one segment per stored interval, in the same states and order as
``/api/v1/tunnels/{id}/history`` says, and show its flap count; a screenshot goes to
``artifacts/tunnel-page.png``.
"""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import aiohttp
import pytest

from tests.serve_process import until
from tests.simserver import SimServer, free_port
from tests.test_dashboard_chromium import ARTIFACTS, browser, open_page

__all__ = ["browser"]  # the fixture, imported for pytest

pytestmark = pytest.mark.external

TOKEN = "tunnel-page-test-token"


async def test_tunnel_page_timeline_matches_history(browser: tuple[str, subprocess.Popen[bytes]],
                                                    tmp_path: Path) -> None:
    devtools, _ = browser
    port = free_port()
    server = SimServer(port, tmp_path / "serve.log", token=TOKEN)
    # a static source with a known history: the committed VM run (rekeys, then the peer's death), replayed
    # at once into a fresh store; its records are from 2026-11-26, so the page's 30-day window holds them
    capture = Path(__file__).parent / "data" / "vm-run-2026-11-26" / "monitor-a.pcap"
    server.args = [*server.args[:5], f"replay:{capture}", "--host", "127.0.0.1", "--port", str(port), "--speed", "0",
                   "--state-dir", str(tmp_path / "state")]
    server.start()
    try:
        until("the replay recorded", lambda: (h := server.get("/healthz"))["source"]["state"] == "finished"
              and h["history"]["written_events"] == h["seq"])
        (tid,) = [t["id"] for t in server.get("/api/v1/tunnels")["tunnels"]]
        hist = server.get(f"/api/v1/tunnels/{tid}/history?from=30d")
        assert hist["flaps"] >= 1, hist
        assert len(hist["intervals"]) >= 2, hist
        async with aiohttp.ClientSession() as session:
            page = await open_page(session, devtools, f"http://127.0.0.1:{port}/?token={TOKEN}")
            await page.wait("the dashboard", "document.querySelectorAll('#tunnels tbody tr.tunnel').length > 0")
            # the row's own link, then the page's 30d button
            await page.js(f"document.querySelector('#tunnels tr.tunnel[data-id=\"{tid}\"] a.id').click()")
            await page.wait("the tunnel page", "document.querySelector('#tunnel-page .tp-windows') !== null")
            await page.js("[...document.querySelectorAll('#tunnel-page .tp-windows button')]"
                          ".find(b => b.textContent === '30d').click()")
            await page.wait("the timeline", "document.querySelectorAll('#tunnel-page svg.timeline rect').length > 1")
            shown = json.loads(await page.js(
                "JSON.stringify({states: [...document.querySelectorAll('#tunnel-page svg.timeline rect')]"
                ".map(r => r.dataset.state), flaps: document.querySelector('.tp-stats').dataset.flaps,"
                " title: document.querySelector('#tunnel-page h2').textContent,"
                " listHidden: document.querySelector('main').hidden,"
                " events: document.querySelectorAll('#tunnel-page .tp-events li').length})"))
            shot = await page.call("Page.captureScreenshot", format="png")
            ARTIFACTS.mkdir(exist_ok=True)
            (ARTIFACTS / "tunnel-page.png").write_bytes(base64.b64decode(shot["data"]))
            assert not page.exceptions, page.exceptions
            page.reader.cancel()
            await page.ws.close()
    finally:
        server.stop()
    assert shown["title"] == tid
    assert shown["listHidden"] is True
    assert shown["states"] == [i["state"] for i in hist["intervals"]]
    assert int(shown["flaps"]) == hist["flaps"]
    assert shown["events"] == min(200, len(hist["events"]))
