"""A full disk under the history store (a real, small tmpfs): writes fail cleanly and resume with space.

Needs root (mount); CI runs as root.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitor.health.model import HealthEvent
from monitor.store.history import History
from monitor.store.writer import Batch

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "fs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def events(start: int, n: int) -> list[HealthEvent]:
    pad = {"pad": "z" * 400}
    return [HealthEvent(i, 1.8e9 + i, "sa_added", "gw:1:a-b", "gw", pad) for i in range(start, start + n)]


def wait_for(what: str, cond: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(cond) and cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_full_disk_rolls_back_logs_once_and_resumes(small_fs: Path, caplog: pytest.LogCaptureFixture) -> None:
    h = History.open(small_fs)
    w = h.writer
    filler = small_fs / "filler"
    with open(filler, "wb") as f:  # leave ~256 KiB
        f.write(b"\0" * (2 * 1024 * 1024 - 256 * 1024))
    seq = 1
    for _ in range(40):  # ~8 MB of events: far more than fits
        h.submit(Batch(1.8e9 + seq, events(seq, 500), [], []))
        seq += 500
    wait_for("a write error", lambda: w.write_errors > 0)
    wait_for("the queue drained", lambda: w.status()["queued"] == 0)
    st = w.status()
    assert st["ok"] is False
    assert "full" in (st["error"] or "")
    assert st["dropped_events"] > 0
    assert sum("database or disk is full" in r.getMessage() for r in caplog.records) == 1  # once, not per batch
    filler.unlink()
    before = w.written_events
    h.submit(Batch(1.8e9 + seq, events(seq, 100), [], []))
    wait_for("a write after space came back", lambda: w.written_events > before)
    assert w.status()["ok"] is True
    h.writer.close()
    conn = sqlite3.connect(small_fs / "history.sqlite3")
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert conn.execute("SELECT max(seq) FROM events").fetchone() == (seq + 99,)
    conn.close()
