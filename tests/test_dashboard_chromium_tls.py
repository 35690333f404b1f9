"""The dashboard over HTTPS and WSS in Debian's real headless Chromium (issue 16 item 3).

Trust: the server certificate is issued by a test CA made here with the openssl CLI, and Chromium is told to
accept it with ``--ignore-certificate-errors-spki-list`` set to the base64 SHA-256 of the server
certificate's SubjectPublicKeyInfo (Chromium's documented way to trust a test certificate without touching
a system or NSS trust store). The pin is specific: a second monitor whose certificate comes from the same CA
with another key is refused by the same browser (``net::ERR_CERT_AUTHORITY_INVALID``), so the first page
loads because of the pin, not because certificate checks are off.

Over the pinned server the dashboard works as over HTTP: it loads with a token, its REST reads are
authorised, its websocket connects (``wss://``: an ``https`` page may not open ``ws://``, and the DevTools
``Network.webSocketCreated`` event shows the URL), and rows render and update.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.serve_process import Serve
from tests.test_dashboard_chromium import CHROMIUM, ROWS, Page

pytestmark = pytest.mark.external

TOKEN = "chromium-tls-token-0123456789"


def _openssl(d: Path, *args: str, stdin: bytes | None = None) -> bytes:
    r = subprocess.run(["openssl", *args], cwd=d, input=stdin, capture_output=True, timeout=60, check=True)
    return r.stdout


def _issue(d: Path, name: str) -> None:
    """``name``.pem/.key: a certificate for 127.0.0.1 with its own key, signed by the test CA in ``d``."""
    _openssl(d, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-subj", f"/CN={name}",
             "-out", f"{name}.csr")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl(d, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "2", "-extfile", "san.ext", "-out", f"{name}.pem")


def spki_sha256(cert: Path) -> str:
    """Base64 SHA-256 of the certificate's DER SubjectPublicKeyInfo (Chromium's SPKI pin format)."""
    pub = _openssl(cert.parent, "x509", "-in", cert.name, "-noout", "-pubkey")
    der = _openssl(cert.parent, "pkey", "-pubin", "-outform", "DER", stdin=pub)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


class RecordingPage(Page):
    """A Page that also keeps every DevTools event (method, params)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        super().__init__(ws)

    async def _read(self) -> None:
        async for msg in self.ws:
            data = json.loads(msg.data)
            if "method" in data:
                self.events.append((data["method"], data.get("params", {})))
            if "id" in data and data["id"] in self.pending:
                fut = self.pending.pop(data["id"])
                if "error" in data:
                    fut.set_exception(RuntimeError(str(data["error"])))
                else:
                    fut.set_result(data.get("result"))
            elif data.get("method") == "Runtime.exceptionThrown":
                self.exceptions.append(json.dumps(data["params"]["exceptionDetails"])[:500])


async def test_dashboard_over_https_with_a_pinned_test_certificate(tmp_path: Path) -> None:
    """HTTPS page, authorised REST, WSS websocket, live rows; another certificate of the same CA is refused."""
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (apt-get install chromium)")
    _openssl(tmp_path, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-subj",
             "/CN=monitor test CA", "-days", "2", "-out", "ca.pem")
    _issue(tmp_path, "pinned")
    _issue(tmp_path, "other")
    pin = spki_sha256(tmp_path / "pinned.pem")
    assert pin != spki_sha256(tmp_path / "other.pem")

    def serve(name: str) -> Serve:
        return Serve("--source", "simulate", "--speed", "10", "--tunnels", "12",
                     "--tls-cert", str(tmp_path / f"{name}.pem"), "--tls-key", str(tmp_path / f"{name}.key"),
                     env={"MONITOR_TOKEN": TOKEN})

    pinned, other = serve("pinned"), serve("other")
    profile = tmp_path / "profile"
    log = tmp_path / "chromium.log"
    with log.open("wb") as log_file:
        browser = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--remote-debugging-port=0",
             "--remote-debugging-address=127.0.0.1", f"--user-data-dir={profile}", "--window-size=1500,950",
             f"--ignore-certificate-errors-spki-list={pin}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=log_file)
    try:
        port_file = profile / "DevToolsActivePort"
        for _ in range(300):
            if port_file.exists() and port_file.read_text().strip():
                break
            assert browser.poll() is None, log.read_text(errors="replace")[-2000:]
            await asyncio.sleep(0.1)  # a bounded poll: 300 x 0.1 s while Chromium writes its port
        devtools = f"http://127.0.0.1:{port_file.read_text().split()[0]}"
        assert pinned.base.startswith("https://127.0.0.1:")
        async with aiohttp.ClientSession() as session:
            async with session.put(f"{devtools}/json/new?about:blank") as resp:
                target = await resp.json(content_type=None)
            rec = RecordingPage(await session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=64 << 20))
            for domain in ("Runtime", "Page", "Network"):
                await rec.call(f"{domain}.enable")
            nav = await rec.call("Page.navigate", url=f"{pinned.base}?token={TOKEN}")
            assert "errorText" not in nav, nav
            await rec.wait("12 tunnel rows over HTTPS", f"{ROWS} === 12")
            await rec.wait("the live indicator (websocket connected)", "document.body.dataset.connected === 'true'")
            assert await rec.js("location.protocol") == "https:"
            cells = await rec.js("document.querySelector('#tunnels tbody').innerText")
            await rec.wait("rows to update over WSS", f"document.querySelector('#tunnels tbody').innerText !== "
                           f"{json.dumps(cells)}")
            sockets = [p["url"] for m, p in rec.events if m == "Network.webSocketCreated"]
            assert sockets, [m for m, _ in rec.events][:50]
            assert all(u.startswith(f"wss://127.0.0.1:{pinned.base.rsplit(':', 1)[1].rstrip('/')}/ws")
                       for u in sockets), sockets
            # the token travels in Sec-WebSocket-Protocol ("bearer.<token>"), never in the URL
            assert not [u for u in sockets if "token=" in u], sockets
            failed = [p for m, p in rec.events if m == "Network.loadingFailed"]
            assert failed == [], failed
            assert not rec.exceptions, rec.exceptions
            # the same browser refuses a certificate of the same CA with another key: the pin is what trusts
            refused = await rec.call("Page.navigate", url=f"{other.base}?token={TOKEN}")
            assert refused.get("errorText") == "net::ERR_CERT_AUTHORITY_INVALID", refused
            rec.reader.cancel()
            await rec.ws.close()
    finally:
        browser.terminate()
        try:
            browser.wait(10)
        except subprocess.TimeoutExpired:
            browser.kill()
            browser.wait(5)
        pinned.stop()
        other.stop()

