"""The transition table (reachability, completeness), tunnel ids, and the generated diagram in the docs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from monitor.health.tunnel import (
    DIAGRAM_BEGIN,
    DIAGRAM_END,
    INITIAL_STATE,
    TRANSITIONS,
    Trigger,
    TunnelState,
    main,
    mermaid_diagram,
    tunnel_id,
)

DOC = Path(__file__).resolve().parent.parent / "docs" / "health-model.md"


def _reachable(start: TunnelState) -> set[TunnelState]:
    seen = {start}
    todo = [start]
    while todo:
        s = todo.pop()
        for nxt in TRANSITIONS[s].values():
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_table_is_complete() -> None:
    """Every state has an entry for every trigger, so evaluation never meets a missing key."""
    assert set(TunnelState) == set(TRANSITIONS)
    for state, row in TRANSITIONS.items():
        assert set(Trigger) == set(row), state


def test_every_state_is_reachable_from_the_initial_state() -> None:
    """Starting from ``down``, the table reaches every state."""
    assert set(TunnelState) == _reachable(INITIAL_STATE)


def test_every_state_can_be_left() -> None:
    """No state is a trap: each has a trigger leading elsewhere, and ``down`` is reachable from each."""
    for state, row in TRANSITIONS.items():
        assert {s for s in row.values() if s is not state}, state
        assert TunnelState.DOWN in _reachable(state), state


def test_lost_always_means_down_and_ok_always_means_up() -> None:
    """Losing an SA direction is down from anywhere; the all-clear trigger leads to up from anywhere."""
    for row in TRANSITIONS.values():
        assert TunnelState.DOWN is row[Trigger.LOST]
        assert TunnelState.UP is row[Trigger.OK]


def test_tunnel_id_is_url_path_safe() -> None:
    """Ids contain no '/', '?', '#' or spaces, whatever the netns name; suffixes only when non-zero."""
    tid = tunnel_id("/run/netns/a b?#", 7, if_id=0, mark=0, lo="2001:db8::1", hi="2001:db8::2")
    assert not set("/?# ") & set(tid)
    assert tid.endswith(":7:2001:db8::1-2001:db8::2")
    assert tunnel_id("", 1, if_id=3, mark=42, lo="a", hi="b") == "host:1:a-b:if3:m2a"


def test_diagram_mentions_every_state_and_non_self_transition() -> None:
    """The Mermaid text has a node for every state and an edge for every transition that changes state."""
    text = mermaid_diagram()
    for state, row in TRANSITIONS.items():
        assert state.value in text
        for trig, nxt in row.items():
            if nxt is not state:
                edge = f"{state.value.replace('-', '_')} --> {nxt.value.replace('-', '_')}:"
                line = next(line for line in text.splitlines() if line.strip().startswith(edge))
                assert trig.value in line


def test_doc_diagram_is_generated_from_the_table() -> None:
    """docs/health-model.md holds exactly the diagram the table generates (regenerate with --write)."""
    doc = DOC.read_text(encoding="utf-8")
    inside = doc.split(DIAGRAM_BEGIN, 1)[1].split(DIAGRAM_END, 1)[0]
    assert mermaid_diagram() == inside.lstrip("\n")


def test_cli_prints_the_diagram() -> None:
    """``python -m monitor.health.tunnel --diagram`` prints the same diagram."""
    out = subprocess.run([sys.executable, "-m", "monitor.health.tunnel", "--diagram"], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert mermaid_diagram() == out
    assert main([]) == 2


def test_write_replaces_only_the_generated_block(tmp_path: Path) -> None:
    """``--write FILE`` rewrites the block between the markers and keeps the rest."""
    f = tmp_path / "doc.md"
    f.write_text(f"before\n{DIAGRAM_BEGIN}\nold\n{DIAGRAM_END}\nafter\n", encoding="utf-8")
    assert main(["--write", str(f)]) == 0
    text = f.read_text(encoding="utf-8")
    assert text.startswith("before\n")
    assert text.endswith(f"{DIAGRAM_END}\nafter\n")
    assert "old" not in text
    assert mermaid_diagram() in text
