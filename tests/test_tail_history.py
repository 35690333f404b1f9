"""``monitor tail --since DURATION`` starts from the server's history (a real serve with a real store)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any

from serve_process import Serve, until

CAPTURE = Path(__file__).parent / "data" / "vm-run-2026-11-26" / "monitor-a.pcap"  # records of 2026-11-26


def get(base: str, path: str) -> Any:
    with urllib.request.urlopen(base + path.lstrip("/"), timeout=10) as r:
        return json.loads(r.read())


def tail_lines(base: str, *args: str, want: int, wait: float) -> list[dict[str, Any]]:
    """Run ``monitor tail --json`` until it printed ``want`` lines or ``wait`` seconds passed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONITOR_")}
    url = base.replace("http://", "ws://") + "ws"
    p = subprocess.Popen([sys.executable, "-m", "monitor", "tail", "--url", url, "--json", *args],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert p.stdout is not None
    out: list[dict[str, Any]] = []
    done = threading.Event()

    def read() -> None:  # a thread: select() cannot see lines already in the pipe's read buffer
        assert p.stdout is not None
        for line in p.stdout:
            out.append(json.loads(line))
            if len(out) >= want:
                break
        done.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        done.wait(wait)
    finally:
        p.terminate()
        p.wait(10)
        reader.join(10)
        p.stdout.close()
        if p.stderr is not None:
            p.stderr.close()
    return out


def test_tail_since_prints_the_stored_window(tmp_path: Path) -> None:
    s = Serve("--source", f"replay:{CAPTURE}", "--speed", "0", "--state-dir", str(tmp_path))
    try:
        until("the replay recorded", lambda: (h := get(s.base, "/healthz"))["source"]["state"] == "finished"
              and h["history"]["written_events"] == h["seq"] and h["seq"] > 20)
        stored = get(s.base, "/api/v1/events?since=0&limit=10000")["events"]
        week_old = tail_lines(s.base, "--since", "30d", want=len(stored), wait=60)
        assert [e["seq"] for e in week_old] == [e["seq"] for e in stored]
        assert week_old == stored
        # the capture is a week old: the last hour holds none of it, and -n 10 would have printed 10
        assert tail_lines(s.base, "--since", "1h", want=1, wait=5) == []
        assert len(tail_lines(s.base, want=10, wait=60)) == 10
        newest = get(s.base, f"/api/v1/events?from={stored[-5]['ts']}")["events"]
        assert [e["seq"] for e in newest] == [e["seq"] for e in stored if e["ts"] >= stored[-5]["ts"]]
    finally:
        s.stop()
