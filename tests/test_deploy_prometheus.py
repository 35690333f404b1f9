"""deploy/prometheus/alerts.yml: `promtool check rules`, `promtool test rules`, names really exported, and
runbook links that resolve to sections of docs/operations.md."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import promql_names
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
OPS = ROOT / "docs" / "operations.md"

needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")


def rules() -> list[dict[str, object]]:
    """Every alerting rule."""
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


@needs_promtool
def test_promtool_check_rules() -> None:
    """promtool accepts the rule file."""
    r = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(rules())} rules found" in r.stdout


@needs_promtool
def test_promtool_unit_tests_pass() -> None:
    """The promtool unit tests (each alert fires when it should, and not before) pass."""
    r = subprocess.run(["promtool", "test", "rules", str(RULE_TESTS)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_alert_has_a_unit_test() -> None:
    """Each alert is exercised with at least one expected firing in alerts_test.yml."""
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {c["alertname"] for t in tests for c in t["alert_rule_test"] if c["exp_alerts"]}
    assert {str(r["alert"]) for r in rules()} == fired


def test_required_alerts_exist() -> None:
    """The issue's list: down, idle, one-way, rekey failed, expiring, errors, resyncing, lagging, target down."""
    names = {str(r["alert"]) for r in rules()}
    assert {"IPsecTunnelDown", "IPsecTunnelIdle", "IPsecTunnelOneWay", "IPsecTunnelRekeyFailed",
            "IPsecTunnelExpiringSoon", "IPsecTunnelErrorsIncreasing", "IPsecMonitorResyncing",
            "IPsecMonitorLagging", "IPsecMonitorTargetDown"} <= names


def test_alert_expressions_use_exported_names() -> None:
    """Every rule expression only uses metric and label names the real exporter produces."""
    exp = promql_names.exported()
    bad = {str(r["alert"]): promql_names.problems(str(r["expr"]), exp) for r in rules()}
    assert {k: v for k, v in bad.items() if v} == {}


def _anchors(markdown: str) -> set[str]:
    """GitHub-style anchors of the markdown headings."""
    out = set()
    for line in markdown.splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            text = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower())
            out.add(text.replace(" ", "-"))
    return out


def test_runbook_links_resolve() -> None:
    """Each alert's runbook_url points at an existing heading of docs/operations.md."""
    anchors = _anchors(OPS.read_text())
    links = {str(r["alert"]): str(r["annotations"]["runbook_url"]) for r in rules()}  # type: ignore[index]
    broken = {a: u for a, u in links.items() if u.split("#", 1)[1] not in anchors}
    assert broken == {}
