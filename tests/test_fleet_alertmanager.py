"""A fleet on the engines a NOC already runs (issue 16 item 1): three real ``monitor serve`` processes scraped
over HTTPS with a bearer token by one real Prometheus running the SHIPPED alert rules, alerting a real
Alertmanager (Debian's ``prometheus-alertmanager``) routed by the SHIPPED example route, which delivers to a
webhook receiver in this test.

The three gateways: two simulated fleets (seeds 3 and 4) and one kernel source watching a netns this test
makes. The configuration files are the shipped ones (``deploy/prometheus/prometheus.example.yml``,
``deploy/prometheus/alerts.yml``, ``deploy/alertmanager/alertmanager.example.yml``) with only addresses,
paths, intervals and the rules' ``for:`` durations replaced (``_templated_*`` below, checked by
``test_templating_changes_only_timing_and_addresses``): expressions, labels, annotations and routes are
what an operator deploys.

What is proved, each through the whole chain monitor -> Prometheus -> Alertmanager -> webhook:

* the kernel gateway: policies for reqid 7 appear in the netns with no SA (the host kernel has no ESP, so no
  SA can be installed here: ``ip xfrm state add ... proto esp`` answers "Requested type not found"): the
  tunnel is ``down`` and IPsecTunnelDown reaches the pager route with that gateway's ``instance`` and the
  tunnel's labels; the policies are deleted, the tunnel leaves, and the alert is delivered ``resolved``;
* a simulated gateway's dying tunnel (reqid 4: the peer dies, then comes back) fires on its own ``instance``
  and resolves when the tunnel is ``up`` again, the down -> up path;
* the fleet view: three targets up, ``ipsec_tunnels`` per gateway, ``/federate`` serving those aggregates
  for a global Prometheus (the fleet guide's federation config), and every expression of the Grafana
  dashboard's "Fleet overview" row answering on this Prometheus for all three gateways.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
import yaml
from aiohttp import web

from tests.serve_process import Serve
from tests.simserver import free_port
from tests.test_deploy_grafana import DASH as DASHBOARD
from tests.test_deploy_grafana import fleet_expressions

pytestmark = [pytest.mark.external, pytest.mark.hostkernel]

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
SHIPPED_PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.example.yml"
SHIPPED_ALERTMANAGER = ROOT / "deploy" / "alertmanager" / "alertmanager.example.yml"
PROMETHEUS = shutil.which("prometheus")
ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
TOKEN = "fleet-test-token-0123456789"
# the test's `for:`: long enough that `pending` is really passed through, short enough for a test
TEST_FOR = "2s"
T = TypeVar("T")


# ---------------------------------------------------------------- templating the shipped files


def templated_rules() -> dict[str, Any]:
    """deploy/prometheus/alerts.yml with every ``for:`` shortened to TEST_FOR; nothing else changes."""
    doc = yaml.safe_load(SHIPPED_RULES.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = TEST_FOR
    return dict(doc)


def templated_prometheus(*, rules: Path, alertmanager: str, targets: list[str], ca: Path,
                         token_file: Path) -> dict[str, Any]:
    """deploy/prometheus/prometheus.example.yml with this test's addresses, files and 1 s intervals."""
    doc = yaml.safe_load(SHIPPED_PROMETHEUS.read_text())
    doc["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    doc["rule_files"] = [str(rules)]
    doc["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] = [alertmanager]
    (job,) = doc["scrape_configs"]
    job["tls_config"]["ca_file"] = str(ca)
    job["authorization"]["credentials_file"] = str(token_file)
    job["scrape_timeout"] = "1s"
    job["static_configs"][0]["targets"] = targets
    return dict(doc)


def templated_alertmanager(webhook: str) -> dict[str, Any]:
    """deploy/alertmanager/alertmanager.example.yml: each receiver's URL becomes ``webhook/<receiver>``, group
    timings 1 s; routes, matchers, grouping and inhibition stay as shipped."""
    doc = yaml.safe_load(SHIPPED_ALERTMANAGER.read_text())

    def fast(route: dict[str, Any]) -> None:
        for key in ("group_wait", "group_interval"):
            if key in route:
                route[key] = "1s"
        for sub in route.get("routes", []):
            fast(sub)

    fast(doc["route"])
    for receiver in doc["receivers"]:
        for hook in receiver["webhook_configs"]:
            hook["url"] = f"{webhook}/{receiver['name']}"
    return dict(doc)


def test_templating_changes_only_timing_and_addresses(tmp_path: Path) -> None:
    """The test's copies differ from the shipped files only in ``for:``, intervals, addresses and file paths:
    every alert keeps its expression, labels and annotations, the job keeps its name, scheme and auth, the
    Alertmanager keeps its routes, matchers, grouping, inhibition and send_resolved."""
    shipped = yaml.safe_load(SHIPPED_RULES.read_text())
    ours = templated_rules()
    strip = [{k: v for k, v in r.items() if k != "for"} for g in shipped["groups"] for r in g["rules"]]
    assert strip == [{k: v for k, v in r.items() if k != "for"} for g in ours["groups"] for r in g["rules"]]
    assert {r.get("for") for g in ours["groups"] for r in g["rules"]} <= {TEST_FOR, None}
    prom = templated_prometheus(rules=tmp_path / "r.yml", alertmanager="127.0.0.1:1", targets=["127.0.0.1:2"],
                                ca=tmp_path / "ca.pem", token_file=tmp_path / "t")
    (job,) = prom["scrape_configs"]
    (shipped_job,) = yaml.safe_load(SHIPPED_PROMETHEUS.read_text())["scrape_configs"]
    assert (job["job_name"], job["scheme"], set(job["authorization"])) == (
        shipped_job["job_name"], shipped_job["scheme"], set(shipped_job["authorization"]))
    am = templated_alertmanager("http://127.0.0.1:3")
    shipped_am = yaml.safe_load(SHIPPED_ALERTMANAGER.read_text())

    def shape(route: dict[str, Any]) -> Any:
        return (route["receiver"], route.get("matchers"), route.get("group_by"),
                [shape(r) for r in route.get("routes", [])])

    assert shape(am["route"]) == shape(shipped_am["route"])
    assert am["inhibit_rules"] == shipped_am["inhibit_rules"]
    assert [[h["send_resolved"] for h in r["webhook_configs"]] for r in am["receivers"]] == [
        [True] for _ in shipped_am["receivers"]]


# ---------------------------------------------------------------- processes


@dataclass
class Webhook:
    """Alertmanager's notifications as received: (receiver path, payload) in arrival order."""

    received: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        """Record one webhook POST."""
        self.received.append((request.match_info["receiver"], await request.json()))
        return web.Response(text="ok")

    def alerts(self, receiver: str | None = None) -> list[tuple[str, str, dict[str, str]]]:
        """(receiver, status, labels) of every alert in every notification so far."""
        return [(r, a["status"], a["labels"]) for r, doc in self.received for a in doc["alerts"]
                if receiver in (None, r)]


def _pki(d: Path) -> None:
    """A test CA and a certificate for 127.0.0.1 (the three monitors share it) made with the openssl CLI."""
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=60)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-subj", "/CN=fleet test CA",
            "-days", "2", "-out", "ca.pem")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "gw.key", "-subj", "/CN=gateway", "-out", "gw.csr")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("x509", "-req", "-in", "gw.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-set_serial", "0x77", "-days",
            "2", "-extfile", "san.ext", "-out", "gw.pem")


