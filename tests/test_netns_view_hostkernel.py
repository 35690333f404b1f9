"""Namespace-level hints reach REST, /metrics, the websocket (``netns`` messages) and ``monitor tail`` (issue 12
item 8): the real ``monitor serve`` reads ``/proc/net/xfrm_stat`` of a throwaway netns where traffic really hits
a block policy.

Before the fix these counters and hints lived only in ``Correlator.netns_json``, which no face showed.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.serve_process import Serve, until
from tests.test_web_fakes import validate

pytestmark = pytest.mark.hostkernel


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def _get(base: str, path: str) -> Any:
    with urllib.request.urlopen(base + path, timeout=5) as r:
        body = r.read()
    return json.loads(body) if path.startswith("api/") else body.decode()


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MONITOR_")}


async def _first_netns_message(url: str, ns: str) -> dict[str, Any]:
    """The first ``netns`` message a fresh websocket client gets for ``ns`` (the current view, sent at once)."""
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        while True:
            msg = await ws.receive(timeout=10)
            data = json.loads(msg.data)
            if data["type"] == "netns" and data["netns"]["netns"] == ns:
                return dict(data)


def test_xfrm_stat_hint_is_visible_over_rest_and_metrics(tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("ping") is None:
        pytest.skip("needs root, iproute2 and ping")
    ns = f"mon-nsview-{os.getpid()}"
    _ip("netns", "add", ns)
    serve: Serve | None = None
    tail: subprocess.Popen[bytes] | None = None
    try:
        _ip("-n", ns, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
        _ip("-n", ns, "addr", "add", "192.0.2.1/24", "dev", "v0")
        _ip("-n", ns, "link", "set", "v0", "up")
        _ip("-n", ns, "link", "set", "v1", "up")
        _ip("-n", ns, "xfrm", "policy", "add", "src", "0.0.0.0/0", "dst", "192.0.2.99/32", "dir", "out",
            "action", "block")
        config = tmp_path / "monitor.toml"
        config.write_text("interval = 0.5\n")
        serve = Serve("--config", str(config), "--netns", ns)
        base = serve.base
        ws_url = base.replace("http://", "ws://") + "ws"
        tail_out = tmp_path / "tail.jsonl"
        with open(tail_out, "wb") as out, open(tmp_path / "tail.err", "wb") as err:
            tail = subprocess.Popen([sys.executable, "-m", "monitor", "tail", "--json", "--hints", "yes",
                                     "--url", ws_url, "-n", "0"],
                                    stdout=out, stderr=err, env=_clean_env())
        # the first reading is the baseline: wait for it, then send traffic into the block policy
        until("a first xfrm_stat reading", lambda: (_get(base, f"api/v1/netns/{ns}")["netns"] or {}).get("xfrm_stat"))
        subprocess.run(["ip", "netns", "exec", ns, "ping", "-c", "3", "-i", "0.2", "-W", "1", "192.0.2.99"],
                       capture_output=True, timeout=30, check=False)
        doc = until("the XfrmOutPolBlock hint", lambda: next(
            (d for d in _get(base, "api/v1/netns")["netns"]
             if d["netns"] == ns and "XfrmOutPolBlock" in {h["code"] for h in d["hints"]}), None))
        assert doc["xfrm_stat"]["XfrmOutPolBlock"] >= 1
        metrics = _get(base, "metrics")
        line = re.search(rf'^ipsec_xfrm_stat_total{{counter="XfrmOutPolBlock",netns="{ns}"}} (\S+)$', metrics, re.M)
        assert line, metrics[:2000]
        assert float(line.group(1)) >= 1
        # the websocket: a new client gets every namespace's view at once, changes as they come
        first = asyncio.run(_first_netns_message(ws_url, ns))
        validate("ws-message.json", first)
        validate("netns.json", doc)
        assert "XfrmOutPolBlock" in {h["code"] for h in first["netns"]["hints"]}, first
        # monitor tail printed the hint once, as it came (it was connected before the ping)
        hints = until("tail's hint line", lambda: [
            json.loads(x) for x in tail_out.read_text().splitlines() if '"netns_hint"' in x])
        assert [(h["netns"], h["code"]) for h in hints] == [(ns, "XfrmOutPolBlock")], hints
        with pytest.raises(urllib.error.HTTPError) as exc:
            _get(base, "api/v1/netns/no-such-netns")
        exc.value.close()  # the error holds the response (and its socket) open
        assert exc.value.code == 404
    finally:
        if tail is not None:
            tail.terminate()
            tail.wait(10)
        if serve is not None:
            serve.stop()
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
