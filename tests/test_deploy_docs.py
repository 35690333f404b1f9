"""docs/operations.md: covers every FAQ problem with a signal and an action, links every deploy artefact,
and names only reason codes, hints and event types the monitor really has."""

from __future__ import annotations

import re
from pathlib import Path

from monitor.health.model import EVENT_TYPES, HINTS, REASONS
from monitor.health.tunnel import TunnelState

ROOT = Path(__file__).resolve().parent.parent
OPS = ROOT / "docs" / "operations.md"


def sections() -> dict[str, str]:
    """Level-3 section title -> body."""
    parts = re.split(r"^### (.+)$", OPS.read_text(), flags=re.M)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


def test_every_faq_problem_has_signal_and_action() -> None:
    """Each FAQ problem has its section, with a signal table and an **Action.** paragraph (keepalive: config)."""
    s = sections()
    problems = [
        "Tunnels down although the configuration did not change", "Idle timeouts", "Network failure and DPD",
        "Traffic from devices does not reach the server", '"CIDR not valid" overlaps',
        "Updating a connection (delete and re-create)",
    ]
    for title in problems:
        assert title in s, title
        assert "| Signal | Value |" in s[title], title
        assert "**Action.**" in s[title], title
    assert "Keepalive" in s
    assert "[prober]" in s["Keepalive"]


def test_every_deploy_artefact_is_linked() -> None:
    """Every file under deploy/ is linked from the guide, and every relative link resolves."""
    text = OPS.read_text()
    links = set(re.findall(r"\]\((\.\./[^)#]+)\)", text))
    for link in links:
        assert (OPS.parent / link).resolve().exists(), link
    deployed = {f"../{p.relative_to(ROOT)}" for p in (ROOT / "deploy").rglob("*") if p.is_file()}
    unlinked = {d for d in deployed if d not in links and not d.endswith((".sysusers", ".tmpfiles"))}
    assert unlinked == set()


def test_named_codes_exist() -> None:
    """Reason codes, hints, event types (and states) written in backticks in the signal tables are real ones."""
    known = set(REASONS) | set(HINTS) | set(EVENT_TYPES) | {str(st) for st in TunnelState} | {"detail"}
    rows = [ln for ln in OPS.read_text().splitlines()
            if ln.startswith(("| reasons", "| events", "| hint", "| reasons / hints"))]
    named = {w for ln in rows for w in re.findall(r"`([a-z_]+)`", ln)}
    assert named
    assert named - known == set()