def _ip(*args: str) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    assert r.returncode == 0, f"ip {' '.join(args)}: {r.stderr}"


POLICIES = [  # reqid 7, 192.0.2.1 <-> 198.51.100.70; selectors from 203.0.113.0/24 halves
    ("out", "203.0.113.0/25", "203.0.113.128/25", "192.0.2.1", "198.51.100.70"),
    ("in", "203.0.113.128/25", "203.0.113.0/25", "198.51.100.70", "192.0.2.1"),
    ("fwd", "203.0.113.128/25", "203.0.113.0/25", "198.51.100.70", "192.0.2.1"),
]


@pytest.fixture
def gateway_netns() -> Iterator[str]:
    """An empty throwaway netns for the kernel gateway, loopback up."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 (throwaway netns)")
    ns = f"mon-fleet-{os.getpid()}"
    _ip("netns", "add", ns)
    try:
        _ip("-n", ns, "link", "set", "lo", "up")
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False, timeout=30)


def _start(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as f:
        return subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def wait_for(what: str, cond: Callable[[], Awaitable[T]], timeout: float,
                   context: Callable[[], str] = lambda: "") -> T:
    """Poll ``cond`` every 0.5 s until truthy; on timeout fail with the last value and ``context()``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await cond()
        if last:
            return last
        await asyncio.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last seen: {last!r}\n{context()}")


