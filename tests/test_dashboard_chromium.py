"""The dashboard in Debian's real headless Chromium, against a real ``monitor serve`` on the simulator.

Chromium is driven over the Chrome DevTools protocol (a websocket, from aiohttp). The test checks
that tunnel rows and events render, that they *update* (counters and the event log move), that
filters work, that the page reconnects by itself after a server restart, and it saves a screenshot
(``artifacts/dashboard.png``).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.fake_charon import FakeCharon
from tests.ike_samples import list_conn, list_sa
from tests.simserver import SimServer, free_port

pytestmark = pytest.mark.external

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


class Page:
    """A minimal CDP client for one page target."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.exceptions: list[str] = []
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            data = json.loads(msg.data)
            if "id" in data and data["id"] in self.pending:
                fut = self.pending.pop(data["id"])
                if "error" in data:
                    fut.set_exception(RuntimeError(str(data["error"])))
                else:
                    fut.set_result(data.get("result"))
            elif data.get("method") == "Runtime.exceptionThrown":
                self.exceptions.append(json.dumps(data["params"]["exceptionDetails"])[:500])

    async def call(self, method: str, **params: Any) -> Any:
        """Send one CDP command and wait for its result."""
        i = next(self.ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[i] = fut
        await self.ws.send_str(json.dumps({"id": i, "method": method, "params": params}))
        return await asyncio.wait_for(fut, 30)

    async def js(self, expr: str) -> Any:
        """Evaluate an expression in the page and return its (JSON) value."""
        res = await self.call("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in res:
            raise AssertionError(f"{expr}: {res['exceptionDetails']}")
        return res["result"].get("value")

    async def wait(self, what: str, expr: str, timeout: float = 30.0) -> Any:
        """Poll ``expr`` until truthy; on timeout report what the page showed."""
        deadline = time.monotonic() + timeout
        value: Any = None
        while time.monotonic() < deadline:
            value = await self.js(expr)
            if value:
                return value
            await asyncio.sleep(0.2)
        snapshot = await self.js("document.body.innerText.slice(0, 3000)")
        raise AssertionError(f"timed out waiting for {what} (last value {value!r}); page text:\n{snapshot}")


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[tuple[str, subprocess.Popen[bytes]]]:
    """Headless Chromium with a DevTools port; yields its HTTP endpoint."""
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (apt-get install chromium)")
    profile = tmp_path / "profile"
    log = tmp_path / "chromium.log"
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--remote-debugging-port=0",
             "--remote-debugging-address=127.0.0.1", f"--user-data-dir={profile}", "--window-size=1500,950",
             "about:blank"],
            stdout=subprocess.DEVNULL, stderr=log_file)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text().strip():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chromium did not start: {log.read_text(errors='replace')[-2000:]}")
            await asyncio.sleep(0.1)
        yield f"http://127.0.0.1:{port_file.read_text().split()[0]}", proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


async def open_page(session: aiohttp.ClientSession, devtools: str, url: str) -> Page:
    """Open ``url`` in a new tab and attach to it."""
    async with session.put(f"{devtools}/json/new?{url}") as resp:
        target = await resp.json(content_type=None)
    ws = await session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=64 << 20)
    page = Page(ws)
    await page.call("Runtime.enable")
    await page.call("Page.enable")
    return page


ROWS = "document.querySelectorAll('#tunnels tbody tr.tunnel').length"
EVENTS = "document.querySelectorAll('#events li[data-seq]').length"
CELLS = ("JSON.stringify([...document.querySelectorAll('#tunnels tbody tr.tunnel')].map("
         "r => [r.dataset.id, r.querySelector('.rate-in').textContent, r.querySelector('.rate-out').textContent]))")


