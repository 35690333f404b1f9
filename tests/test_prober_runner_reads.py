"""ProberRunner reads each tracked tunnel's JSON once per tick, also when it must pick a source address."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

import monitor.probe.runner as pio
from monitor.probe.prober import Prober
from monitor.probe.targets import ProberConfig


def test_tracked_tunnel_is_read_once_per_step_when_picking_a_source(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without 'source', the runner looks up local addresses per netns of the tracked tunnels; it takes the
    netns from the JSON it already read, not from a second correlator lookup (each one builds the JSON)."""
    asked: list[str] = []

    def fake_addrs(ns: str) -> list[Any]:
        asked.append(ns)
        return [ipaddress.ip_address("10.10.1.1")]

    monkeypatch.setattr(pio, "local_addresses", fake_addrs)
    t = {"id": "t1", "netns": "a", "reqid": 1, "state": "up", "bytes_in": 0, "bytes_out": 0,
         "selectors": [{"src": "10.10.1.0/24", "dst": "10.20.1.0/24", "proto": 0}]}
    reads: list[str] = []

    def lookup(tid: str) -> dict[str, Any] | None:
        reads.append(tid)
        return t if tid == "t1" else None

    cfg = ProberConfig.from_mapping({"enabled": True, "idle_after": 20, "interval": 10, "timeout": 2,
                                     "targets": [{"tunnel": "t1", "target": "10.20.1.1"}]})
    clock = [0.0]
    runner = pio.ProberRunner(Prober(cfg), lambda: ["t1"], lookup, clock=lambda: clock[0])
    for now in (0.0, 1.0, 2.0):
        clock[0] = now
        reads.clear()
        assert runner.step() == []  # not idle yet
        assert reads == ["t1"], reads
    assert asked == ["a"]  # cached until the next rescan
