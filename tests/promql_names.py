"""Test helpers for deploy/: the metric and label names the monitor REALLY exports, and the names a PromQL
expression uses.

``exported()`` renders the real exposition with ``monitor.serve.metrics.render`` (the code behind GET /metrics)
over one tunnel in every state, and parses it back with prometheus_client's own text parser. Nothing in here
lists metric names by hand.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

# Labels Prometheus adds to every scraped series (target labels), not exported by the monitor.
TARGET_LABELS = frozenset({"instance", "job"})
# Series Prometheus itself creates per target.
SYNTHETIC_SERIES = {"up": frozenset({"instance", "job"})}


@dataclass
class Exported:
    """Series name -> label names, and label name -> values seen (for enum-like labels such as state)."""

    labels: dict[str, frozenset[str]] = field(default_factory=dict)
    values: dict[str, set[str]] = field(default_factory=dict)


def full_tunnel(state: str) -> dict[str, Any]:
    """A tunnel in the public JSON shape with every field the metrics read."""
    return {
        "id": f"default:1:{state}", "netns": "default", "reqid": 1, "local": "192.0.2.1",
        "remote": "198.51.100.1", "state": state, "bytes_in": 10, "bytes_out": 20, "packets_in": 1,
        "packets_out": 2, "rekeys": 3, "rekey_failures": 0, "hard_expires_in": 3600.0,
        "replay_errors": 0, "integrity_errors": 0, "sas": [],
    }


def exported() -> Exported:
    """Render the real exposition and collect its series and labels."""
    from monitor.serve import metrics
    from monitor.serve.protocol import STATES

    tunnels = [metrics.sample(full_tunnel(s)) for s in STATES]
    # a route-based tunnel: ipsec_tunnel_info has if_id and mark only where they are set
    tunnels.append(metrics.sample({**full_tunnel("up"), "id": "default:1:route", "if_id": 7, "mark": 42}))
    mon = metrics.MonitorSample(
        enobufs={"default": 1}, resyncs={"default": 1}, lag=0.001,
        dumps={"default": {"last_dump_duration": 0.01, "last_dump": 99.0}}, now=100.0,
        clients=1, gaps=0, dropped=0, stalled=0,
    )
    text = metrics.render(tunnels, mon).decode()
    out = Exported()
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.labels[s.name] = out.labels.get(s.name, frozenset()) | frozenset(s.labels)
            for k, v in s.labels.items():
                out.values.setdefault(k, set()).add(v)
    return out


_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
                       "bool", "offset", "inf", "nan",
                       # aggregation operators: may be followed by by/without (...) before their argument
                       "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
                       "bottomk", "topk", "quantile"})


@dataclass
class Selector:
    """One vector selector in an expression: the metric name and its label matchers."""

    metric: str
    matchers: list[tuple[str, str, str]]  # (label, op, value)


@dataclass
class Names:
    """What an expression refers to."""

    selectors: list[Selector] = field(default_factory=list)
    grouping: set[str] = field(default_factory=set)  # labels in by/without/on/ignoring (...)


_MATCHER = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*,?')


def parse(expr: str) -> Names:
    """Find metric names, label matchers and grouping labels in a PromQL expression (a small tokenizer)."""
    names = Names()
    s = re.sub(r"\[[^\]]*\]", "", expr)  # range / subquery durations, may hold $__rate_interval
    i = 0
    while i < len(s):
        c = s[i]
        if c == '"':
            j = s.index('"', i + 1)
            i = j + 1
            continue
        m = re.match(r"[A-Za-z_:][A-Za-z0-9_:]*", s[i:])
        if not m or (i and (s[i - 1].isalnum() or s[i - 1] in "$.")):
            i += 1
            continue
        word = m.group(0)
        j = i + len(word)
        rest = s[j:].lstrip()
        if word in ("by", "without", "on", "ignoring", "group_left", "group_right") and rest.startswith("("):
            close = rest.index(")")
            names.grouping |= {x.strip() for x in rest[1:close].split(",") if x.strip()}
            i = j + (len(s[j:]) - len(rest)) + close + 1
            continue
        if word in _KEYWORDS or rest.startswith("("):  # keyword or function call
            i = j
            continue
        matchers: list[tuple[str, str, str]] = []
        if rest.startswith("{"):
            close = rest.index("}")
            body = rest[1:close]
            pos = 0
            while pos < len(body):
                mm = _MATCHER.match(body, pos)
                assert mm, f"cannot parse label matchers {body!r} in {expr!r}"
                matchers.append((mm.group(1), mm.group(2), mm.group(3)))
                pos = mm.end()
            j = j + (len(s[j:]) - len(rest)) + close + 1
        names.selectors.append(Selector(word, matchers))
        i = j
    # a bare {..} selector without a metric name is not used in our files
    return names


def problems(expr: str, exp: Exported) -> list[str]:
    """Every metric or label name in ``expr`` that the monitor (or Prometheus) does not produce."""
    out: list[str] = []
    names = parse(expr)
    if not names.selectors:
        out.append(f"no metric selector found in {expr!r}")
    used_labels: set[str] = set()
    for sel in names.selectors:
        known = exp.labels.get(sel.metric, SYNTHETIC_SERIES.get(sel.metric))
        if known is None:
            out.append(f"metric {sel.metric!r} is not exported")
            continue
        allowed = known | TARGET_LABELS
        used_labels |= allowed
        for label, op, value in sel.matchers:
            if label not in allowed:
                out.append(f"{sel.metric}: label {label!r} does not exist (has {sorted(known)})")
            elif op == "=" and "$" not in value and label in exp.values and value not in exp.values[label] \
                    and label not in TARGET_LABELS and label in ("state", "direction"):
                out.append(f"{sel.metric}: {label}={value!r} never occurs (values {sorted(exp.values[label])})")
            elif op == "=~" and label in ("state", "direction") and "$" not in value:
                for alt in value.split("|"):
                    if alt not in exp.values.get(label, set()):
                        out.append(f"{sel.metric}: {label}=~ alternative {alt!r} never occurs")
    for g in names.grouping:
        if g not in used_labels:
            out.append(f"grouping label {g!r} is not a label of any selector in {expr!r}")
    return out
