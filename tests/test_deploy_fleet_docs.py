"""docs/operations.md "Fleet guide" matches what is shipped and tested: its gateway TOML loads with the real
settings loader, its scrape job and Alertmanager route are the shipped example files' (which
tests/test_fleet_alertmanager.py runs), and its federation matchers are the ones that test fetches."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from monitor.serve.config import Settings, read_toml

ROOT = Path(__file__).resolve().parent.parent
OPS = ROOT / "docs" / "operations.md"
PROM_EXAMPLE = ROOT / "deploy" / "prometheus" / "prometheus.example.yml"
AM_EXAMPLE = ROOT / "deploy" / "alertmanager" / "alertmanager.example.yml"
FLEET_TEST = ROOT / "tests" / "test_fleet_alertmanager.py"


def guide() -> str:
    """The fleet guide section."""
    text = OPS.read_text()
    start = text.index("## Fleet guide\n")
    return text[start:text.index("\n## ", start + 1)]


def blocks(lang: str) -> list[str]:
    """The guide's fenced code blocks in ``lang``."""
    return re.findall(rf"```{lang}\n(.*?)```", guide(), flags=re.S)


def test_gateway_toml_loads_with_the_real_loader(tmp_path: Path) -> None:
    """The per-gateway TOML is valid settings (the token file pointed at a real file)."""
    (toml,) = blocks("toml")
    token = tmp_path / "token"
    token.write_text("fleet-doc-token-0123456789\n")
    cfg = tmp_path / "config.toml"
    cfg.write_text(re.sub(r'token_file = "[^"]+"', f'token_file = "{token}"', toml))
    s = Settings(**read_toml(cfg))
    assert (s.host, s.metrics_tunnels, s.token) == ("192.0.2.10", "all", "fleet-doc-token-0123456789")
    assert (str(s.tls_cert), str(s.tls_key)) == ("/etc/ipsec-monitor/tls/gw1.pem", "/etc/ipsec-monitor/tls/gw1.key")


def _subset(small: Any, big: Any) -> bool:
    """Every key and value of ``small`` is in ``big`` (lists item by item, same length)."""
    if isinstance(small, dict):
        return isinstance(big, dict) and all(k in big and _subset(v, big[k]) for k, v in small.items())
    if isinstance(small, list) and small and isinstance(small[0], dict):
        return isinstance(big, list) and len(small) == len(big) and all(map(_subset, small, big))
    return bool(small == big)


def test_scrape_job_is_the_shipped_one() -> None:
    """The guide's scrape job and rule file are the shipped example's."""
    shipped = yaml.safe_load(PROM_EXAMPLE.read_text())
    doc = yaml.safe_load(blocks("yaml")[0])
    assert doc["rule_files"] == shipped["rule_files"]
    (job,) = doc["scrape_configs"]
    assert _subset(job, shipped["scrape_configs"][0])


def test_alertmanager_route_is_the_shipped_one() -> None:
    """The guide's route and inhibition are the shipped example's (timings and receivers' URLs left out)."""
    shipped = yaml.safe_load(AM_EXAMPLE.read_text())
    doc = yaml.safe_load(blocks("yaml")[2])
    assert _subset(doc["route"], shipped["route"])
    assert doc["inhibit_rules"] == shipped["inhibit_rules"]


def test_federation_matchers_are_the_tested_ones() -> None:
    """The first two ``match[]`` of the guide's federation job are what the fleet test fetches."""
    job = yaml.safe_load(blocks("yaml")[1])
    matchers = job[0]["params"]["match[]"]
    assert job[0]["honor_labels"] is True
    assert job[0]["metrics_path"] == "/federate"
    src = FLEET_TEST.read_text()
    for m in matchers[:2]:
        assert f'("match[]", {m!r})' in src or f'("match[]", "{m}")' in src, m
