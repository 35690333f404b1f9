"""The simulated fleet: real netlink bytes, and every scripted lifecycle seen by the real correlator."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from typing import Any

import pytest

from monitor.errors import ConfigError
from monitor.health.correlate import Correlator
from monitor.health.model import HealthConfig
from monitor.health.pipeline import Pipeline
from monitor.sources.items import Control, Datagram
from monitor.sources.simfleet import ROLES, Fleet, FleetConfig
from monitor.sources.simulate import SimulatedSource
from monitor.wire import xfrm as X
from monitor.wire.decode import decode_datagram
from monitor.wire.events import Acquire, Done, NatMapping, PolicyAdded, SAAdded, SADeleted, SAExpired, SAUpdated

START = 1_700_000_000.0
DOC_NETS = [ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")]


def run_fleet(seconds: float, tunnels: int = 12, seed: int = 0) -> list[Any]:
    """All items of a fleet over ``seconds`` of simulated time."""
    fleet = Fleet(seed, FleetConfig(tunnels=tunnels), start=START)
    items: list[Any] = []
    t = START
    while t <= START + seconds:
        items += fleet.step(t)
        nxt = fleet.next_time()
        assert nxt is not None
        assert nxt > t - 1e-9
        t = nxt
    return items


class Observed:
    """What the real pipeline and correlator made of the fleet: states per reqid and events."""

    def __init__(self, seconds: float, tunnels: int = 12, seed: int = 0) -> None:
        self.correlator = Correlator(HealthConfig())  # the defaults monitor serve uses
        pipeline = Pipeline(self.correlator)
        self.states: dict[int, set[str]] = defaultdict(set)
        self.events: dict[int, list[dict[str, Any]]] = defaultdict(list)
        self.reqid_of: dict[str, int] = {}
        fleet = Fleet(seed, FleetConfig(tunnels=tunnels), start=START)
        t = START
        while t <= START + seconds:
            for item in fleet.step(t):
                self._timers(item.ts)
                pipeline.feed(item, item.ts)
                self._collect(item.ts)
            nxt = fleet.next_time()
            assert nxt is not None
            t = nxt
        self._timers(START + seconds)
        self._collect(START + seconds)
        self.final = {self.reqid_of[t["id"]]: t for t in self.correlator.snapshot(START + seconds)}

    def _timers(self, now: float) -> None:
        deadline = self.correlator.next_deadline()
        while deadline is not None and deadline <= now:
            self.correlator.on_timer(deadline)
            self._collect(deadline)
            nxt = self.correlator.next_deadline()
            if nxt is not None and nxt <= deadline:
                break
            deadline = nxt

    def _collect(self, now: float) -> None:
        for tid in self.correlator.take_dirty():
            tj = self.correlator.tunnel_json(tid, now)
            if tj is not None:
                self.reqid_of[tid] = tj["reqid"]
                self.states[tj["reqid"]].add(tj["state"])
        for ev in self.correlator.drain_events():
            doc = ev.to_json()
            if doc["tunnel"] in self.reqid_of:
                self.events[self.reqid_of[doc["tunnel"]]].append(doc)

    def types(self, reqid: int) -> set[str]:
        """Event types seen for one tunnel."""
        return {e["type"] for e in self.events[reqid]}


@pytest.fixture(scope="module")
def observed() -> Observed:
    """Forty simulated minutes of a 12-tunnel fleet through decode, pipeline and correlator."""
    return Observed(2400.0)


def reqid(role: str) -> int:
    """The reqid of the tunnel that plays ``role`` (tunnel index + 1)."""
    return ROLES.index(role) + 1


def test_every_datagram_decodes_and_dumps_are_framed() -> None:
    """Every datagram is kernel-layout netlink; each dump is request, NLM_F_MULTI records, DONE (same seq)."""
    items = run_fleet(600.0)
    open_dumps: dict[int, int] = {}
    finished = 0
    kinds: set[type] = set()
    for item in items:
        if isinstance(item, Control):
            assert item.kind == "xfrm_stat"
            assert item.counters is not None
            continue
        events = decode_datagram(item.data)
        assert events, "an empty datagram"
        if item.outgoing:
            (req,) = {(ev.nl.type, ev.nl.seq) for ev in events}
            assert req[0] in (X.XFRM_MSG_GETSA, X.XFRM_MSG_GETPOLICY)
            assert events[0].nl.flags & X.NLM_F_DUMP == X.NLM_F_DUMP
            open_dumps[req[1]] = req[0]
            continue
        for ev in events:
            kinds.add(type(ev))
            if ev.nl.flags & X.NLM_F_MULTI:
                assert ev.nl.seq in open_dumps, f"dump record with unknown seq {ev.nl.seq}"
                if isinstance(ev, Done):
                    del open_dumps[ev.nl.seq]
                    finished += 1
    assert not open_dumps, f"dumps without NLMSG_DONE: {open_dumps}"
    assert finished >= 120  # 600 s / 10 s, an SA and a policy dump each time
    assert {SAAdded, SAUpdated, SADeleted, SAExpired, Acquire, NatMapping, PolicyAdded, Done} <= kinds


def test_addresses_are_documentation_and_private_ranges() -> None:
    """Outer addresses come from RFC 5737 documentation ranges; selectors from 10.0.0.0/8."""
    fleet = Fleet(3, FleetConfig(tunnels=600), start=START)
    items = fleet.step(START)
    seen = 0
    for item in items:
        if not isinstance(item, Datagram) or item.outgoing:
            continue
        for ev in decode_datagram(item.data):
            if isinstance(ev, SAAdded) and ev.sa.spi:
                for addr in (ev.sa.saddr, ev.sa.daddr):
                    assert any(ipaddress.ip_address(addr) in n for n in DOC_NETS), addr
                seen += 1
            if isinstance(ev, PolicyAdded):
                for addr in (ev.policy.sel.saddr, ev.policy.sel.daddr):
                    assert ipaddress.ip_address(addr) in ipaddress.ip_network("10.0.0.0/8"), addr
    assert seen == 1200


def test_same_seed_same_bytes() -> None:
    """The fleet is deterministic: the same seed and step times give identical datagrams."""
    a = [(i.ts, getattr(i, "data", None)) for i in run_fleet(300.0, seed=5)]
    b = [(i.ts, getattr(i, "data", None)) for i in run_fleet(300.0, seed=5)]
    c = [(i.ts, getattr(i, "data", None)) for i in run_fleet(300.0, seed=6)]
    assert a == b
    assert a != c


def test_healthy_tunnels_rekey_with_monotonic_totals(observed: Observed) -> None:
    """Healthy tunnels rekey (strongSwan order) and the correlator counts the rekeys, bytes never drop."""
    healthy = [r for r in range(1, 13) if r - 1 >= len(ROLES) or r == 1]
    completed = sum(1 for r in healthy for e in observed.events[r] if e["type"] == "rekey_completed")
    assert completed >= len(healthy), {r: observed.types(r) for r in healthy}
    assert all(observed.final[r]["rekeys"] >= 1 for r in healthy), {r: observed.final[r]["rekeys"] for r in healthy}
    final = {r: observed.final[r]["state"] for r in healthy}
    assert set(final.values()) <= {"up", "rekeying"}, final
    assert not any("rekey_failed" in observed.types(r) for r in healthy)
    flaps = {r: observed.states[r] - {"up", "rekeying"} for r in healthy}
    assert not any(flaps.values()), f"healthy tunnels left up/rekeying: {flaps}"


def test_idle_tunnel_goes_idle_then_down_then_back(observed: Observed) -> None:
    """The FAQ's AWS story: no traffic -> idle; the peer drops it -> down; traffic -> up again."""
    r = reqid("idle")
    assert {"idle", "down", "up"} <= observed.states[r], observed.states[r]
    assert {"tunnel_down", "tunnel_up"} <= observed.types(r), observed.types(r)


