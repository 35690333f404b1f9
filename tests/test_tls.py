"""HTTPS and WSS (issue 16 item 3): a test CA made with the openssl CLI, the real ``monitor serve`` process,
real TLS clients (curl, aiohttp), the token as a websocket subprotocol, and a certificate reload on SIGHUP."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import socket
import ssl
import subprocess
from pathlib import Path

import aiohttp
import pytest

from tests.serve_process import Serve

TOKEN = "tls-test-token-0123456789"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _issue(d: Path, name: str, serial: str) -> None:
    """A server certificate for 127.0.0.1/localhost signed by the test CA in ``d``."""
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-subj", f"/CN={name}",
             "-out", f"{name}.csr", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-set_serial", serial,
             "-days", "2", "-extfile", "san.ext", "-out", f"{name}.pem", cwd=d)


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl CLI")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-subj", "/CN=monitor test CA",
             "-days", "2", "-out", "ca.pem", cwd=tmp_path)
    _issue(tmp_path, "server", "0x1001")
    _issue(tmp_path, "renewed", "0x2002")
    return tmp_path


def _serial(port: int, ca: Path) -> int:
    ctx = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
        der = s.getpeercert(binary_form=True)
    assert der is not None
    out = subprocess.run(["openssl", "x509", "-inform", "DER", "-noout", "-serial"], input=der,
                         capture_output=True, check=True, timeout=30).stdout.decode()
    return int(out.strip().split("=")[1], 16)


async def test_https_wss_token_subprotocol_and_sighup_reload(pki: Path) -> None:
    cert, key = pki / "live.pem", pki / "live.key"
    shutil.copy(pki / "server.pem", cert)
    shutil.copy(pki / "server.key", key)
    serve = Serve("--source", "simulate", "--tunnels", "4", "--tls-cert", str(cert), "--tls-key", str(key),
                  env={"MONITOR_TOKEN": TOKEN})
    proc = serve.proc
    try:
        port = int(serve.base.rsplit(":", 1)[1].rstrip("/"))
        base = f"https://127.0.0.1:{port}"
        # curl, verifying against the test CA
        out = subprocess.run(["curl", "-sS", "--fail", "--cacert", str(pki / "ca.pem"), "-H",
                              f"Authorization: Bearer {TOKEN}", f"{base}/api/v1/tunnels"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
        assert json.loads(out)["schema"] == 1
        refused = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert",
                                  str(pki / "ca.pem"), f"{base}/api/v1/tunnels"],
                                 capture_output=True, text=True, timeout=30, check=False).stdout
        assert refused == "401"
        # aiohttp over WSS, the token offered as a subprotocol (what a browser can do)
        ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(f"wss://127.0.0.1:{port}/ws", ssl=ctx,
                                       protocols=("monitor.v1", f"bearer.{TOKEN}")) as ws:
                hello = await ws.receive_json(timeout=10)
                assert hello["type"] == "hello"
                assert ws.protocol == "monitor.v1"
            with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
                await http.ws_connect(f"wss://127.0.0.1:{port}/ws", ssl=ctx, protocols=("monitor.v1", "bearer.wrong"))
            assert exc.value.status == 401
        # a renewed certificate is picked up on SIGHUP, without a restart
        assert await asyncio.to_thread(_serial, port, pki / "ca.pem") == 0x1001
        shutil.copy(pki / "renewed.pem", cert)
        shutil.copy(pki / "renewed.key", key)
        proc.send_signal(signal.SIGHUP)
        for _ in range(50):
            if await asyncio.to_thread(_serial, port, pki / "ca.pem") == 0x2002:
                break
            await asyncio.sleep(0.1)
        assert await asyncio.to_thread(_serial, port, pki / "ca.pem") == 0x2002
        assert proc.poll() is None
    finally:
        serve.stop()
