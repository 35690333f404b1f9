"""``monitor check``: Nagios exit codes, output lines, replays, and the 10,000-SA time budget."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from monitor.commands.check import ALL_STATES, CRITICAL, OK, UNKNOWN, WARNING, Thresholds, evaluate, read_replay
from monitor.sources.items import Datagram
from monitor.sources.simfleet import ROLES, Fleet, FleetConfig
from monitor.wire.pcap import PcapWriter
from tests.fake_charon import FakeCharon
from tests.ike_samples import list_conn, list_sa

START = 1_700_000_000.0
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"


def tunnel(state: str, tid: str = "t", **kw: Any) -> dict[str, Any]:
    """A minimal public tunnel object."""
    return {"id": tid, "netns": "sim", "reqid": 1, "local": "192.0.2.1", "remote": "198.51.100.1",
            "state": state, "reasons": [{"code": "x", "text": "because"}], "hard_expires_in": None, **kw}


def write_capture(path: Path, seconds: float, tunnels: int = 12, seed: int = 0) -> int:
    """Record ``seconds`` of the simulated fleet as a netlink pcap; returns the SA count of the first dump."""
    fleet = Fleet(seed, FleetConfig(tunnels=tunnels, policies=True), start=START)
    t = START
    with PcapWriter(path) as w:
        while t <= START + seconds:
            for item in fleet.step(t):
                if isinstance(item, Datagram):
                    w.write(item.ts, item.data, item.outgoing, netns=item.netns)
            nxt = fleet.next_time()
            assert nxt is not None
            t = nxt
    return sum(1 for _ in fleet.current_sas())


def run_check(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``monitor check`` as a user would (a fresh interpreter)."""
    return subprocess.run([sys.executable, "-m", "monitor", "check", *args], check=False, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "NO_COLOR": "1", **(env or {})})


# --- pure evaluation ------------------------------------------------------------------------


def test_state_to_exit_code_mapping() -> None:
    """up/rekeying are OK, idle/one-way/errors WARNING, down/expiring CRITICAL; the worst wins."""
    th = Thresholds()
    assert evaluate([tunnel("up"), tunnel("rekeying")], th).code == OK
    for s in ("idle", "one-way", "errors"):
        assert evaluate([tunnel("up"), tunnel(s)], th).code == WARNING, s
    for s in ("down", "expiring"):
        assert evaluate([tunnel("idle"), tunnel(s)], th).code == CRITICAL, s


def test_unhealthy_lines_worst_first_and_summary() -> None:
    """Only unhealthy tunnels are listed, critical before warning; the summary counts them."""
    r = evaluate([tunnel("up", "a"), tunnel("idle", "b"), tunnel("down", "c"), tunnel("down", "d")], Thresholds())
    assert [t["id"] for _, t in r.unhealthy] == ["c", "d", "b"]
    assert r.summary.startswith("IPSEC CRITICAL - 4 tunnels: 2 critical, 1 warning")
    assert "2 down" in r.summary
    assert "1 idle" in r.summary
    assert "1 up" in r.summary


def test_custom_states_expiry_and_min_tunnels() -> None:
    """--warn/--crit states remap states; expiry thresholds and --min-tunnels raise the status."""
    assert evaluate([tunnel("down")], Thresholds(warn_states=frozenset({"down"}), crit_states=frozenset())).code \
        == WARNING
    assert evaluate([tunnel("up", hard_expires_in=50.0)], Thresholds(warn_expiry=100.0)).code == WARNING
    assert evaluate([tunnel("up", hard_expires_in=50.0)], Thresholds(warn_expiry=100.0, crit_expiry=60.0)).code \
        == CRITICAL
    assert evaluate([tunnel("up", hard_expires_in=500.0)], Thresholds(warn_expiry=100.0)).code == OK
    r = evaluate([tunnel("up")], Thresholds(min_tunnels=2))
    assert r.code == CRITICAL
    assert "expected at least 2" in r.summary
    assert evaluate([], Thresholds()).code == OK


