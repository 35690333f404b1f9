"""deploy/kubernetes: the DaemonSet and ConfigMap validate against the Kubernetes OpenAPI schemas
(kubernetes-validate, strict: unknown fields are errors), and carry what the issue asks for.

What is validated by schema: daemonset.yaml (ConfigMap + DaemonSet, apps/v1 and v1, Kubernetes 1.37 schemas
shipped in the kubernetes-validate wheel). What is NOT: podmonitor.yaml, a Prometheus Operator CRD with no
schema in that wheel; it is only checked structurally here.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from monitor.serve.config import Settings, read_toml

ROOT = Path(__file__).resolve().parent.parent
DS = ROOT / "deploy" / "kubernetes" / "daemonset.yaml"
PM = ROOT / "deploy" / "kubernetes" / "podmonitor.yaml"


def docs(path: Path) -> dict[str, dict[str, Any]]:
    """The YAML documents of a file, by kind."""
    return {d["kind"]: d for d in yaml.safe_load_all(path.read_text()) if d}


@pytest.mark.parametrize("kind", ["ConfigMap", "DaemonSet"])
def test_schema_valid_strict(kind: str) -> None:
    """Each resource validates strictly against the newest Kubernetes schema kubernetes-validate ships."""
    version = kubernetes_validate.latest_version()
    kubernetes_validate.validate(docs(DS)[kind], version, strict=True)


def test_validator_rejects_a_misspelt_field() -> None:
    """The strict validation is not vacuous: a misspelt field in the pod spec is an error."""
    ds = docs(DS)["DaemonSet"]
    ds["spec"]["template"]["spec"]["hostNetwrk"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(ds, kubernetes_validate.latest_version(), strict=True)


def test_daemonset_host_network_net_admin_only_probes_and_scrape() -> None:
    """hostNetwork, non-root, only NET_ADMIN, liveness/readiness on /healthz, prometheus annotations."""
    tpl = docs(DS)["DaemonSet"]["spec"]["template"]
    spec = tpl["spec"]
    assert spec["hostNetwork"] is True
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    [c] = spec["containers"]
    caps = c["securityContext"]["capabilities"]
    assert caps == {"drop": ["ALL"], "add": ["NET_ADMIN"]}
    assert c["securityContext"]["privileged"] is False
    for probe in ("livenessProbe", "readinessProbe"):
        assert "/healthz" in " ".join(c[probe]["exec"]["command"]), probe
    ann = tpl["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true"
    assert ann["prometheus.io/port"] == str(c["ports"][0]["containerPort"])
    env = {e["name"]: e for e in c["env"]}
    assert env["MONITOR_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "ipsec-monitor-token"


def test_configmap_config_is_accepted_by_the_real_settings_loader(tmp_path: Path) -> None:
    """The config.toml in the ConfigMap loads with monitor.serve.config (plus the env the DaemonSet sets)."""
    text = docs(DS)["ConfigMap"]["data"]["config.toml"]
    tomllib.loads(text)
    p = tmp_path / "config.toml"
    p.write_text(text)
    layer = read_toml(p)
    s = Settings(**layer, host="192.0.2.10", token="x" * 24)
    assert s.source == "kernel"
    assert s.port == docs(DS)["DaemonSet"]["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"]


def test_podmonitor_selects_the_daemonset() -> None:
    """(Structural only: no CRD schema.) The PodMonitor selects the pods' labels and port, sends the token,
    and yields job="ipsec-monitor" as the alert rules expect."""
    pm = yaml.safe_load(PM.read_text())
    assert pm["apiVersion"] == "monitoring.coreos.com/v1"
    assert pm["kind"] == "PodMonitor"
    tpl = docs(DS)["DaemonSet"]["spec"]["template"]
    sel = pm["spec"]["selector"]["matchLabels"]
    assert sel.items() <= tpl["metadata"]["labels"].items()
    [ep] = pm["spec"]["podMetricsEndpoints"]
    assert ep["port"] in {p["name"] for p in tpl["spec"]["containers"][0]["ports"]}
    assert ep["authorization"]["credentials"]["name"] == "ipsec-monitor-token"
    assert tpl["metadata"]["labels"][pm["spec"]["jobLabel"]] == "ipsec-monitor"
