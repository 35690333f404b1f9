"""History across a ``kill -9`` on a real kernel with real strongSwan (issue 13; tests/vm/scenarios/history.sh).

The scenario kills ``monitor serve`` while its tunnel rekeys under traffic, lets the tunnel rekey unseen,
restarts serve on the same store, then has the peer delete and re-establish the tunnel. The references are
the scenario's own clock (scenario.log) and what serve said before the kill; the store is read with sqlite3.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from vm.references import parse_scenario_log

pytestmark = [pytest.mark.vm, pytest.mark.timeout(1500)]


@pytest.fixture(scope="module")
def hist(vm_scenario: Callable[[str], Path]) -> Path:
    return vm_scenario("history")


def _json(rw: Path, name: str) -> Any:
    return json.loads((rw / name).read_text())


def _at(rw: Path, needle: str) -> float:
    for ts, msg in parse_scenario_log((rw / "scenario.log").read_text()):
        if needle in msg:
            return ts
    raise AssertionError(f"scenario.log has no {needle!r}")


def test_totals_and_rekeys_never_go_down_and_the_unseen_rekey_counts(hist: Path) -> None:
    (before,) = _json(hist, "before-tunnels.json")["tunnels"]
    after = {t["id"]: t for t in _json(hist, "after-tunnels.json")["tunnels"]}
    assert before["id"] in after, f"the tunnel was not restored: {sorted(after)}; artifacts in {hist}"
    a = after[before["id"]]
    for k in ("bytes_in", "bytes_out", "packets_in", "packets_out"):
        assert a[k] >= before[k], f"{k} went down across the restart: {before[k]} -> {a[k]} ({hist})"
    assert a["rekeys"] >= before["rekeys"] + 1, (before["rekeys"], a["rekeys"], a["last_rekey"], hist)
    assert a["state"] != "down", a


def test_seq_continues_and_no_false_flap_at_restart(hist: Path) -> None:
    seq0 = _json(hist, "before-healthz.json")["seq"]
    h = _json(hist, "after-healthz.json")
    assert h["seq"] >= seq0
    assert h["history"]["ok"] is True, h["history"]
    assert h["history"]["restored_tunnels"] >= 1, h["history"]
    events = _json(hist, "after-events.json")["events"]
    assert events, "no event after the restart"
    assert all(e["seq"] > seq0 for e in events)
    # nothing went down between the kill and the peer's planned termination
    terminate = _at(hist, "peer terminates")
    false = [e for e in events if e["type"] in ("tunnel_down", "tunnel_up") and e["ts"] < terminate]
    assert not false, f"false up/down at restart: {false}"
    inferred = [e for e in events if e["detail"].get("inferred")]
    assert any(e["type"] == "rekey_completed" for e in inferred), [e["type"] for e in events]


def test_the_peers_delete_and_reestablish_is_one_flap_in_history(hist: Path) -> None:
    doc = _json(hist, "history.json")
    assert doc["flaps"] == 1, doc
    states = [i["state"] for i in doc["intervals"]]
    assert "down" in states, states
    down = [i for i in doc["intervals"] if i["state"] == "down"][-1]
    terminate, back = _at(hist, "peer terminates"), _at(hist, "re-established")
    assert terminate - 1 <= down["start"] <= back, (down, terminate, back)
    assert down["end"] is not None, down
    assert down["end"] <= back + 1, (down, back)
    last = doc["intervals"][-1]
    assert last["end"] is None, doc["intervals"]
    assert last["state"] != "down", doc["intervals"]


def test_the_store_is_sound_and_holds_every_event(hist: Path) -> None:
    conn = sqlite3.connect(hist / "history.sqlite3")
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        stored = [r[0] for r in conn.execute("SELECT seq FROM events ORDER BY seq")]
    finally:
        conn.close()
    lo, hi = stored[0], stored[-1]
    served = [e["seq"] for e in _json(hist, "final-events.json")["events"]]
    seq0 = _json(hist, "before-healthz.json")["seq"]
    assert lo == 1, lo
    # contiguous within each run; the restart continues above the reservation of the killed run
    jumps = [(a, b) for a, b in itertools.pairwise(served) if b != a + 1]
    assert len(jumps) <= 1, jumps
    assert all(b > seq0 for _, b in jumps), (jumps, seq0)
    assert served[0] == 1
    assert hi >= served[-1]
    # serve 2 went on after final-events.json was read (and stopped cleanly): the store holds every served
    # event and the later ones
    missing = sorted(set(served) - set(stored))
    assert not missing, f"served events missing from the store: {missing}"
    store_jumps = [(a, b) for a, b in itertools.pairwise(stored) if b != a + 1]
    assert store_jumps == jumps, (store_jumps, jumps)


def test_no_key_bytes_in_the_store_or_any_output(hist: Path) -> None:
    """Every SA generation's keys (polled each second during the scenario) are absent from the history
    database, the REST answers and the logs (tests/vm/scenarios/history.py)."""
    lines = (hist / "keys-check.txt").read_text().splitlines()
    fields = dict(line.split(" ", 1) for line in lines if line and not line.startswith(" "))
    assert int(fields["keys"]) >= 6, lines  # at least three generations, two keys each... per direction
    assert "history.sqlite3" in fields["checked"].split(), lines
    assert fields["found"] == "0", "key bytes in the monitor's outputs:\n" + "\n".join(lines)
