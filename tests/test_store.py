"""The history store on real SQLite files: write, reopen, query, retention, and every way a file can be bad.

The expected values are written out by hand from the batches the tests submit (never read back through
the code under test to build the expectation).
"""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from monitor.errors import HistoryError
from monitor.health.checkpoint import SACheckpoint, TunnelCheckpoint
from monitor.health.model import HealthEvent
from monitor.store import queries
from monitor.store.history import History
from monitor.store.retention import Retention, db_bytes
from monitor.store.schema import DB_NAME, SCHEMA_VERSION, connect, default_state_dir, open_readonly
from monitor.store.writer import Batch

T0 = 1_800_000_000.0
TID = "gw:1:192.0.2.1-198.51.100.7"


def cp(state: str = "up", since: float = T0, nin: int = 100, nout: int = 200, rekeys: int = 0) -> TunnelCheckpoint:
    return TunnelCheckpoint(TID, "gw", state, ("established",), since, since, nin, nout, nin // 10, nout // 10,
                            rekeys, 0, None, 0, 0, 0,
                            (SACheckpoint(0x1001, "192.0.2.1", 50, 1, nin, nin // 10, 0, 0),
                             SACheckpoint(0x2001, "198.51.100.7", 50, 2, nout, nout // 10, 0, 0)))


def changed(seq: int, ts: float, frm: str, to: str, reason: str = "established") -> HealthEvent:
    return HealthEvent(seq, ts, "state_changed", TID, "gw", {"from": frm, "to": to,
                                                          "reasons": [{"code": reason, "text": "x"}]})


def down(seq: int, ts: float, reason: str) -> HealthEvent:
    return HealthEvent(seq, ts, "tunnel_down", TID, "gw", {"reason": reason, "text": "x", "from": "up"})


def write(h: History, *batches: Batch) -> None:
    for b in batches:
        assert h.submit(b)
    h.writer.close()


def test_written_history_comes_back_after_reopening(tmp_path: Path) -> None:
    h = History.open(tmp_path)
    assert h.restored.checkpoints == []
    assert h.restored.seq == 0
    write(h,
          Batch(T0 + 1, [], [cp(since=T0)], []),
          Batch(T0 + 100, [changed(1, T0 + 100, "up", "down", "sa_deleted"), down(2, T0 + 100, "sa_deleted")], [], []),
          Batch(T0 + 160, [changed(3, T0 + 160, "down", "up")], [cp(since=T0 + 160, nin=150, nout=260, rekeys=1)], []))
    again = History.open(tmp_path)
    try:
        assert again.restored.seq == 3
        assert [c.bytes_in for c in again.restored.checkpoints] == [150]
        assert again.restored.checkpoints[0].sas[0] == SACheckpoint(0x1001, "192.0.2.1", 50, 1, 150, 15, 0, 0)
        assert [e["seq"] for e in again.restored.events] == [1, 2, 3]
    finally:
        again.writer.close()
    conn = open_readonly(tmp_path / DB_NAME)
    rows = conn.execute("SELECT state, start, end FROM intervals ORDER BY start").fetchall()
    assert rows == [("up", T0, T0 + 100), ("down", T0 + 100, T0 + 160), ("up", T0 + 160, None)]
    doc = queries.tunnel_history(conn, TID, T0, T0 + 400)
    assert doc is not None
    assert doc["flaps"] == 1
    assert doc["down_reasons"] == {"sa_deleted": 1}
    assert doc["time_in_state"] == {"down": 60.0, "up": 340.0}
    assert doc["longest_outage"] == 60.0
    assert doc["uptime_pct"] == 85.0
    summary = queries.history_summary(conn, T0, T0 + 400)
    assert [(s["id"], s["flaps"], s["uptime_pct"], s["state"]) for s in summary] == [(TID, 1, 85.0, "up")]
    assert queries.tunnel_history(conn, "gw:9:x-y", T0, T0 + 400) is None
    assert [e["seq"] for e in queries.events_since(conn, 1, 10)] == [2, 3]


def test_gone_tunnel_closes_its_interval_and_is_not_restored(tmp_path: Path) -> None:
    h = History.open(tmp_path)
    write(h, Batch(T0, [], [cp()], []), Batch(T0 + 50, [], [], [TID]))
    again = History.open(tmp_path)
    again.writer.close()
    assert again.restored.checkpoints == []
    conn = open_readonly(tmp_path / DB_NAME)
    assert conn.execute("SELECT state, start, end FROM intervals").fetchall() == [("up", T0, T0 + 50)]


def test_rate_points_are_deltas_between_five_minute_points(tmp_path: Path) -> None:
    h = History.open(tmp_path)
    m0 = 6_000_000 * 300.0  # a five-minute boundary
    write(h, Batch(m0 + 10, [], [cp(nin=0, nout=0)], []), Batch(m0 + 20, [], [cp(nin=60, nout=0)], []),
          Batch(m0 + 310, [], [cp(nin=6_060, nout=3_000)], []), Batch(m0 + 910, [], [cp(nin=18_060, nout=3_000)], []))
    conn = open_readonly(tmp_path / DB_NAME)
    # one point per five minutes (the last checkpoint in it wins): 60, 6060, (none), 18060
    # point 1: +6000 B in 300 s; point 3: +12000 B over 600 s
    assert queries.rate_points(conn, TID, m0, m0 + 1200) == [[m0 + 300, 20.0, 10.0], [m0 + 900, 20.0, 0.0]]


def test_corrupt_file_is_a_clear_error_and_left_as_it_was(tmp_path: Path) -> None:
    db = tmp_path / DB_NAME
    db.write_bytes(b"this is not a database, it is a note from an operator\n" * 200)
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    with pytest.raises(HistoryError, match="not a database"):
        History.open(tmp_path)
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before


def test_newer_schema_is_refused_untouched(tmp_path: Path) -> None:
    conn = connect(tmp_path / DB_NAME)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    before = hashlib.sha256((tmp_path / DB_NAME).read_bytes()).hexdigest()
    with pytest.raises(HistoryError, match=f"schema {SCHEMA_VERSION + 1}, newer"):
        History.open(tmp_path)
    assert hashlib.sha256((tmp_path / DB_NAME).read_bytes()).hexdigest() == before


def test_state_dir_that_cannot_be_created_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(HistoryError, match="cannot open the history database"):
        History.open(blocker / "state")


def test_damaged_checkpoint_rows_are_skipped_and_counted(tmp_path: Path) -> None:
    h = History.open(tmp_path)
    write(h, Batch(T0, [], [cp()], []))
    conn = sqlite3.connect(tmp_path / DB_NAME)
    conn.execute("INSERT INTO tunnels VALUES ('bad1', 'gw', '{\"id\": 5}', 0, NULL)")
    conn.execute("INSERT INTO tunnels VALUES ('bad2', 'gw', 'not json', 0, NULL)")
    conn.commit()
    conn.close()
    again = History.open(tmp_path)
    again.writer.close()
    assert [c.id for c in again.restored.checkpoints] == [TID]
    assert again.restored.skipped == 2


def test_retention_by_age_keeps_open_intervals_and_live_checkpoints(tmp_path: Path) -> None:
    h = History.open(tmp_path, Retention(max_age=1000.0))
    old = T0 - 5000
    write(h, Batch(old, [changed(1, old, "down", "up"), changed(2, old + 5, "up", "idle")], [cp(since=old)], []),
          Batch(T0, [changed(3, T0 - 10, "idle", "up")], [], []))
    conn = sqlite3.connect(tmp_path / DB_NAME)
    assert conn.execute("SELECT seq FROM events").fetchall() == [(3,)]
    # [old, old+5) up is past max_age; idle ended within it; the open interval always stays
    assert conn.execute("SELECT state, end FROM intervals ORDER BY start").fetchall() == [("idle", T0 - 10),
                                                                                         ("up", None)]
    assert conn.execute("SELECT count(*) FROM tunnels").fetchone() == (1,)


def test_retention_by_size_drops_oldest_events(tmp_path: Path) -> None:
    h = History.open(tmp_path, Retention(max_bytes=1 << 20))
    pad = "x" * 1000
    events = [HealthEvent(i, T0 + i, "sa_added", TID, "gw", {"pad": pad}) for i in range(1, 3001)]  # ~3.5 MB
    write(h, *(Batch(T0 + i, events[i:i + 500], [], []) for i in range(0, 3000, 500)))
    assert h.writer.pruned_rows > 0
    assert h.writer.written_events == 3000
    conn = connect(tmp_path / DB_NAME)
    assert db_bytes(conn) <= 1 << 20
    seqs = [r[0] for r in conn.execute("SELECT seq FROM events ORDER BY seq")]
    assert seqs[0] > 1
    assert seqs == list(range(seqs[0], 3001))


def test_default_state_dir_order() -> None:
    assert default_state_dir({"MONITOR_STATE_DIR": "/a", "STATE_DIRECTORY": "/b"}) == Path("/a")
    assert default_state_dir({"STATE_DIRECTORY": "/b:/c"}) == Path("/b")


def test_parse_when() -> None:
    assert queries.parse_duration("90s") == 90.0
    assert queries.parse_duration("7d") == 7 * 86400.0
    assert queries.parse_when("24h", T0) == T0 - 86400.0
    assert queries.parse_when(str(T0 - 5), T0) == T0 - 5
    with pytest.raises(ValueError, match=r"could not convert|not a duration"):
        queries.parse_duration("-5m")


WRITER = r"""
import sys, time
from pathlib import Path
from monitor.health.model import HealthEvent
from monitor.store.history import History
from monitor.store.writer import Batch
h = History.open(Path(sys.argv[1]))
seq = h.restored.seq
print("ready", seq, flush=True)
pad = {"spi": "0x00001001", "note": "y" * 200}
while True:
    evs = [HealthEvent(seq + i, time.time(), "sa_added", f"gw:{(seq + i) % 50}:a-b", "gw", pad) for i in range(1, 201)]
    seq += 200
    h.submit(Batch(time.time(), evs, [], []))
    time.sleep(0.01)
"""


def test_kill_9_during_heavy_writes_never_corrupts_and_loses_only_the_last_moments(tmp_path: Path) -> None:
    """A writer killed with SIGKILL ten times while writing ~20,000 events/s: each time the file passes
    ``PRAGMA integrity_check``, its events are contiguous from 1, and the next run continues the seq."""
    last = 0
    for round_ in range(10):
        p = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
        assert p.stdout is not None
        line = p.stdout.readline().split()
        assert line[0] == "ready", line
        assert int(line[1]) == last, (round_, line, last)
        time.sleep(1.0 + 0.1 * round_)  # a second or so of writing, a different moment each round
        killed_at = time.time()
        p.kill()
        p.wait()
        p.stdout.close()
        conn = sqlite3.connect(tmp_path / DB_NAME)
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        n, lo, hi, newest = conn.execute("SELECT count(*), min(seq), max(seq), max(ts) FROM events").fetchone()
        conn.close()
        assert lo == 1, (round_, lo)
        assert n == hi, (round_, n, lo, hi)  # no hole
        assert hi > last, (round_, hi, last)  # this run's writes landed
        # only the last moments are lost: by design a 0.5 s flush plus a 0.2 s linger (under a second, as
        # measured alone); the bound leaves room for a loaded 2-core CI machine starving the writer thread
        assert killed_at - newest < 3.0, killed_at - newest
        last = hi
