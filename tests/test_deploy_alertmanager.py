"""The shipped fleet configuration files, checked by the engines' own tools (Debian's ``prometheus`` and
``prometheus-alertmanager``): deploy/prometheus/prometheus.example.yml and
deploy/alertmanager/alertmanager.example.yml. tests/test_fleet_alertmanager.py runs both for real."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.external

ROOT = Path(__file__).resolve().parent.parent
PROM_EXAMPLE = ROOT / "deploy" / "prometheus" / "prometheus.example.yml"
AM_EXAMPLE = ROOT / "deploy" / "alertmanager" / "alertmanager.example.yml"
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    if shutil.which(argv[0]) is None:
        pytest.skip(f"{argv[0]} not installed (Debian packages prometheus, prometheus-alertmanager)")
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def test_promtool_accepts_the_example_scrape_config() -> None:
    """``promtool check config --syntax-only`` (the rule and credential files are the operator's paths)."""
    r = _run("promtool", "check", "config", "--syntax-only", str(PROM_EXAMPLE))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_example_scrape_job_is_the_one_the_rules_expect() -> None:
    """One job, named ``ipsec-monitor`` (IPsecMonitorTargetDown selects it), HTTPS, token from a file."""
    (job,) = yaml.safe_load(PROM_EXAMPLE.read_text())["scrape_configs"]
    assert job["job_name"] == "ipsec-monitor"
    assert 'job="ipsec-monitor"' in RULES.read_text()
    assert (job["scheme"], sorted(job["authorization"]), sorted(job["tls_config"])) == (
        "https", ["credentials_file"], ["ca_file"])


def test_amtool_accepts_the_example_alertmanager_config() -> None:
    """``amtool check-config`` passes: one route tree, the inhibition, both receivers."""
    r = _run("amtool", "check-config", str(AM_EXAMPLE))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout
    assert "2 receivers" in r.stdout
    assert "1 inhibit rules" in r.stdout


@pytest.mark.parametrize(("labels", "receiver"), [
    (["alertname=IPsecTunnelDown", "severity=critical", "instance=gw1.example.net:8787", "reqid=7"], "noc-pager"),
    (["alertname=IPsecMonitorTargetDown", "severity=critical"], "noc-pager"),
    (["alertname=IPsecTunnelIdle", "severity=warning"], "noc-tickets"),
    (["alertname=IPsecMonitorLagging", "severity=warning"], "noc-tickets"),
])
def test_amtool_routes_by_severity(labels: list[str], receiver: str) -> None:
    """``amtool config routes test``: critical alerts page, warnings go to the ticket queue."""
    r = _run("amtool", "config", "routes", "test", f"--config.file={AM_EXAMPLE}", *labels)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == receiver


def test_every_shipped_alert_severity_has_a_route() -> None:
    """Each severity used in alerts.yml is one the route tree matches on (or the default warning route)."""
    severities = {r["labels"]["severity"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    assert severities == {"critical", "warning"}
    routes = yaml.safe_load(AM_EXAMPLE.read_text())["route"]["routes"]
    assert [r["matchers"] for r in routes] == [['severity="critical"']]
