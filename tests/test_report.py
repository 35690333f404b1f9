"""``monitor report`` as a user runs it, on a history file written through the store's writer."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from test_store import TID, Batch, changed, cp, down

from monitor.health.model import HealthEvent
from monitor.store.history import History


def report(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONITOR_")}
    return subprocess.run([sys.executable, "-m", "monitor", "report", *args], capture_output=True, text=True,
                          env=env, timeout=60, check=False)


def test_report_formats_agree_on_a_known_history(tmp_path: Path) -> None:
    t0 = time.time() - 3600  # one hour ago: up 30 min, down 10 min (one flap), up since
    h = History.open(tmp_path)
    for b in (Batch(t0, [], [cp(since=t0)], []),
              Batch(t0 + 1800, [changed(1, t0 + 1800, "up", "down", "dpd"), down(2, t0 + 1800, "dpd")], [], []),
              Batch(t0 + 2400, [changed(3, t0 + 2400, "down", "up")], [], [])):
        h.submit(b)
    h.writer.close()
    frm = str(t0)
    to = str(t0 + 3600)
    r = report("--state-dir", str(tmp_path), "--since", frm, "--until", to, "--format", "json")
    assert r.returncode == 0, r.stderr
    (row,) = json.loads(r.stdout)["tunnels"]
    assert (row["id"], row["flaps"], row["downtime"], row["longest_outage"]) == (TID, 1, 600.0, 600.0)
    assert abs(row["uptime_pct"] - 100 * 3000 / 3600) < 1e-3
    assert row["down_reasons"] == {"dpd": 1}
    assert row["state"] == "up"
    r = report("--state-dir", str(tmp_path), "--since", frm, "--until", to, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert rows == [{"id": TID, "state": "up", "uptime_pct": "83.333", "flaps": "1", "downtime": "600.0",
                     "longest_outage": "600.0", "down_reasons": "dpd=1"}]
    r = report("--state-dir", str(tmp_path), "--since", frm, "--until", to)
    line = next(x for x in r.stdout.splitlines() if x.startswith(TID))
    assert line.split() == [TID, "up", "83.33%", "1", "10m00s", "10m00s", "dpd", "x1"]


def test_report_without_history_is_one_line_exit_2(tmp_path: Path) -> None:
    r = report("--state-dir", str(tmp_path / "none"))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"monitor report: error: no history database at {tmp_path}/none/"
                                             "history.sqlite3"]
    r = report("--state-dir", str(tmp_path), "--since", "yesterday")
    assert r.returncode == 2
    assert "--since" in r.stderr


CAPTURE = Path(__file__).parent / "data" / "strongswan-rekey-nlmon.pcap"
CAPTURE_TID = "default:1:192.0.2.1-192.0.2.2"  # the capture's only tunnel (docs: tests/data/README-capture.md)


def check(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONITOR_")}
    # down is neither warning nor critical here, so only --max-flaps can raise the status
    return subprocess.run([sys.executable, "-m", "monitor", "check", "--source", f"replay:{CAPTURE}",
                           "--crit-states", "expiring", "--warn-states", "errors", *args],
                          capture_output=True, text=True, env=env, timeout=60, check=False)


def test_check_max_flaps_warns_on_a_flapping_tunnel(tmp_path: Path) -> None:
    now = time.time()
    h = History.open(tmp_path)
    downs = [HealthEvent(i, now - 3000 + 600 * i, "tunnel_down", CAPTURE_TID, "default",
                         {"reason": "dpd", "text": "x", "from": "up"}) for i in range(1, 4)]
    old = HealthEvent(4, now - 7200, "tunnel_down", CAPTURE_TID, "default", {"reason": "dpd"})  # outside 1h
    h.submit(Batch(now, [old, *downs], [], []))
    h.writer.close()
    assert check().returncode == 0
    r = check("--max-flaps", "2", "--state-dir", str(tmp_path))
    assert r.returncode == 1, r.stdout
    assert "went down 3 times in the last 1h" in r.stdout
    assert check("--max-flaps", "3", "--state-dir", str(tmp_path)).returncode == 0
    assert check("--max-flaps", "2", "--window", "3h", "--state-dir", str(tmp_path)).returncode == 1
    r = check("--max-flaps", "2", "--state-dir", str(tmp_path / "none"))
    assert r.returncode == 3
    assert r.stdout.startswith("IPSEC UNKNOWN - no history database at")