@pytest.fixture
async def webhook() -> AsyncIterator[tuple[Webhook, str]]:
    """The webhook receiver on 127.0.0.1: yields it and its base URL."""
    hook = Webhook()
    app = web.Application()
    app.router.add_post("/{receiver}", hook.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    yield hook, f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.mark.timeout(300)
async def test_fleet_alert_reaches_alertmanager_and_resolves(
        tmp_path: Path, gateway_netns: str, webhook: tuple[Webhook, str]) -> None:
    """Three gateways, one Prometheus, one Alertmanager: a down tunnel on one gateway is delivered to the
    pager route with that gateway's instance and the tunnel's labels, and delivered resolved when it goes."""
    if PROMETHEUS is None or ALERTMANAGER is None:
        pytest.skip("needs Debian's prometheus and prometheus-alertmanager")
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl CLI")
    hook, hook_url = webhook
    ns = gateway_netns
    _pki(tmp_path)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    tls = ["--tls-cert", str(tmp_path / "gw.pem"), "--tls-key", str(tmp_path / "gw.key"),
           "--token-file", str(token_file)]
    monitors: list[Serve] = []
    procs: list[subprocess.Popen[bytes]] = []
    logs: dict[str, Path] = {}

    def context() -> str:
        tails = {n: p.read_text(errors="replace")[-1500:] for n, p in logs.items()}
        return f"webhook: {json.dumps(hook.alerts())[:3000]}\nlogs: {json.dumps(tails, indent=1)}"

    try:
        for seed in ("3", "4"):
            monitors.append(Serve("--source", "simulate", "--speed", "10", "--tunnels", "6", "--seed", seed, *tls))
        monitors.append(Serve("--netns", ns, "--interval", "0.5", "--no-vici", "--no-history", *tls))
        instances = [m.base.split("//", 1)[1].rstrip("/") for m in monitors]
        kernel_instance = instances[2]
        assert all(m.base.startswith("https://") for m in monitors)

        am_port = free_port()
        am_cfg = tmp_path / "alertmanager.yml"
        am_cfg.write_text(yaml.safe_dump(templated_alertmanager(hook_url)))
        logs["alertmanager"] = tmp_path / "alertmanager.log"
        procs.append(_start([ALERTMANAGER, f"--config.file={am_cfg}", f"--storage.path={tmp_path / 'am'}",
                             f"--web.listen-address=127.0.0.1:{am_port}", "--cluster.listen-address="],
                            logs["alertmanager"]))
        rules = tmp_path / "alerts.yml"
        rules.write_text(yaml.safe_dump(templated_rules()))
        prom_cfg = tmp_path / "prometheus.yml"
        prom_cfg.write_text(yaml.safe_dump(templated_prometheus(
            rules=rules, alertmanager=f"127.0.0.1:{am_port}", targets=instances, ca=tmp_path / "ca.pem",
            token_file=token_file)))
        prom_port = free_port()
        logs["prometheus"] = tmp_path / "prometheus.log"
        procs.append(_start([PROMETHEUS, f"--config.file={prom_cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{prom_port}", "--rules.alert.resend-delay=1s"],
                            logs["prometheus"]))
        prom = f"http://127.0.0.1:{prom_port}"

        async with aiohttp.ClientSession() as http:
            async def query(q: str) -> list[dict[str, Any]]:
                try:
                    async with http.get(f"{prom}/api/v1/query", params={"query": q}) as r:
                        return list((await r.json())["data"]["result"])
                except (aiohttp.ClientError, KeyError):
                    return []

            async def targets_up() -> list[str]:
                up = await query('up{job="ipsec-monitor"} == 1')
                return sorted(s["metric"]["instance"] for s in up)

            # the fleet: every gateway scraped over HTTPS with the token, aggregates per gateway
            await wait_for("three targets up", lambda: _eq(targets_up(), sorted(instances)), 60, context)
            per_gw = await wait_for("ipsec_tunnels from every gateway", lambda: _len_at_least(query(
                'sum by (instance) (ipsec_tunnels)'), 3), 30, context)
            counts = {s["metric"]["instance"]: float(s["value"][1]) for s in per_gw}
            assert counts[kernel_instance] == 0, counts
            assert counts[instances[0]] == counts[instances[1]] == 6, counts
            async with http.get(f"{prom}/federate", params=[("match[]", "ipsec_tunnels"),
                                                              ("match[]", 'up{job="ipsec-monitor"}')]) as r:
                federated = await r.text()
            assert r.status == 200
            for inst in instances:
                assert f'instance="{inst}"' in federated
            assert "ipsec_tunnels{" in federated
            # the Grafana dashboard's fleet overview row, every gateway selected, on this real Prometheus:
            # each expression answers, and per-gateway ones answer for all three gateways
            dash = json.loads(DASHBOARD.read_text())
            answers = {}
            for title, expr in fleet_expressions(dash):
                result = await query(expr)
                answers[(title, expr)] = sorted(s["metric"].get("instance", "") for s in result)
            assert all(answers.values()), answers
            per_gateway = {k: v for k, v in answers.items() if "by (instance)" in k[1] or k[1].startswith("up{")}
            assert len(per_gateway) >= 5
            assert all(v == sorted(instances) for v in per_gateway.values()), per_gateway

            # a simulated gateway's dying tunnel (reqid 4) goes down and comes back: fired, then resolved
            def sim_down(status: str) -> list[dict[str, str]]:
                return [lb for r, st, lb in hook.alerts("noc-pager") if st == status
                        and lb["alertname"] == "IPsecTunnelDown" and lb["instance"] in instances[:2]]

            fired_sim = (await wait_for("a simulated gateway's IPsecTunnelDown", _now(lambda: sim_down("firing")),
                                        90, context))[0]
            assert fired_sim["reqid"] == "4", fired_sim
            await wait_for("it resolved once the tunnel is back", _now(lambda: [
                lb for lb in sim_down("resolved") if lb["instance"] == fired_sim["instance"]]), 90, context)

            # the kernel gateway: nothing is down there yet
            assert [a for a in hook.alerts() if a[2]["instance"] == kernel_instance] == []
            for d, src, dst, tsrc, tdst in POLICIES:
                _ip("-n", ns, "xfrm", "policy", "add", "src", src, "dst", dst, "dir", d, "tmpl", "src", tsrc,
                    "dst", tdst, "proto", "esp", "reqid", "7", "mode", "tunnel")

            def kernel(status: str) -> list[tuple[str, dict[str, str]]]:
                return [(r, lb) for r, st, lb in hook.alerts() if st == status
                        and lb["instance"] == kernel_instance and lb["alertname"] == "IPsecTunnelDown"]

            ((receiver, labels),) = await wait_for("IPsecTunnelDown from the kernel gateway",
                                                   _now(lambda: kernel("firing")), 60, context)
            assert receiver == "noc-pager"
            assert {k: labels[k] for k in ("job", "instance", "netns", "reqid", "local", "remote", "state",
                                           "severity")} == {
                "job": "ipsec-monitor", "instance": kernel_instance, "netns": ns, "reqid": "7",
                "local": "192.0.2.1", "remote": "198.51.100.70", "state": "down", "severity": "critical"}
            # the tunnel's policies go: it leaves the monitor, its series goes, the alert resolves
            for d, src, dst, *_ in POLICIES:
                _ip("-n", ns, "xfrm", "policy", "delete", "src", src, "dst", dst, "dir", d)
            ((receiver, resolved),) = await wait_for("the kernel gateway's alert resolved",
                                                     _now(lambda: kernel("resolved")), 60, context)
            assert (receiver, resolved["reqid"], resolved["instance"]) == ("noc-pager", "7", kernel_instance)
            # no warning-route noise from the kernel gateway, and Alertmanager saw it resolved too
            assert [a for a in hook.alerts("noc-tickets") if a[2]["instance"] == kernel_instance] == []
    finally:
        for p in procs:
            _stop(p)
        for m in monitors:
            m.stop()


async def _eq(value: Awaitable[T], expected: T) -> T | None:
    got = await value
    return got if got == expected else None


async def _len_at_least(value: Awaitable[list[T]], n: int) -> list[T]:
    got = await value
    return got if len(got) >= n else []


def _now(fn: Callable[[], T]) -> Callable[[], Awaitable[T]]:
    """A synchronous condition as the coroutine ``wait_for`` polls."""
    async def run() -> T:
        return fn()
    return run
