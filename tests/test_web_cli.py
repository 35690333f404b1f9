"""`monitor serve` as a user runs it: a real process (uvloop), a real port, signals, exit codes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import orjson

from tests.test_web_fakes import validate


def test_serve_simulate_healthz_and_sigint() -> None:
    """`monitor serve --source simulate --port 0` prints its URL, answers /healthz, and exits 0 on SIGINT."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONITOR_")}
    with subprocess.Popen([sys.executable, "-m", "monitor", "serve", "--source", "simulate", "--port", "0",
                           "--tunnels", "4"], stderr=subprocess.PIPE, text=True, env=env) as proc:
        _drive(proc)


def _drive(proc: subprocess.Popen[str]) -> None:
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        m = re.search(r"listening on (http://127\.0\.0\.1:\d+/)", line)
        assert m, f"unexpected first line: {line!r}"
        deadline = time.monotonic() + 15
        while True:
            with urllib.request.urlopen(m.group(1) + "healthz", timeout=5) as r:
                body = orjson.loads(r.read())
            if body["netns"]:
                break
            assert time.monotonic() < deadline, f"no netns in /healthz within 15 s: {body}"
            time.sleep(0.2)
        validate("healthz.json", body)
        assert "sim" in body["netns"], body["netns"]  # the simulated fleet's namespace was seen
        assert body["status"] == "ok"
        assert body["source"]["kind"] == "simulate"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
        rest = proc.stderr.read()
        assert "Traceback" not in rest, rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_refuses_public_bind_without_token() -> None:
    """--host 0.0.0.0 without MONITOR_TOKEN: exit 2 and a message saying why, nothing listens."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONITOR_")}
    r = subprocess.run([sys.executable, "-m", "monitor", "serve", "--host", "0.0.0.0", "--source", "simulate"],
                       capture_output=True, text=True, env=env, timeout=30, check=False)
    assert r.returncode == 2
    assert "MONITOR_TOKEN" in r.stderr
    assert "Traceback" not in r.stderr


def test_serve_missing_replay_file_is_a_clear_error(tmp_path: object) -> None:
    """A replay source naming a missing file exits 2 with the file name."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONITOR_")}
    r = subprocess.run([sys.executable, "-m", "monitor", "serve", "--source", "replay:/nonexistent/x.pcap",
                        "--port", "0"], capture_output=True, text=True, env=env, timeout=30, check=False)
    assert r.returncode == 2, r.stderr
    assert "/nonexistent/x.pcap" in r.stderr
    assert "Traceback" not in r.stderr
