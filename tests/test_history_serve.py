"""History across restarts of the real ``monitor serve`` process (simulated fleet, a real SQLite file).

Stopped cleanly and restarted, then killed with SIGKILL and restarted: the file stays sound, the event
``seq`` continues, old events are served by ``/api/v1/events?since=``, no tunnel total falls below what
was recorded, and the history endpoints answer from what the earlier runs recorded.
"""

from __future__ import annotations

import itertools
import json
import re
import sqlite3
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from serve_process import Serve, until
from test_web_fakes import validate

SIM = ("--source", "simulate", "--tunnels", "8", "--speed", "30", "--seed", "7")


def get(base: str, path: str) -> Any:
    with urllib.request.urlopen(base + path.lstrip("/"), timeout=10) as r:
        return json.loads(r.read())


def totals(base: str) -> dict[str, tuple[int, int]]:
    return {t["id"]: (t["bytes_in"], t["bytes_out"]) for t in get(base, "/api/v1/tunnels")["tunnels"]}


def stored_checkpoints(db: Path) -> dict[str, tuple[int, int]]:
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        rows = conn.execute("SELECT id, checkpoint FROM tunnels WHERE removed IS NULL").fetchall()
    finally:
        conn.close()
    return {tid: (json.loads(b)["bytes_in"], json.loads(b)["bytes_out"]) for tid, b in rows}


def not_below(after: dict[str, tuple[int, int]], before: dict[str, tuple[int, int]]) -> list[str]:
    return [f"{tid}: {before[tid]} -> {after[tid]}" for tid in before
            if tid in after and (after[tid][0] < before[tid][0] or after[tid][1] < before[tid][1])]


def test_history_survives_a_clean_stop_and_a_kill_9(tmp_path: Path) -> None:
    db = tmp_path / "history.sqlite3"
    s = Serve(*SIM, "--state-dir", str(tmp_path))
    try:
        until("events and traffic", lambda: get(s.base, "/healthz")["seq"] > 30
              and sum(a + b for a, b in totals(s.base).values()) > 0)
        until("a checkpoint written", lambda: get(s.base, "/healthz")["history"]["written_checkpoints"] >= 8)
        seen = totals(s.base)
    finally:
        s.stop()
    stopped = stored_checkpoints(db)
    assert not not_below(stopped, seen), "the final checkpoint is older than what REST showed"
    conn = sqlite3.connect(db)
    last_seq = conn.execute("SELECT max(seq) FROM events").fetchone()[0]
    conn.close()

    # 1. after a clean stop
    s = Serve(*SIM, "--state-dir", str(tmp_path))
    try:
        h = get(s.base, "/healthz")
        assert h["history"]["ok"], h["history"]
        assert h["history"]["restored_tunnels"] == len(stopped), h["history"]
        assert h["seq"] >= last_seq
        old = get(s.base, "/api/v1/events?since=0&limit=10000")["events"]
        assert [e["seq"] for e in old[:last_seq]] == list(range(1, last_seq + 1))
        until("new events", lambda: get(s.base, f"/api/v1/events?since={last_seq}")["events"])
        after = until("totals restored", lambda: totals(s.base))
        assert not not_below(after, stopped)
        until("a checkpoint written", lambda: get(s.base, "/healthz")["history"]["written_checkpoints"] >= 8)
        summary = get(s.base, "/api/v1/history?from=1h")
        validate("rest-history.json", summary)
        validate("healthz.json", get(s.base, "/healthz"))
        assert {t["id"] for t in summary["tunnels"]} >= set(stopped)
        one = sorted(stopped)[0]
        hist = get(s.base, f"/api/v1/tunnels/{one}/history?from=1h")
        assert hist["id"] == one
        assert hist["intervals"]
        assert hist["covered"] > 0
        s.proc.kill()  # 2. SIGKILL mid-run
        s.proc.wait()
    finally:
        s.stop()
    killed = stored_checkpoints(db)
    conn = sqlite3.connect(db)
    seqs = [r[0] for r in conn.execute("SELECT seq FROM events ORDER BY seq")]
    reserved = int(conn.execute("SELECT value FROM meta WHERE key = 'seq_reserved'").fetchone()[0])
    conn.close()
    top = seqs[-1]
    # each run's events are contiguous; a restart continues above the seq reserved by the run before
    jumps = [(a, b) for a, b in itertools.pairwise(seqs) if b != a + 1]
    assert len(jumps) <= 1, jumps
    assert reserved > top

    s = Serve(*SIM, "--state-dir", str(tmp_path))
    try:
        assert get(s.base, "/healthz")["seq"] >= top
        fresh = until("new events", lambda: get(s.base, f"/api/v1/events?since={top}")["events"])
        # above the reservation: no seq a client may have seen before the kill is given to another event
        assert fresh[0]["seq"] == reserved + 1, (fresh[0]["seq"], reserved)
        after = until("totals restored", lambda: totals(s.base))
        assert not not_below(after, killed)
    finally:
        s.stop()


def test_no_history_and_an_unusable_store_leave_the_monitor_running(tmp_path: Path) -> None:
    s = Serve(*SIM, "--no-history", "--state-dir", str(tmp_path))
    try:
        h = get(s.base, "/healthz")
        validate("healthz.json", h)
        assert h["history"] == {"enabled": False}
        with pytest.raises(urllib.error.HTTPError) as info:
            get(s.base, "/api/v1/history")
        assert info.value.code == 503
        info.value.close()
    finally:
        s.stop()
    assert not (tmp_path / "history.sqlite3").exists()

    (tmp_path / "history.sqlite3").write_bytes(b"garbage " * 1000)
    s = Serve(*SIM, "--state-dir", str(tmp_path))
    try:
        h = until("events", lambda: (d := get(s.base, "/healthz"))["seq"] > 5 and d)
        assert h["status"] == "ok"
        validate("healthz.json", h)
        assert h["history"]["ok"] is False
        assert "not a database" in h["history"]["error"]
        metrics = urllib.request.urlopen(s.base + "metrics", timeout=10).read().decode()
        assert re.search(r"^ipsec_monitor_history_up 0(\.0)?$", metrics, re.MULTILINE), metrics[-600:]
    finally:
        err = s.stop()
    assert "running without history" in err
    assert "not a database" in err
