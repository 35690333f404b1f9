"""Memory that comes back: the server's RSS before, during and after websocket clients (issue 11 item 9).

    python -m bench.memory_bench [--tunnels 2000] [--stalled 20] [--churn 1000] [--quick]

A real ``monitor serve --source simulate`` process (``--tunnels`` tunnels, ``stall_timeout = 3``) is
measured twice in the same run, identical but for the heap trim: **baseline** with
``MONITOR_HEAP_TRIM=off`` and **candidate** with the default. Each goes through three phases, reading the
server's RSS (``/proc/PID/status`` VmRSS) before, at its peak during (sampled every 50 ms) and after each:

1. *stalled*: ``--stalled`` raw websocket clients with a 4 KiB receive buffer ask for a snapshot and never
   read; the server buffers for them until it closes them as stalled (4008), then they are gone;
2. *churn*: ``--churn`` connections, ``GROUP`` at a time, each takes its snapshot and leaves;
3. *settled*: RSS once the server reports no client (``/healthz`` ``clients``) and 3 s have passed.

The figure is ``after - before`` per phase (what the server keeps once the clients left), and the ratio of
the candidate's to the baseline's. Results go to ``bench/results/memory.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import loadavg, raise_nofile, rss_bytes, write_result

__all__ = ["run"]

SETTLE = 5.0
GROUP = 50  # churn connections open at once
MB = 1024 * 1024


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read())


def _clients(base: str) -> int:
    return int(_get(base + "/healthz").get("clients", -1))


class _Sampler:
    """RSS of one process every 50 ms in a thread-free way: polled by the phase loops."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak = pid, 0

    def sample(self) -> int:
        rss = rss_bytes(self.pid)
        self.peak = max(self.peak, rss)
        return rss


async def _stalled_clients(port: int, n: int, sampler: _Sampler, base: str) -> None:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        s.sendall((f"GET /ws?snapshot=1 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        socks.append(s)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the server closes them as stalled (stall_timeout = 3)
            sampler.sample()
            if _clients(base) == 0:
                break
            await asyncio.sleep(0.05)
    finally:
        for s in socks:
            s.close()


async def _churn(base: str, n: int, sampler: _Sampler) -> int:
    got = 0

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal got
        async with session.ws_connect(base + "/ws?snapshot=1") as ws:
            async for msg in ws:  # no JSON parsing: the client must keep up (stall_timeout = 3)
                if msg.type is aiohttp.WSMsgType.TEXT and msg.data.startswith('{"schema":1,"type":"snapshot"') \
                        and '"last":true' in msg.data[:200]:
                    got += 1
                    break

    async with aiohttp.ClientSession() as session:
        for start in range(0, n, GROUP):
            await asyncio.gather(*(one(session) for _ in range(min(GROUP, n - start))))
            sampler.sample()
    return got


async def _settle(base: str, sampler: _Sampler) -> int:
    deadline = time.monotonic() + 60
    while _clients(base) != 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    await asyncio.sleep(SETTLE)
    return sampler.sample()


def _one_server(trim: bool, tunnels: int, stalled: int, churn: int, work: Path) -> dict[str, Any]:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    conf = work / "memory.toml"
    conf.write_text("stall_timeout = 3\nclose_grace = 1\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONITOR_")}
    env["MONITOR_HEAP_TRIM"] = "on" if trim else "off"
    log = work / f"server-{'trim' if trim else 'baseline'}.log"
    with open(log, "wb") as lf:
        proc = subprocess.Popen([sys.executable, "-m", "monitor", "serve", "--config", str(conf), "--source",
                                 "simulate", "--tunnels", str(tunnels), "--port", str(port), "--no-history",
                                 "--no-vici"], stdout=lf, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(OSError):
                if _get(base + "/api/v1/tunnels").get("tunnels") is not None:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        time.sleep(SETTLE)
        sampler = _Sampler(proc.pid)
        out: dict[str, Any] = {"start": sampler.sample()}

        async def phases() -> None:
            before = sampler.sample()
            sampler.peak = before
            await _stalled_clients(port, stalled, sampler, base)
            out["stalled"] = {"before": before, "peak": sampler.peak, "after": await _settle(base, sampler)}
            before = sampler.sample()
            sampler.peak = before
            got = await _churn(base, churn, sampler)
            out["churn"] = {"before": before, "peak": sampler.peak, "after": await _settle(base, sampler),
                            "snapshots": got}

        asyncio.run(phases())
        return out
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


def run(tunnels: int, stalled: int, churn: int) -> dict[str, Any]:
    raise_nofile()
    load0 = loadavg()
    with tempfile.TemporaryDirectory() as tmp:
        base = _one_server(False, tunnels, stalled, churn, Path(tmp))
        cand = _one_server(True, tunnels, stalled, churn, Path(tmp))
    kept = {name: {"baseline": base[name]["after"] - base[name]["before"],
                   "candidate": cand[name]["after"] - cand[name]["before"]} for name in ("stalled", "churn")}
    return {"tunnels": tunnels, "stalled": stalled, "churn": churn, "loadavg_before": load0,
            "baseline": base, "candidate": cand, "kept_after_clients": kept}


def _print(res: dict[str, Any]) -> None:
    print(f"{res['tunnels']} tunnels; {res['stalled']} stalled clients, then {res['churn']} connections")
    print(f"{'phase':8} {'server':10} {'before MB':>10} {'peak MB':>9} {'after MB':>9} {'kept MB':>8}")
    for name in ("stalled", "churn"):
        for who in ("baseline", "candidate"):
            p = res[who][name]
            print(f"{name:8} {who:10} {p['before'] / MB:10.1f} {p['peak'] / MB:9.1f} {p['after'] / MB:9.1f} "
                  f"{(p['after'] - p['before']) / MB:8.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tunnels", type=int, default=2000)
    ap.add_argument("--stalled", type=int, default=20)
    ap.add_argument("--churn", type=int, default=1000)
    ap.add_argument("--quick", action="store_true", help="200 tunnels, 5 stalled, 200 connections")
    a = ap.parse_args()
    if a.quick:
        a.tunnels, a.stalled, a.churn = 200, 5, 200
    res = run(a.tunnels, a.stalled, a.churn)
    _print(res)
    if not a.quick:
        print("wrote", write_result("memory", res))


if __name__ == "__main__":
    main()