async def test_dashboard_renders_updates_filters_and_reconnects(
        browser: tuple[str, subprocess.Popen[bytes]], tmp_path: Path) -> None:
    """Rows and events render and update; state colours, countdowns, filters; reconnect after a restart."""
    devtools, _ = browser
    port = free_port()
    server = SimServer(port, tmp_path / "serve.log", speed=10.0, tunnels=24).start()
    restarted: SimServer | None = None
    try:
        async with aiohttp.ClientSession() as session:
            page = await open_page(session, devtools, f"http://127.0.0.1:{port}/")
            await page.wait("24 tunnel rows", f"{ROWS} === 24")
            await page.wait("the live indicator", "document.body.dataset.connected === 'true'")
            await page.wait("events in the log", f"{EVENTS} >= 1")
            cells = json.loads(await page.js(CELLS))
            events = await page.js(EVENTS)
            # live updates: counters frames change rate cells, new events are prepended
            await page.wait("a rate cell to change", f"{CELLS} !== {json.dumps(json.dumps(cells))}")
            await page.wait("more events", f"{EVENTS} > {events}")
            # a state colour: every row's state badge has its state's class
            badges = await page.js("[...document.querySelectorAll('tr.tunnel .state')].map(b => b.className)")
            assert all(re.fullmatch(r"state s-[a-z-]+", b) for b in badges), badges
            await page.wait("a countdown to hard expiry",
                            "[...document.querySelectorAll('tr.tunnel .expiry')].some("
                            "c => /^\\d+m\\d\\ds$|^\\d+s$/.test(c.textContent))")
            # the dying tunnel (reqid 4) goes down within ~80 simulated seconds: red badge, reasons shown
            down = await page.wait("a down tunnel", "(() => { const r = document.querySelector("
                                   "'tr.tunnel[data-state=down]'); return r && [r.querySelector('.state')"
                                   ".className, r.querySelector('.reasons').textContent]; })()", timeout=60)
            assert down[0] == "state s-down", down
            assert down[1].strip(), "a down tunnel without reasons"
            # filters: the state chip and the text box
            await page.js("document.querySelector('.chip[data-state=down]').click()")
            await page.wait("only down rows", "(() => { const s = [...document.querySelectorAll('tr.tunnel')]"
                            ".map(r => r.dataset.state); return s.length > 0 && s.every(x => x === 'down'); })()")
            await page.js("document.querySelector('.chip[data-state=down]').click()")
            await page.js("(() => { const i = document.querySelector('#text-filter'); i.value = '198.51.100.7';"
                          " i.dispatchEvent(new Event('input')); })()")
            await page.wait("one row for the text filter", f"{ROWS} === 1")
            await page.js("(() => { const i = document.querySelector('#text-filter'); i.value = '';"
                          " i.dispatchEvent(new Event('input')); })()")
            await page.wait("all rows back", f"{ROWS} === 24")
            shot = await page.call("Page.captureScreenshot", format="png")
            ARTIFACTS.mkdir(exist_ok=True)
            (ARTIFACTS / "dashboard.png").write_bytes(base64.b64decode(shot["data"]))
            # reconnects by itself after a server restart
            assert server.stop() == 0
            await page.wait("the disconnected indicator", "document.body.dataset.connected === 'false'")
            restarted = SimServer(port, tmp_path / "serve.log", speed=10.0, tunnels=24).start()
            await page.wait("reconnected", "document.body.dataset.connected === 'true'", timeout=30)
            await page.wait("rows after the restart", f"{ROWS} === 24")
            await page.wait("the restart note", "document.querySelector('#events li.restart') !== null")
            assert not page.exceptions, page.exceptions
            page.reader.cancel()
            await page.ws.close()
    finally:
        server.stop()
        if restarted is not None:
            restarted.stop()


async def test_dashboard_assembles_chunked_snapshots_and_caps_rows(
        browser: tuple[str, subprocess.Popen[bytes]], tmp_path: Path) -> None:
    """600 tunnels sent in 120 snapshot chunks of 5: every tunnel arrives, 500 rows are drawn, all counted."""
    devtools, _ = browser
    port = free_port()
    server = SimServer(port, tmp_path / "serve.log", speed=5.0, tunnels=600,
                       env={"MONITOR_SNAPSHOT_CHUNK": "5"}).start()
    try:
        async with aiohttp.ClientSession() as session:
            page = await open_page(session, devtools, f"http://127.0.0.1:{port}/")
            await page.wait("all 600 tunnels",
                            "window.monitorDashboard && window.monitorDashboard.tunnels.size === 600", timeout=60)
            await page.wait("500 drawn rows", f"{ROWS} === 500")
            assert "600 tunnels" in await page.js("document.querySelector('#summary').textContent")
            assert "showing 500 of 600" in await page.js("document.querySelector('#shown').textContent")
            assert not page.exceptions, page.exceptions
            page.reader.cancel()
            await page.ws.close()
    finally:
        server.stop()


