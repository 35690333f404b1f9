"""deploy/config.example.toml loads with the real settings loader, and its (commented) [prober] example
parses with the prober's own config reader."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from monitor.health.model import HealthConfig
from monitor.probe.targets import ProberConfig
from monitor.serve.config import Settings, read_toml

EXAMPLE = Path(__file__).resolve().parent.parent / "deploy" / "config.example.toml"


def test_example_loads_into_settings() -> None:
    """Every active setting of the example is a known setting with a valid value."""
    s = Settings(**read_toml(EXAMPLE))
    assert s.source == "kernel"
    assert s.host == "127.0.0.1"
    hc = HealthConfig(**dict(s.health))
    assert "10.192.0.0/12" in hc.expected_remote_ranges


def test_commented_prober_example_is_valid() -> None:
    """Uncommenting the [prober] block gives a valid, enabled ProberConfig with three targets."""
    text = EXAMPLE.read_text()
    start = text.index("# [prober]")
    block = "\n".join(re.sub(r"^# ?", "", ln) for ln in text[start:].splitlines() if ln.startswith("#"))
    cfg = ProberConfig.from_mapping(tomllib.loads(block)["prober"])
    assert cfg.enabled is True
    assert len(cfg.targets) == 3
    assert cfg.targets[1].kind == "udp"


def test_prober_is_off_unless_uncommented() -> None:
    """As shipped, the example has no active [prober] table: the prober stays off."""
    assert "prober" not in tomllib.loads(EXAMPLE.read_text())
