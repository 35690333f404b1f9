"""deploy/grafana/dashboard.json: valid JSON whose every PromQL expression uses only metric and label names that
monitor/serve/metrics.py really exports (rendered and parsed back, see tests/promql_names.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_names

DASH = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "dashboard.json"


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including panels nested in rows."""
    for p in items:
        yield p
        yield from panels(p.get("panels", []))


def expressions(dash: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, expr) for every PromQL expression: panel targets and query variables."""
    out = [
        (f"panel {p['title']!r} {t['refId']}", t["expr"]) for p in panels(dash["panels"]) for t in p.get("targets", [])
    ]
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]["query"]
            inner = q[len("label_values("):q.rindex(",")] if q.startswith("label_values(") else q
            out.append((f"variable {v['name']}", inner))
    return out


def test_dashboard_is_valid_grafana_json() -> None:
    """The file parses as JSON, has a uid/title, unique panel ids, and every panel has a grid position."""
    dash = json.loads(DASH.read_text())
    assert dash["uid"] == "ipsec-monitor"
    assert dash["title"]
    ids = [p["id"] for p in panels(dash["panels"])]
    assert len(ids) == len(set(ids))
    assert all({"x", "y", "w", "h"} <= set(p["gridPos"]) for p in panels(dash["panels"]))
    assert len(expressions(dash)) >= 15


def test_every_expression_uses_exported_metric_and_label_names() -> None:
    """Each expression's metrics and labels exist in the real exposition (plus Prometheus' up/instance/job)."""
    exp = promql_names.exported()
    dash = json.loads(DASH.read_text())
    bad = {where: promql_names.problems(expr, exp) for where, expr in expressions(dash)}
    assert {k: v for k, v in bad.items() if v} == {}


def test_dashboard_covers_every_tunnel_metric() -> None:
    """Every per-tunnel and monitor series the exporter has appears in at least one panel."""
    exp = promql_names.exported()
    dash = json.loads(DASH.read_text())
    used = {s.metric for _, e in expressions(dash) for s in promql_names.parse(e).selectors}
    missing = {m for m in exp.labels if m.startswith(("ipsec_tunnel_", "ipsec_monitor_"))} - used
    # dropped events are shown as gaps (one gap message per drop episode); no separate panel
    assert missing <= {"ipsec_monitor_ws_dropped_events_total"}, missing


def test_checker_catches_a_wrong_name() -> None:
    """The name check is not vacuous: a misspelt metric, an unknown label and an unknown state are reported."""
    exp = promql_names.exported()
    assert promql_names.problems('rate(ipsec_tunnel_byte_total[5m])', exp)
    assert promql_names.problems('ipsec_tunnel_state{status="up"}', exp)
    assert promql_names.problems('ipsec_tunnel_state{state="sleepy"}', exp)
    assert promql_names.problems('sum by (spi) (ipsec_tunnel_rekeys_total)', exp)