def test_one_way_tunnel(observed: Observed) -> None:
    """Out bytes grow, in bytes stay flat: the correlator says one-way."""
    r = reqid("oneway")
    assert "one-way" in observed.states[r], observed.states[r]
    assert observed.final[r]["bytes_in"] == 0
    assert observed.final[r]["bytes_out"] > 0


def test_dying_tunnel_goes_down_and_comes_back(observed: Observed) -> None:
    """The peer dies (DELSA both), ACQUIREs follow, then the tunnel is re-established."""
    r = reqid("dies")
    assert {"down", "up"} <= observed.states[r], observed.states[r]
    types = observed.types(r)
    assert {"tunnel_down", "tunnel_up", "acquire"} <= types, types


def test_failed_rekey(observed: Observed) -> None:
    """Soft expire with no successor, then hard expiry: rekey_failed and down."""
    r = reqid("failrekey")
    types = observed.types(r)
    assert "rekey_failed" in types, types
    assert "down" in observed.states[r], observed.states[r]
    assert observed.final[r]["rekey_failures"] >= 1


def test_nat_mapping_changes(observed: Observed) -> None:
    """MAPPING messages become nat_mapping_changed events on the NAT-T tunnel."""
    r = reqid("nat")
    assert "nat_mapping_changed" in observed.types(r), observed.types(r)


