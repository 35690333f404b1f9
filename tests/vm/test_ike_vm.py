"""The IKE view against a real charon (issue 14; guest side: tests/vm/scenarios/ike.sh).

The reference is ``swanctl --list-sas`` of side a taken right after serve's ``/api/v1/tunnels``, parsed here
on its own (IKE_SA lines ``gw: #1, ESTABLISHED, ...``, CHILD_SA lines by ``references.parse_swanctl_sas``'s
patterns): every INSTALLED CHILD_SA must be the ``ike`` block of the kernel tunnel with its reqid, whose SAs
hold its SPIs. The failures configured on purpose must show as their reasons, the child never started as
``down``/``not_initiated``, and a charon restart must be survived.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.vm.references import _CHILD, _SPI_LINE

pytestmark = [pytest.mark.vm, pytest.mark.timeout(900)]  # the first VM test boots the VM for all

_IKE = re.compile(r"^(\S+): #(\d+), (\S+),")


def swanctl_children(text: str) -> list[dict[str, Any]]:
    """``[{conn, ike_state, child, reqid, state, spi_in, spi_out}]`` from ``swanctl --list-sas``."""
    out: list[dict[str, Any]] = []
    conn = ike_state = None
    for line in text.splitlines():
        if (m := _IKE.match(line)) is not None:
            conn, ike_state = m[1], m[3]
        elif (m := _CHILD.match(line)) is not None:
            out.append({"conn": conn, "ike_state": ike_state, "child": m[1], "reqid": int(m[2]), "state": m[3]})
        elif (m := _SPI_LINE.match(line)) is not None and out:
            out[-1][f"spi_{m[1]}"] = int(m[2], 16)
    return out


def _tunnels(rw: Path, name: str) -> dict[str, dict[str, Any]]:
    return {t["id"]: t for t in json.loads((rw / name).read_text())["tunnels"]}


def _check_joined(rw: Path, n: int) -> None:
    tunnels = _tunnels(rw, f"tunnels-{n}.json")
    ref = [c for c in swanctl_children((rw / f"swanctl-sas-{n}.txt").read_text()) if c["state"] == "INSTALLED"]
    assert {("gw", "net"), ("gw", "vti")} <= {(c["conn"], c["child"]) for c in ref}, ref
    # the route-based child: its kernel tunnel carries the xfrm interface id, and the name joined to it
    (vti,) = [t for t in tunnels.values() if t.get("if_id") == 42]
    assert (vti["ike"]["conn"], vti["ike"]["child"]) == ("gw", "vti"), vti["ike"]
    for c in ref:
        kernel = [t for t in tunnels.values() if t["reqid"] == c["reqid"] and not t["id"].startswith("ike:")]
        assert len(kernel) == 1, (c, list(tunnels))
        t = kernel[0]
        ike = t["ike"]
        assert (ike["conn"], ike["child"], ike["child_state"], ike["ike_state"]) == \
            (c["conn"], c["child"], "INSTALLED", c["ike_state"])
        spis = {int(sa["spi"], 16) for sa in t["sas"]}
        assert {c["spi_in"], c["spi_out"]} <= spis, (c, t["sas"])
        assert ike["local_id"] == "gw-a"
        assert ike["remote_id"] == "gw-b"
        assert ike["esp_proposal"] == "AES_CBC-128/HMAC_SHA2_256_128"
        assert ike["initiator"] is True
        assert t["state"] in ("up", "idle", "rekeying")
        assert f"ike:{c['conn']}:{c['child']}" not in tunnels


def test_names_joined_to_swanctl(vm_scenario: Any) -> None:
    """Every INSTALLED CHILD_SA of swanctl is the ike block of the kernel tunnel with its reqid and SPIs."""
    rw = vm_scenario("ike")
    assert (rw / "view-1.result").read_text().strip() == "ok", (rw / "scenario.log").read_text()
    _check_joined(rw, 1)


@pytest.mark.parametrize(("tid", "code"), [("ike:badpsk:bad", "auth_failed"), ("ike:badesp:esp", "no_proposal"),
                                           ("ike:dead:void", "peer_unreachable"), ("ike:idle:never", "not_initiated")])
def test_failures_are_reasons(vm_scenario: Any, tid: str, code: str) -> None:
    """Wrong PSK, refused ESP proposal, absent peer, never started: down, the failure first among the reasons."""
    rw = vm_scenario("ike")
    t = _tunnels(rw, "tunnels-1.json")[tid]
    assert t["state"] == "down"
    assert [r["code"] for r in t["reasons"]] == [code]
    conn = tid.split(":")[1]
    listed = {line.split(":")[0] for line in (rw / "swanctl-conns-1.txt").read_text().splitlines()
              if line and not line[0].isspace()}
    assert conn in listed  # configured, as charon says
    if code == "not_initiated":
        assert "start_action = start or trap" in t["reasons"][0]["text"]
        assert "dpd_action = restart" in t["reasons"][0]["text"]  # as configured, in swanctl.conf's words
        assert t["ike"]["last_error"] is None
    else:
        assert t["ike"]["last_error"]["code"] == code


def test_charon_restart_is_survived(vm_scenario: Any) -> None:
    """charon a stopped: one status, kernel-only view, REST answering; started again: names joined again."""
    rw = vm_scenario("ike")
    down = json.loads((rw / "ike-down.json").read_text())["status"]
    assert down["connected"] is False
    assert "a.vici" in down["error"]
    assert all(not t["id"].startswith("ike:") for t in _tunnels(rw, "tunnels-down.json").values())
    assert (rw / "view-2.result").read_text().strip() == "ok"
    _check_joined(rw, 2)
    log = (rw / "serve.log").read_text()
    assert "Traceback" not in log
    assert log.count("IKE view unavailable") == 1, log


def test_start_action_hint_from_a_real_charon(vm_scenario: Any) -> None:
    """The configuration hints of a real charon's list-conns: the connection nothing initiates (``idle``,
    ``start_action = none``; swanctl lists no IKE_SA for it) and only it gets the ``start_action`` hint, in
    ``/api/v1/ike`` and on its tunnel's ``ike`` block; the failing ones (something tried) and ``gw`` (up) do not."""
    rw = vm_scenario("ike")
    ike = json.loads((rw / "ike-1.json").read_text())
    with_hint = {h["conn"] for h in ike["hints"] if h["code"] == "start_action"}
    swanctl_ike = {m[1] for line in (rw / "swanctl-sas-1.txt").read_text().splitlines() if (m := _IKE.match(line))}
    assert "idle" not in swanctl_ike, swanctl_ike
    assert with_hint == {"idle"}, ike["hints"]
    t = _tunnels(rw, "tunnels-1.json")["ike:idle:never"]
    (hint,) = [h for h in t["ike"]["hints"] if h["code"] == "start_action"]
    assert (hint["severity"], hint["child"]) == ("warning", "never")
    assert "start_action = start (or trap)" in hint["text"]
    gw = [t for t in _tunnels(rw, "tunnels-1.json").values() if (t.get("ike") or {}).get("conn") == "gw"]
    assert gw
    assert all("start_action" not in [h["code"] for h in t["ike"]["hints"]] for t in gw)
