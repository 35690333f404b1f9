"""The IKE view against a real VICI socket served by a fake charon (``tests/fake_charon.py``, the ``vici``
package's own encoding): connect, subscribe, list, charon vanishing and coming back; in-process for the
client, then the real ``monitor serve`` process, which must keep serving REST meanwhile."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from monitor.ike.client import Listing, ViciClient, ViciStatus, describe
from monitor.ike.rules import IkeError
from tests.fake_charon import FakeCharon
from tests.ike_samples import b, list_conn, list_sa
from tests.serve_process import Serve, until
from tests.test_web_fakes import validate


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="vici-", dir="/tmp"))  # unix socket paths are limited to 107 bytes
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _charon(path: Path) -> FakeCharon:
    fake = FakeCharon(str(path))
    fake.sas = [list_sa()]
    fake.conns = [list_conn(children=("net", "voice"))]
    fake.start()
    return fake


async def _wait(what: str, cond: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_client_connects_lists_follows_and_reconnects(sock_dir: Path) -> None:
    """Subscribed to the five events, lists at start and after an updown, a log failure delivered as an IkeError,
    one status when charon vanishes, and back when it returns; the loop is never blocked (it keeps ticking)."""
    path = sock_dir / "charon.vici"
    fake = _charon(path)
    got: list[object] = []
    client = ViciClient(str(path), got.append, debounce=0.1, refresh=60.0, backoff=(0.1, 0.2))
    client.start(asyncio.get_running_loop())
    try:
        await _wait("a listing", lambda: any(isinstance(g, Listing) for g in got))
        assert isinstance(got[0], ViciStatus)
        assert got[0].connected
        listing = next(g for g in got if isinstance(g, Listing))
        assert [s.conn for s in listing.sas] == ["gw"]
        assert [c.name for c in listing.conns[0].children] == ["net", "voice"]
        for ev in ("ike-updown", "ike-rekey", "child-updown", "child-rekey", "log"):
            assert fake.listeners(ev) == 1, ev
        assert fake.requests == ["list-sas", "list-conns"]

        fake.emit("log", b(group="IKE", level=1, ikesa_name="gw", msg="received AUTHENTICATION_FAILED notify error"))
        await _wait("the error", lambda: any(isinstance(g, IkeError) for g in got))
        err = next(g for g in got if isinstance(g, IkeError))
        assert (err.conn, err.code) == ("gw", "auth_failed")

        fake.emit("child-updown", {"up": b"yes", **list_sa()})
        await _wait("a re-read after the event", lambda: fake.requests.count("list-sas") == 2)

        ticks = 0
        fake.stop()
        del got[:]
        while not any(isinstance(g, ViciStatus) and not g.connected for g in got):
            await asyncio.sleep(0.01)
            ticks += 1
            assert ticks < 1000
        down = [g for g in got if isinstance(g, ViciStatus)]
        assert down[0].error is not None
        assert str(path) in down[0].error

        fake = _charon(path)
        await _wait("reconnected", lambda: any(isinstance(g, ViciStatus) and g.connected for g in got))
        await _wait("listed again", lambda: any(isinstance(g, Listing) for g in got))
        assert client.connects == 2
    finally:
        await asyncio.get_running_loop().run_in_executor(None, client.stop)
        fake.stop()
    assert client._thread is not None
    assert not client._thread.is_alive()


def _get(base: str, path: str) -> Any:
    with urllib.request.urlopen(base + path, timeout=5) as r:
        return json.loads(r.read())


def _tunnels(base: str) -> dict[str, dict[str, Any]]:
    return {t["id"]: t for t in _get(base, "api/v1/tunnels")["tunnels"]}


def _joined(base: str) -> dict[str, Any] | None:
    """The simulated tunnel with reqid 1 (joined to the fake's CHILD_SA of reqid 1) and its ike block."""
    return next((t for t in _tunnels(base).values() if t["reqid"] == 1 and (t.get("ike") or {}).get("child")), None)


async def _ws_snapshot(base: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as http, http.ws_connect(base.replace("http", "ws") + "ws") as ws:
        async for msg in ws:
            doc = json.loads(msg.data)
            if doc["type"] == "snapshot":
                out += doc["tunnels"]
                if doc["last"]:
                    return out
    raise AssertionError("no snapshot")


def test_serve_with_charon_coming_and_going(sock_dir: Path) -> None:
    """The real serve process: names joined on REST and the websocket snapshot, the configured child that never
    came up as a down tunnel, a log failure as its reason; charon gone = kernel-only view and one status line
    while REST keeps answering; charon back = the view recovers."""
    path = sock_dir / "charon.vici"
    fake = _charon(path)
    serve = Serve("--source", "simulate", "--tunnels", "4", "--speed", "1", "--vici", str(path))
    base = serve.base
    try:
        until("the IKE view", lambda: _get(base, "api/v1/ike")["status"]["connected"] and _joined(base))
        ike = _get(base, "api/v1/ike")
        validate("rest-ike.json", ike)
        assert (ike["status"]["ike_sas"], ike["status"]["conns"]) == (1, 1)
        assert [c["name"] for c in ike["sas"][0]["children"]] == ["net"]
        t = _joined(base)
        assert t is not None
        validate("tunnel.json", t)
        assert (t["ike"]["conn"], t["ike"]["child"], t["ike"]["remote_id"]) == ("gw", "net", "gw-b.example")
        tunnels = _tunnels(base)
        voice = tunnels["ike:gw:voice"]
        assert (voice["state"], voice["reasons"][0]["code"]) == ("down", "not_initiated")
        assert "ike:gw:net" not in tunnels  # joined to the kernel tunnel, not listed twice
        snap = {x["id"]: x for x in asyncio.run(_ws_snapshot(base))}
        assert snap["ike:gw:voice"]["state"] == "down"
        assert snap[t["id"]]["ike"]["child"] == "net"
        health = _get(base, "healthz")
        validate("healthz.json", health)
        assert health["ike"]["connected"] is True

        fake.emit("log", b(group="IKE", level=1, ikesa_name="gw", msg="received NO_PROPOSAL_CHOSEN notify error"))
        until("the failure as reason", lambda: _tunnels(base)["ike:gw:voice"]["reasons"][0]["code"] == "no_proposal")
        errors = _get(base, "api/v1/ike")["errors"]
        assert [(e["conn"], e["code"]) for e in errors] == [("gw", "no_proposal")]

        fake.stop()
        until("disconnected", lambda: not _get(base, "api/v1/ike")["status"]["connected"])
        time.sleep(2.5)  # let the client retry a few times: the outage must still be one log line
        status = _get(base, "healthz")
        assert status["status"] == "ok"
        assert str(path) in status["ike"]["error"]
        tunnels = _tunnels(base)
        assert "ike:gw:voice" not in tunnels
        assert all(x.get("ike") is None for x in tunnels.values())
        assert len(tunnels) == 4

        fake = _charon(path)
        until("the view back", lambda: _joined(base), timeout=40)
        assert "ike:gw:voice" in _tunnels(base)
    finally:
        err = serve.stop()
        fake.stop()
    assert "Traceback" not in err
    assert err.count("IKE view unavailable") == 1, err


@pytest.mark.parametrize(("exc", "words"), [
    (FileNotFoundError(2, "No such file"), "no VICI socket at /s"),
    (PermissionError(13, "Permission denied"), "permission denied on /s"),
    (ConnectionRefusedError(111, "refused"), "does not accept connections on /s"),
    (OSError("Connection closed"), "charon closed the VICI connection at /s"),
    (BrokenPipeError(32, "Broken pipe"), "charon closed the VICI connection at /s"),
])
def test_status_lines_say_what_to_do(exc: OSError, words: str) -> None:
    """Each failure's status line names the socket and the cause (root is never refused, so permission is
    checked here rather than on a real socket)."""
    assert words in describe(exc, "/s")
