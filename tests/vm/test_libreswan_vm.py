"""libreswan against the monitor (issue 12 item 7, issue 14 item 6; guest side: tests/vm/scenarios/libreswan.sh).

The reference is ``whack --showstates`` of side a, taken right after serve's ``/api/v1/tunnels``: the
connection's Child SA SPIs must be exactly the SAs of the one kernel tunnel serve shows, named ``net/net``.
pluto's negotiation (its placeholder policy with an empty template, a first Child SA it may replace under a
new reqid) must leave no ghost: one tunnel; a replaced tunnel's last event is ``tunnel_superseded`` by it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.vm, pytest.mark.timeout(900)]  # the first VM test boots the VM for all

_CHILD = re.compile(r'^(?:\d{3} )?#(\d+): "net"(?::\d+)? STATE_V2_ESTABLISHED_CHILD_SA')
_SPIS = re.compile(r'^(?:\d{3} )?#(\d+): "net" .*?((?:esp\.[0-9a-f]+@\S+ ?)+)')


def whack_child_spis(text: str) -> dict[int, set[int]]:
    """``{state number: {SPIs}}`` of the established Child SAs of connection ``net`` in ``whack --showstates``."""
    established = {int(m[1]) for line in text.splitlines() if (m := _CHILD.match(line))}
    out: dict[int, set[int]] = {}
    for line in text.splitlines():
        if (m := _SPIS.match(line)) is not None and int(m[1]) in established:
            out[int(m[1])] = {int(s, 16) for s in re.findall(r"esp\.([0-9a-f]+)@", m[2])}
    return out


def _run(vm_scenario: Any) -> Path:
    rw: Path = vm_scenario("libreswan")
    return rw


def test_one_tunnel_per_connection_named_from_whack(vm_scenario: Any) -> None:
    """After pluto's negotiation serve shows exactly one tunnel, named ``net/net``, holding the SPIs whack lists
    for the established Child SA(s), up (or idle)."""
    rw = _run(vm_scenario)
    log = (rw / "scenario.log").read_text()
    assert (rw / "view.result").read_text().strip() == "ok", log
    tunnels = json.loads((rw / "tunnels.json").read_text())["tunnels"]
    assert len(tunnels) == 1, [(t["id"], t["state"], t["reasons"]) for t in tunnels]
    (t,) = tunnels
    assert (t["ike"]["conn"], t["ike"]["child"]) == ("net", "net")
    assert t["state"] in ("up", "idle"), t
    whack = whack_child_spis((rw / "whack-states.txt").read_text())
    assert whack, (rw / "whack-states.txt").read_text()
    kernel = {int(sa["spi"], 16) for sa in t["sas"]}
    assert set().union(*whack.values()) == kernel, (whack, t["sas"])
    assert t["ike"]["remote_id"] == "@b"
    ike = json.loads((rw / "ike.json").read_text())
    assert ike["status"]["connected"] is True
    assert ike["conns"] == []  # libreswan: no configured connections (docs/operations.md)


def test_no_ghost_in_the_events(vm_scenario: Any) -> None:
    """No tunnel of the run ever went ``down``: not the tunnel left, and not a first Child SA pluto replaced
    under a new reqid (libreswan 4.10 deletes its policies and SAs before the new ones come; the monitor holds
    it for ``supersede_grace``). Every other tunnel of the run is gone: one that had SAs ends with
    ``tunnel_superseded`` by the tunnel left, and one that never had an SA (the placeholder policy) ends with
    its policy's removal."""
    rw = _run(vm_scenario)
    events = json.loads((rw / "events.json").read_text())["events"]
    (left,) = [t["id"] for t in json.loads((rw / "tunnels.json").read_text())["tunnels"]]
    assert [e for e in events if e["type"] == "tunnel_down"] == []
    last: dict[str, dict[str, Any]] = {}
    had_sa: set[str] = set()
    for e in events:
        if e["tunnel"]:
            last[e["tunnel"]] = e
            if e["type"] == "sa_added" or (e["type"] == "resync" and e["detail"].get("sas")):
                had_sa.add(e["tunnel"])
    for tid, e in last.items():
        if tid == left:
            continue
        if tid in had_sa or any(x["type"] == "sa_deleted" and x["tunnel"] == tid for x in events):
            assert (e["type"], e["detail"]["by"], e["detail"]["reason"]) == ("tunnel_superseded", left,
                                                                           "superseded"), e
        else:
            assert e["type"] == "policy_removed", e