def _bytes_text(n: int) -> str:
    """The dashboard's byte format, written here from its definition (binary units, one decimal)."""
    units = ["B", "KiB", "MiB", "GiB", "TiB"]
    v, i = float(n), 0
    while v >= 1024 and i < len(units) - 1:
        v /= 1024
        i += 1
    return f"{v:.0f} {units[i]}" if i == 0 else f"{v:.1f} {units[i]}"


def _rate_text(bps: float) -> str:
    """The dashboard's rate format: bytes per second shown in bit/s, decimal units."""
    units = ["bit/s", "kbit/s", "Mbit/s", "Gbit/s"]
    v, i = bps * 8, 0
    while v >= 1000 and i < len(units) - 1:
        v /= 1000
        i += 1
    return f"{v:.0f} {units[i]}" if i == 0 else f"{v:.2f} {units[i]}" if v < 10 else f"{v:.1f} {units[i]}"


ROW_VALUES = ("JSON.stringify([...document.querySelectorAll('#tunnels tbody tr.tunnel')].map(r => ({"
              "id: r.dataset.id, state: r.dataset.state, sub: r.querySelector('.sub').textContent, "
              "rin: r.querySelector('.rate-in').textContent, rout: r.querySelector('.rate-out').textContent, "
              "tin: r.querySelector('.rate-in').title, tout: r.querySelector('.rate-out').title})))")


async def test_dashboard_values_equal_rest(browser: tuple[str, subprocess.Popen[bytes]], tmp_path: Path) -> None:
    """Issue 17 item 4: what the page shows equals /api/v1/tunnels at the same moment, on a static source
    (the committed VM run replayed to its end): row ids, states, remotes, rates and byte totals."""
    devtools, _ = browser
    port = free_port()
    server = SimServer(port, tmp_path / "serve.log")
    capture = Path(__file__).parent / "data" / "vm-run-2026-11-26" / "monitor-a.pcap"
    server.args = [*server.args[:5], f"replay:{capture}", "--host", "127.0.0.1", "--port", str(port), "--speed", "0"]
    server.start()
    try:
        rest = {t["id"]: t for t in server.get("/api/v1/tunnels")["tunnels"]}
        assert rest
        async with aiohttp.ClientSession() as session:
            page = await open_page(session, devtools, f"http://127.0.0.1:{port}/")
            await page.wait("the rows", f"{ROWS} === {len(rest)}")
            rows = json.loads(await page.js(ROW_VALUES))
            page.reader.cancel()
            await page.ws.close()
    finally:
        server.stop()
    assert {r["id"] for r in rows} == set(rest)
    for r in rows:
        t = rest[r["id"]]
        assert r["state"] == t["state"]
        assert f"{t['local']} ⇄ {t['remote']}" in r["sub"]
        assert r["rin"] == _rate_text(t["rate_in_bps"])
        assert r["rout"] == _rate_text(t["rate_out_bps"])
        assert r["tin"].startswith(f"{_bytes_text(t['bytes_in'])} in total")
        assert r["tout"].startswith(f"{_bytes_text(t['bytes_out'])} in total")


