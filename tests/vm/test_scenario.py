"""The VM scenario itself: real SAs, real rekeys, a quiet dump point and a dead peer (tests/vm/README.md)."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest

from vm.references import redact_keys

pytestmark = [pytest.mark.vm, pytest.mark.timeout(900)]


def _esp_sas(text: str) -> list[str]:
    return re.findall(r"proto esp spi (0x[0-9a-f]{8})", text)


def test_scenario_rekeys_and_dump_point(vm_ok: Path) -> None:
    rekeys = (vm_ok / "rekeys.txt").read_text().split("\n")
    spis = [line.split()[1] for line in rekeys if line.strip()]
    assert len(spis) >= 3, f"initial SA + 2 rekeys expected, got {spis}"
    assert len(set(spis)) == len(spis)

    assert (vm_ok / "dumppoint.stable").read_text().strip() == "stable"
    float((vm_ok / "dumppoint.time").read_text())
    state = (vm_ok / "xfrm-state-a.txt").read_text()
    sas = _esp_sas(state)
    assert len(sas) == 2, redact_keys(state)  # one inbound, one outbound, old ones deleted (never print keys)
    assert spis[-1] in sas or any(s in sas for s in spis), (spis, sas)
    has_counters = "lifetime current" in state  # not in the assert: pytest would print the text (keys)
    assert has_counters, "ip -s xfrm state printed no counters"
    policy = (vm_ok / "xfrm-policy-a.txt").read_text()
    assert "src 10.10.1.1/32 dst 10.20.1.1/32" in policy, policy
    swanctl = (vm_ok / "swanctl-a.txt").read_text()
    assert "INSTALLED" in swanctl, swanctl
    for spi in sas:
        assert spi.removeprefix("0x") in swanctl, (spi, swanctl)


def test_scenario_peer_death_removes_sas(vm_ok: Path) -> None:
    float((vm_ok / "peerdeath.time").read_text())
    assert _esp_sas((vm_ok / "after-peer-death-a.txt").read_text()) == []
    assert "10.10.1.1/32" not in (vm_ok / "after-peer-death-policy-a.txt").read_text()


def test_scenario_capture_has_sa_lifecycle(vm_ok: Path) -> None:
    from monitor.wire import xfrm as X
    from monitor.wire.pcap import read_pcap

    types = set()
    for rec in read_pcap(vm_ok / "nlmon-a.pcap"):
        off = 0
        while off + 16 <= len(rec.data):
            length, mtype = struct.unpack_from("=IH", rec.data, off)
            types.add(mtype)
            if length < 16:
                break
            off += (length + 3) & ~3
    for wanted in (X.XFRM_MSG_NEWSA, X.XFRM_MSG_UPDSA, X.XFRM_MSG_DELSA, X.XFRM_MSG_EXPIRE):
        assert wanted in types, (wanted, sorted(types))
