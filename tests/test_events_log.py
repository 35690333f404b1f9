"""``--events-log FILE|-`` (issue 16 item 2): every health event as one JSON line for log pipelines.

The real ``monitor serve`` process; its lines are checked against the event schema and against what the
same process serves on ``/api/v1/events``. A full disk (``/dev/full``) loses the log, never the monitor.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.serve_process import Serve
from tests.test_web_fakes import validate


def _start(*args: str, stdout: Any = subprocess.DEVNULL) -> Serve:
    return Serve("--source", "simulate", "--tunnels", "8", "--speed", "60", *args, stdout=stdout)


def _rest_events(base: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(base + "api/v1/events?limit=10000", timeout=5) as r:
        return list(json.loads(r.read())["events"])


def test_events_log_file_holds_the_served_events(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    serve = _start("--events-log", str(path))
    base = serve.base
    try:
        deadline = time.monotonic() + 30
        while len(path.read_text().splitlines()) < 30:
            assert time.monotonic() < deadline, "fewer than 30 events logged in 30 s"
            time.sleep(0.2)
        served = {e["seq"]: e for e in _rest_events(base)}
    finally:
        rest = serve.stop()
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
    serve = _start("--events-log", "-", stdout=subprocess.PIPE)
    assert serve.proc.stdout is not None
    first = json.loads(serve.proc.stdout.readline())
    validate("event.json", first)
    serve.stop()


def test_a_full_disk_loses_the_log_not_the_monitor() -> None:
    serve = _start("--events-log", "/dev/full")
    base = serve.base
    try:
        deadline = time.monotonic() + 30
        while len(_rest_events(base)) < 10:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        with urllib.request.urlopen(base + "healthz", timeout=5) as r:
            assert json.loads(r.read())["status"] == "ok"
    finally:
        rest = serve.stop()
    warnings = [line for line in rest.splitlines() if "events log /dev/full: write failed" in line]
    assert len(warnings) == 1, rest  # said once, not once per batch