# --- real runs ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def outage_capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """100 simulated seconds: the 'dies' tunnel's peer is dead at the end."""
    path = tmp_path_factory.mktemp("check") / "outage.pcap"
    write_capture(path, 100.0)
    return path


def test_replay_with_dead_tunnel_is_critical(outage_capture: Path) -> None:
    """A replayed capture in which one tunnel went down: exit 2, and that tunnel's line has reasons."""
    p = run_check("--source", f"replay:{outage_capture}")
    assert p.returncode == CRITICAL, p.stdout + p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith("IPSEC CRITICAL - 12 tunnels"), lines
    assert "|" in lines[0]
    assert "tunnels=12" in lines[0]
    dies_reqid = ROLES.index("dies") + 1
    down = [ln for ln in lines[1:] if ln.startswith("DOWN")]
    assert any(f"reqid {dies_reqid}," in ln for ln in down), lines
    assert "Traceback" not in p.stderr


def test_replay_json_and_remapped_states(outage_capture: Path) -> None:
    """--json gives the same verdict as a document; --warn-states/--crit-states change the exit code."""
    p = run_check("--source", f"replay:{outage_capture}", "--json")
    doc = json.loads(p.stdout)
    assert p.returncode == doc["exit"] == CRITICAL
    assert doc["status"] == "CRITICAL"
    assert doc["total"] == 12
    assert any(t["state"] == "down" and t["reasons"] for t in doc["tunnels"])
    assert {t["netns"] for t in doc["tunnels"]} == {"sim"}  # the capture keeps each record's namespace
    p = run_check("--source", f"replay:{outage_capture}", "--warn-states", ",".join(ALL_STATES),
                  "--crit-states", "")
    assert p.returncode == WARNING, p.stdout


def test_bad_capture_is_unknown(tmp_path: Path) -> None:
    """A file that is not a netlink pcap, or a missing one: exit 3 with a clear message."""
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"this is not a pcap file at all")
    p = run_check("--source", f"replay:{bad}")
    assert p.returncode == UNKNOWN, p.stdout
    assert p.stdout.startswith("IPSEC UNKNOWN - ")
    assert "pcap" in p.stdout
    p = run_check("--source", f"replay:{tmp_path / 'missing.pcap'}")
    assert p.returncode == UNKNOWN, p.stdout
    assert "missing.pcap" in p.stdout
    assert "Traceback" not in p.stderr


def test_simulate_source_verdict_matches_json() -> None:
    """--source simulate runs 15 simulated minutes instantly; the exit code matches the JSON verdict."""
    p = run_check("--source", "simulate", "--tunnels", "10", "--json")
    doc = json.loads(p.stdout)
    assert doc["total"] == 10
    assert sum(doc["counts"].values()) == 10
    # the documented default thresholds (docs/operations.md), applied here to the reported states: any
    # down/expiring tunnel is CRITICAL, any idle/one-way/errors one WARNING
    counts = doc["counts"]
    expected = 2 if counts.get("down", 0) + counts.get("expiring", 0) else \
        1 if counts.get("idle", 0) + counts.get("one-way", 0) + counts.get("errors", 0) else 0
    assert p.returncode == expected, p.stdout
    assert doc["exit"] == expected
    assert {t["status"] for t in doc["tunnels"]} <= {"WARNING", "CRITICAL"}


