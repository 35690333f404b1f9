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


def fleet_overview(dash: dict[str, Any]) -> list[dict[str, Any]]:
    """The panels of the first row ("Fleet overview"), up to the next row."""
    items = dash["panels"]
    assert items[0]["type"] == "row"
    out = []
    for p in items[1:]:
        if p["type"] == "row":
            break
        out.append(p)
    return out


def fleet_expressions(dash: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr) of the fleet overview row with the dashboard variables set to "all"
    (what Grafana sends with every gateway and namespace selected): ready for a real Prometheus."""
    return [(p["title"], t["expr"].replace("$instance", ".*").replace("$netns", ".*"))
            for p in fleet_overview(dash) for t in p["targets"]]


def test_gateway_variable_lists_every_gateway_from_the_aggregate() -> None:
    """The gateway (instance) variable is multi-select with "All" and is read from ``ipsec_tunnels``, which is
    exported in every metrics_tunnels mode (a gateway with ``none`` still appears); the namespace variable
    follows the chosen gateways."""
    dash = json.loads(DASH.read_text())
    var = {v["name"]: v for v in dash["templating"]["list"]}
    gw = var["instance"]
    assert (gw["label"], gw["multi"], gw["includeAll"]) == ("Gateway", True, True)
    assert gw["query"]["query"] == "label_values(ipsec_tunnels, instance)"
    assert var["netns"]["query"]["query"] == 'label_values(ipsec_tunnels{instance=~"$instance"}, netns)'


def test_fleet_overview_row_is_built_on_aggregates_per_gateway() -> None:
    """The first row is "Fleet overview": every expression in it filters on the gateway variable and reads
    only aggregate or monitor series (``ipsec_tunnels``, ``up``, ``ipsec_monitor_*``: what a global Prometheus
    federates, and what a gateway with metrics_tunnels = "none" exports); a table has one row per gateway
    and a panel charts down tunnels per gateway."""
    dash = json.loads(DASH.read_text())
    assert dash["panels"][0]["title"] == "Fleet overview"
    row = fleet_overview(dash)
    exprs = [t["expr"] for p in row for t in p["targets"]]
    assert all('instance=~"$instance"' in e for e in exprs), exprs
    metrics = {s.metric for e in exprs for s in promql_names.parse(e).selectors}
    assert metrics == {"ipsec_tunnels", "up", "ipsec_monitor_event_loop_lag_seconds"}
    titles = {p["title"]: p for p in row}
    table = titles["Gateways"]
    assert table["type"] == "table"
    assert all("by (instance)" in t["expr"] or t["expr"].startswith("up{") for t in table["targets"])
    assert [t["expr"] for t in titles["Tunnels down per gateway"]["targets"]] == [
        'sum by (instance) (ipsec_tunnels{instance=~"$instance", netns=~"$netns", state="down"})']