def test_replay_and_integrity_errors(observed: Observed) -> None:
    """Rising replay/integrity counters put the tunnel in the errors state."""
    r = reqid("errors")
    assert "errors" in observed.states[r], observed.states[r]
    assert observed.types(r) & {"replay_errors", "integrity_errors"}, observed.types(r)


async def test_simulated_source_accelerates_time() -> None:
    """speed=100: a quarter real second covers about 25 simulated seconds of items."""
    src = SimulatedSource(tunnels=4, speed=100.0, seed=1)
    seen: list[float] = []
    t0 = time.monotonic()

    async def consume() -> None:
        async for item in src.items():
            seen.append(item.ts)
            if time.monotonic() - t0 > 0.3:
                return

    await asyncio.wait_for(consume(), 5.0)
    span = max(seen) - min(seen)
    assert span >= 15.0, f"only {span:.1f} simulated seconds in {time.monotonic() - t0:.2f} real seconds"
    assert src.now() - time.time() > 15.0  # the source's clock runs ahead of the wall clock


def test_simulated_source_rejects_bad_arguments() -> None:
    """A non-positive speed or a negative tunnel count is a ConfigError, not a hang."""
    with pytest.raises(ConfigError):
        SimulatedSource(speed=0)
    with pytest.raises(ConfigError):
        SimulatedSource(tunnels=-1)


def test_monitor_demo_serves_the_dashboard_on_the_simulator() -> None:
    """`monitor demo --port 0` prints the dashboard URL, serves the page and the simulated tunnels; Ctrl-C -> 0."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONITOR_")}
    proc = subprocess.Popen([sys.executable, "-m", "monitor", "demo", "--port", "0", "--tunnels", "9"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.match(r"Dashboard: (http://127\.0\.0\.1:\d+/)$", line.strip())
        assert m, f"unexpected first line {line!r}"
        url = m.group(1)
        with urllib.request.urlopen(url, timeout=5) as resp:
            page = resp.read().decode()
        assert "<script src=\"/static/app.js\"></script>" in page
        deadline = time.monotonic() + 20
        tunnels: list[Any] = []
        while time.monotonic() < deadline and len(tunnels) < 9:
            with urllib.request.urlopen(url + "api/v1/tunnels", timeout=5) as resp:
                tunnels = json.loads(resp.read())["tunnels"]
            time.sleep(0.2)
        assert len(tunnels) == 9, tunnels
        assert {t["netns"] for t in tunnels} == {"sim"}
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