def test_10k_sa_dump_checked_end_to_end(tmp_path: Path) -> None:
    """A 10,000-SA dump is checked whole, in process and by the command; the time is measured and reported
    (artifacts/check-10k.txt, bench/RESULTS.md), not asserted: a loaded 2-vCPU machine is no stopwatch."""
    path = tmp_path / "dump10k.pcap"
    sas = write_capture(path, 0.0, tunnels=5000, seed=2)
    assert sas == 10_000
    t0 = time.perf_counter()
    tunnels, _ = read_replay(str(path))
    in_process = time.perf_counter() - t0
    assert len(tunnels) == 5000
    assert sum(len(t["sas"]) for t in tunnels) == 10_000
    t0 = time.perf_counter()
    p = run_check("--source", f"replay:{path}", "--json")
    end_to_end = time.perf_counter() - t0
    doc = json.loads(p.stdout)
    assert doc["total"] == 5000, doc["summary"]
    assert doc["sas"] == 10_000
    ARTIFACTS.mkdir(exist_ok=True)
    report = (f"monitor check, 10,000 SAs (5,000 tunnels, {path.stat().st_size} bytes of netlink pcap):\n"
              f"  pipeline+correlator in process: {in_process:.3f} s\n"
              f"  `monitor check --source replay:` end to end (interpreter start included): {end_to_end:.3f} s\n"
              f"  the command's own measurement: {doc['duration']:.3f} s\n")
    (ARTIFACTS / "check-10k.txt").write_text(report)
    print(report)
    assert p.returncode == doc["exit"]


@pytest.mark.hostkernel
def test_kernel_without_cap_net_admin_is_unknown(tmp_path: Path) -> None:
    """As an unprivileged user, reading the kernel fails: exit 3 and the message names CAP_NET_ADMIN."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to drop privileges")
    cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
           sys.executable, "-m", "monitor", "check", "--timeout", "10"]
    p = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=60, cwd=tmp_path,
                       env={**os.environ, "NO_COLOR": "1"})
    assert p.returncode == UNKNOWN, p.stdout + p.stderr
    assert p.stdout.startswith("IPSEC UNKNOWN - "), p.stdout
    assert "CAP_NET_ADMIN" in p.stdout
    assert "Traceback" not in p.stderr


@pytest.mark.hostkernel
def test_kernel_check_in_throwaway_netns() -> None:
    """A real dump round in an empty namespace we created: OK, zero tunnels, well inside the timeout."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2")
    name = f"mon-check-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        p = run_check("--netns", name, "--json", "--timeout", "10")
        doc = json.loads(p.stdout)
        assert p.returncode == OK, p.stdout + p.stderr
        assert doc["total"] == 0
        assert doc["status"] == "OK"
        p = run_check("--netns", name, "--min-tunnels", "1")
        assert p.returncode == CRITICAL
        assert "expected at least 1" in p.stdout
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_check_names_tunnels_and_lists_configured_children() -> None:
    """With a (fake) charon on a VICI socket: the configured child that is not up is a CRITICAL line named
    ``gw/voice``, the JSON carries each tunnel's ``ike`` block and the IKE status; with the socket gone the
    check is kernel-only and says so in one line."""
    sock_dir = Path(tempfile.mkdtemp(prefix="vici-", dir="/tmp"))  # unix socket paths: at most 107 bytes
    path = sock_dir / "charon.vici"
    fake = FakeCharon(str(path))
    fake.sas = [list_sa()]
    fake.conns = [list_conn(children=("net", "voice"))]
    fake.start()
    try:
        text = run_check("--source", "simulate", "--tunnels", "4", "--vici", str(path))
        doc = json.loads(run_check("--source", "simulate", "--tunnels", "4", "--vici", str(path), "--json").stdout)
    finally:
        fake.stop()
        shutil.rmtree(sock_dir, ignore_errors=True)
    assert text.returncode == CRITICAL, text.stdout
    (line,) = [ln for ln in text.stdout.splitlines() if ln.startswith("DOWN") and "ike:gw:voice" in ln]
    assert "(gw/voice, default, reqid 0," in line, line
    assert "not_initiated" in line
    assert doc["ike"] == {"connected": True, "socket": str(path), "error": None}
    voice = next(t for t in doc["tunnels"] if t["id"] == "ike:gw:voice")
    assert (voice["ike"]["conn"], voice["ike"]["child"]) == ("gw", "voice")
    assert doc["total"] == 5  # 4 simulated tunnels (reqid 1 joined to gw/net, not listed twice) + the configured one
    gone = run_check("--source", "simulate", "--tunnels", "4", "--vici", str(path))
    assert "IKE view unavailable, kernel-only: no VICI socket at" in gone.stdout, gone.stdout
    assert "ike:gw:voice" not in gone.stdout