async def test_dashboard_namespace_panel_equals_rest(browser: tuple[str, subprocess.Popen[bytes]],
                                                     tmp_path: Path) -> None:
    """Issue 12 item 8: the namespace panel shows each namespace and its hints as /api/v1/netns does (a
    simulated fleet with an expected device range that no policy covers, so there is a hint to show; the counts
    are compared with a fresh page, since a netns message is only re-sent when hints or counters change)."""
    devtools, _ = browser
    port = free_port()
    config = tmp_path / "monitor.toml"
    config.write_text('[health]\nexpected_remote_ranges = ["100.64.0.0/10"]\n')
    server = SimServer(port, tmp_path / "serve.log")
    server.args = [*server.args, "--config", str(config)]
    server.start()
    try:
        rest: dict[str, Any] = {}
        deadline = time.monotonic() + 30
        while not any(h["code"] == "uncovered_remote_range" for d in rest.values() for h in d["hints"]):
            assert time.monotonic() < deadline, f"no uncovered_remote_range hint over REST: {rest}"
            await asyncio.sleep(0.2)
            rest = {d["netns"]: d for d in server.get("/api/v1/netns")["netns"]}
        async with aiohttp.ClientSession() as session:
            page = await open_page(session, devtools, f"http://127.0.0.1:{port}/")
            await page.wait("the namespace panel's hint", "document.querySelectorAll('#netns-list .hint').length > 0")
            shown = json.loads(await page.js(
                "JSON.stringify([...document.querySelectorAll('#netns-list li')].map(li => ({netns: li.dataset.netns,"
                " head: li.firstChild.textContent,"
                " hints: [...li.querySelectorAll('.hint')].map(h => h.textContent)})))"))
            page.reader.cancel()
            await page.ws.close()
        after = {d["netns"]: d for d in server.get("/api/v1/netns")["netns"]}
    finally:
        server.stop()
    assert {s["netns"] for s in shown} == set(rest)
    for s in shown:
        d = after[s["netns"]]
        assert s["head"].startswith(f"{d['netns']}: {d['tunnels']} tunnels, "), (s, d)
        lint = [f"{h['code']}: {h['text']}" for h in d["hints"] if h["code"] == "uncovered_remote_range"]
        assert lint
        assert [h for h in s["hints"] if h.startswith("uncovered_remote_range")] == lint


async def test_dashboard_shows_ike_names_hints_and_named_events(
        browser: tuple[str, subprocess.Popen[bytes]], tmp_path: Path) -> None:
    """With the IKE view on (a fake charon on a real VICI socket): the joined tunnel's row and the configured
    child's row show ``conn/child``, its configuration hints show, the text filter finds a tunnel by its
    connection name, and the event log names the tunnel of an event (``detail.ike``)."""
    devtools, _ = browser
    sock_dir = Path(tempfile.mkdtemp(prefix="vici-", dir="/tmp"))  # unix socket paths: at most 107 bytes
    fake = FakeCharon(str(sock_dir / "charon.vici"))
    fake.sas = [list_sa()]
    fake.conns = [list_conn(children=("net", "voice"))]
    fake.start()
    port = free_port()
    server = SimServer(port, tmp_path / "serve.log", speed=20.0, tunnels=6,
                       env={"MONITOR_VICI": str(sock_dir / "charon.vici")}).start()
    names = ("JSON.stringify(Object.fromEntries([...document.querySelectorAll('#tunnels tbody tr.tunnel')].map("
             "r => [r.dataset.id, (r.querySelector('.ike-names') || {}).textContent || '']).filter(x => x[1])))")
    try:
        async with aiohttp.ClientSession() as session:
            page = await open_page(session, devtools, f"http://127.0.0.1:{port}/")
            shown = json.loads(await page.wait("two named rows", f"(() => {{ const n = {names};"
                                               " return Object.keys(JSON.parse(n)).length === 2 && n; })()"))
            assert {v.strip() for v in shown.values()} == {"gw/net", "gw/voice"}, shown
            assert shown["ike:gw:voice"].strip() == "gw/voice"
            hint = await page.js("document.querySelector('tr.tunnel[data-id=\"ike:gw:voice\"] .ike-hint')"
                                 ".textContent")
            assert hint.startswith("config (close_action): close_action = clear"), hint
            await page.js("(() => { const i = document.querySelector('#text-filter'); i.value = 'gw/voice';"
                          " i.dispatchEvent(new Event('input')); })()")
            await page.wait("the filter by connection name", f"{ROWS} === 1")
            await page.wait("an event named gw/net", "[...document.querySelectorAll('#events li .ike-names')]"
                            ".some(s => s.textContent.trim() === 'gw/net')", timeout=90)
            assert not page.exceptions, page.exceptions
            page.reader.cancel()
            await page.ws.close()
    finally:
        server.stop()
        fake.stop()
        shutil.rmtree(sock_dir, ignore_errors=True)
