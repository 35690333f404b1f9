"""/metrics against Debian's real Prometheus tools: ``promtool check metrics`` and a real ``prometheus``
server scraping a real ``monitor serve`` app (simulated fleet) on loopback every second."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from monitor.serve.config import Settings
from monitor.serve.handlers import HUB
from monitor.serve.web import create_app

pytestmark = pytest.mark.external

PROMETHEUS = shutil.which("prometheus")
CAPTURE = Path(__file__).parent / "data" / "vm-run-2026-11-26" / "monitor-a.pcap"
PROMTOOL = shutil.which("promtool")


@pytest.fixture
async def monitor_server() -> AsyncIterator[TestServer]:
    """A real serve app on 127.0.0.1 with a simulated fleet that already has tunnels."""
    app = create_app(Settings(source="simulate", port=0, tunnels=8, speed=30, seed=2))
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while len(app[HUB].view.tunnel_ids()) < 8:
        assert loop.time() < deadline, "simulated fleet did not appear"
        await asyncio.sleep(0.05)
    yield server
    await server.close()


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package prometheus)")
async def test_promtool_check_metrics_clean(monitor_server: TestServer) -> None:
    """`promtool check metrics` reports no problem on our real exposition."""
    async with aiohttp.ClientSession() as s, s.get(monitor_server.make_url("/metrics")) as r:
        body = await r.read()
    assert b"ipsec_tunnel_bytes_total" in body
    proc = await asyncio.create_subprocess_exec(PROMTOOL or "promtool", "check", "metrics",
                                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                                stderr=subprocess.STDOUT)
    out, _ = await proc.communicate(body)
    assert proc.returncode == 0, out.decode()
    assert out.decode().strip() == "", out.decode()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus not installed (Debian package prometheus)")
async def test_real_prometheus_scrapes_and_stores(monitor_server: TestServer, tmp_path: Path) -> None:
    """A real Prometheus scraping us every second: the target goes up, our series are queryable, every tunnel
    has exactly one active state, and what Prometheus stored from a static source (a replayed capture, at
    its end) equals what the same server says on /api/v1/tunnels (issue 17 item 3)."""
    static_app = create_app(Settings(source=f"replay:{CAPTURE}", speed=0, port=0))
    static = TestServer(static_app, host="127.0.0.1", port=0)
    await static.start_server()
    port = _free_port()
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: ipsec\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{monitor_server.port}']\n"
        "  - job_name: static\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{static.port}']\n"
    )
    log = tmp_path / "prometheus.log"
    with log.open("wb") as logf:
        proc = subprocess.Popen(
            [PROMETHEUS or "prometheus", f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=logf, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        seen: Any = None
        async with aiohttp.ClientSession() as s:
            while True:
                assert proc.poll() is None, f"prometheus exited: {log.read_text()[-2000:]}"
                assert loop.time() < deadline, f"no data; last target state {seen}; log: {log.read_text()[-1500:]}"
                try:
                    async with s.get(f"{base}/api/v1/targets") as r:
                        targets = (await r.json())["data"]["activeTargets"]
                    seen = [(t["health"], t.get("lastError")) for t in targets]
                    async with s.get(f"{base}/api/v1/query",
                                     params={"query": 'ipsec_tunnel_bytes_total{direction="in",job="ipsec"}'}) as r:
                        result = (await r.json())["data"]["result"]
                    async with s.get(f"{base}/api/v1/query",
                                     params={"query": 'ipsec_tunnel_bytes_total{job="static"}'}) as r:
                        static_bytes = (await r.json())["data"]["result"]
                except (aiohttp.ClientError, KeyError):
                    result = static_bytes = []
                if result and static_bytes and seen and all(h == "up" for h, _ in seen):
                    break
                await asyncio.sleep(0.5)
            async with s.get(f"{base}/api/v1/query",
                             params={"query": 'count by (id) (ipsec_tunnel_state{job="ipsec"} == 1)'}) as r:
                states = (await r.json())["data"]["result"]
            async with s.get(f"{base}/api/v1/query",
                             params={"query": 'ipsec_tunnel_state{job="static"} == 1'}) as r:
                static_states = (await r.json())["data"]["result"]
            async with s.get(static.make_url("/api/v1/tunnels")) as r:
                static_rest = {t["id"]: t for t in (await r.json())["tunnels"]}
            async with s.get(f"{base}/api/v1/query",
                             params={"query": "ipsec_monitor_event_loop_lag_seconds"}) as r:
                lag = (await r.json())["data"]["result"]
            # issue 15: the attributes come from ipsec_tunnel_info, joined on (instance, id) as docs/api.md shows
            joined_q = ('ipsec_tunnel_bytes_total{job="static",direction="in"} * on (instance, id) '
                        'group_left (netns, reqid, local, remote) ipsec_tunnel_info{job="static"}')
            async with s.get(f"{base}/api/v1/query", params={"query": joined_q}) as r:
                joined = (await r.json())["data"]["result"]
    finally:
        await static.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert len(result) >= 8
    # issue 15: a per-tunnel series names the tunnel by id only
    assert set(result[0]["metric"]) == {"__name__", "id", "direction", "job", "instance"}
    assert len(states) >= 8
    assert {s["value"][1] for s in states} == {"1"}, "every tunnel has exactly one active state"
    assert static_rest
    stored = {(b["metric"]["id"], b["metric"]["direction"]): int(float(b["value"][1])) for b in static_bytes}
    assert stored == {(tid, d): t[f"bytes_{d}"] for tid, t in static_rest.items() for d in ("in", "out")}
    assert {s["metric"]["id"]: s["metric"]["state"] for s in static_states} == {
        tid: t["state"] for tid, t in static_rest.items()}
    assert lag, "event loop lag gauge stored"
    assert {j["metric"]["id"]: (j["metric"]["netns"], j["metric"]["reqid"], j["metric"]["local"],
                                j["metric"]["remote"], int(float(j["value"][1]))) for j in joined} == {
        tid: (t["netns"], str(t["reqid"]), t["local"], t["remote"], t["bytes_in"]) for tid, t in static_rest.items()}


class _IdleSource:
    """A live source with nothing to say: the preloaded fleet stays as it is."""

    kind = "test"

    async def items(self) -> AsyncIterator[Any]:
        await asyncio.Event().wait()
        yield  # pragma: no cover - never reached


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus not installed (Debian package prometheus)")
async def test_real_prometheus_scrapes_10k_tunnels(tmp_path: Path) -> None:
    """Issue 15: a real Prometheus scraping 10,000 tunnels (the benchmark fleet through the real decoder) gets
    the streamed, gzipped exposition whole: every series stored (scrape_samples_scraped), one state series per
    tunnel, and each tunnel's byte counters equal to what the correlator holds."""
    from bench.common import loaded_pipeline

    pipeline, correlator = await asyncio.to_thread(loaded_pipeline, 10_000)
    app = create_app(Settings(source="simulate", port=0), _IdleSource(), pipeline=pipeline, correlator=correlator)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    port = _free_port()
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(
        "global:\n  scrape_interval: 2s\n  scrape_timeout: 2s\n"
        "scrape_configs:\n  - job_name: big\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{server.port}']\n")
    log = tmp_path / "prometheus.log"
    with log.open("wb") as logf:
        proc = subprocess.Popen(
            [PROMETHEUS or "prometheus", f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=logf, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"

    async def query(s: aiohttp.ClientSession, q: str) -> list[dict[str, Any]]:
        async with s.get(f"{base}/api/v1/query", params={"query": q}) as r:
            out: list[dict[str, Any]] = (await r.json())["data"]["result"]
            return out

    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 90
        async with aiohttp.ClientSession() as s:
            while True:
                assert proc.poll() is None, f"prometheus exited: {log.read_text()[-2000:]}"
                assert loop.time() < deadline, f"no complete scrape; log: {log.read_text()[-1500:]}"
                try:
                    scraped = await query(s, 'scrape_samples_scraped{job="big"}')
                    states = await query(s, 'count(ipsec_tunnel_state{job="big"})')
                except (aiohttp.ClientError, KeyError, ValueError):
                    scraped = states = []
                if scraped and states:
                    break
                await asyncio.sleep(0.5)
            up = await query(s, 'up{job="big"}')
            down_or_up = await query(s, 'count by (state) (ipsec_tunnel_state{job="big"} == 1)')
            per_state = await query(s, 'sum by (state) (ipsec_tunnels{job="big"})')
            nbytes = await query(s, 'ipsec_tunnel_bytes_total{job="big",direction="in"}')
            rekeys = await query(s, 'count(ipsec_tunnel_rekeys_total{job="big"})')
            # issue 15: the info join of docs/api.md through the real Prometheus: bytes in per remote address
            by_remote = await query(s, 'sum by (remote) (ipsec_tunnel_bytes_total{job="big",direction="in"} '
                                       '* on (instance, id) group_left (remote) ipsec_tunnel_info{job="big"})')
            infos = await query(s, 'count(ipsec_tunnel_info{job="big"})')
    finally:
        await server.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    body = correlator.snapshot(0.0)
    assert len(body) == 10_000
    assert [u["value"][1] for u in up] == ["1"]
    assert int(states[0]["value"][1]) == 10_000
    assert {r["metric"]["state"]: int(r["value"][1]) for r in down_or_up} == {
        r["metric"]["state"]: int(r["value"][1]) for r in per_state if r["value"][1] != "0"}
    assert int(rekeys[0]["value"][1]) == 10_000
    # 12 series per tunnel (info, 2 bytes, 2 packets, rekeys, failures, state, hard expiry, replay, integrity,
    # flaps, downtime: 13 minus the tunnels without a hard expiry) plus the process-wide families
    n = sum(1 for t in body if t["hard_expires_in"] is not None)
    assert 12 * 10_000 + n <= int(float(scraped[0]["value"][1])) < 12 * 10_000 + n + 100
    assert int(infos[0]["value"][1]) == 10_000
    expect: dict[str, int] = {}
    for t in body:
        expect[t["remote"]] = expect.get(t["remote"], 0) + t["bytes_in"]
    assert len(expect) > 1
    assert {r["metric"]["remote"]: int(float(r["value"][1])) for r in by_remote} == expect
    assert {b["metric"]["id"]: int(float(b["value"][1])) for b in nbytes} == {t["id"]: t["bytes_in"] for t in body}
