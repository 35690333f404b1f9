"""``--events-log FILE|-`` (issue 16 item 2): every health event as one JSON line for log pipelines.

The real ``monitor serve`` process; its lines are checked against the event schema and against what the
same process serves on ``/api/v1/events``. A full disk (``/dev/full``) loses the log, never the monitor.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.test_web_fakes import validate


def _start(*args: str, stdout: Any = subprocess.DEVNULL) -> tuple[subprocess.Popen[str], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONITOR_")}
    proc = subprocess.Popen([sys.executable, "-m", "monitor", "serve", "--source", "simulate", "--tunnels", "8",
                             "--speed", "60", "--port", "0", *args], stderr=subprocess.PIPE, stdout=stdout,
                            text=True, env=env)
    assert proc.stderr is not None
    early: list[str] = []
    for _ in range(20):  # log lines may come first (the first events are written before the port opens)
        early.append(proc.stderr.readline())
        m = re.search(r"listening on (http://127\.0\.0\.1:\d+/)", early[-1])
        if m:
            EARLY[proc.pid] = "".join(early)
            return proc, m.group(1)
    raise AssertionError("".join(early))


EARLY: dict[int, str] = {}


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=15) == 0
    assert proc.stderr is not None
    rest = proc.stderr.read()
    proc.stderr.close()
    return EARLY.pop(proc.pid, "") + rest


def _rest_events(base: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(base + "api/v1/events?limit=10000", timeout=5) as r:
        return list(json.loads(r.read())["events"])


def test_events_log_file_holds_the_served_events(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    proc, base = _start("--events-log", str(path))
    try:
        deadline = time.monotonic() + 30
        while len(path.read_text().splitlines()) < 30:
            assert time.monotonic() < deadline, "fewer than 30 events logged in 30 s"
            time.sleep(0.2)
        served = {e["seq"]: e for e in _rest_events(base)}
    finally:
        rest = _stop(proc)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    for ev in lines:
        validate("event.json", ev)
    seqs = [ev["seq"] for ev in lines]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # every event, in order, none twice
    common = [ev for ev in lines if ev["seq"] in served]
    assert len(common) >= 30
    assert all(ev == served[ev["seq"]] for ev in common)
    assert "Traceback" not in rest


def test_events_log_to_stdout() -> None:
    proc, _ = _start("--events-log", "-", stdout=subprocess.PIPE)
    assert proc.stdout is not None
    first = json.loads(proc.stdout.readline())
    validate("event.json", first)
    _stop(proc)
    proc.stdout.close()


def test_a_full_disk_loses_the_log_not_the_monitor() -> None:
    proc, base = _start("--events-log", "/dev/full")
    try:
        deadline = time.monotonic() + 30
        while len(_rest_events(base)) < 10:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        with urllib.request.urlopen(base + "healthz", timeout=5) as r:
            assert json.loads(r.read())["status"] == "ok"
    finally:
        rest = _stop(proc)
    warnings = [line for line in rest.splitlines() if "events log /dev/full: write failed" in line]
    assert len(warnings) == 1, rest  # said once, not once per batch
