"""Test helper: a real ``monitor serve --source simulate`` in a subprocess on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SimServer:
    """``monitor serve`` on the simulator, started and stopped like a user would (a process, SIGTERM)."""

    def __init__(self, port: int, log: Path, *, speed: float = 20.0, tunnels: int = 24, seed: int = 1,
                 token: str | None = None, env: dict[str, str] | None = None) -> None:
        self.port, self.log_path, self.token, self.extra_env = port, log, token, env or {}
        self.args = [sys.executable, "-m", "monitor", "serve", "--source", "simulate", "--host", "127.0.0.1",
                     "--port", str(port), "--speed", str(speed), "--tunnels", str(tunnels), "--seed", str(seed)]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> SimServer:
        """Start the process and wait until ``/healthz`` answers."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("MONITOR_")}
        if self.token:
            env["MONITOR_TOKEN"] = self.token
        env.update(self.extra_env)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited with {self.proc.returncode}: {self.log_path.read_text()[-2000:]}")
            try:
                self.get("/healthz")
                return self
            except OSError as exc:
                last = exc
                time.sleep(0.1)
        raise RuntimeError(f"serve did not answer /healthz within {timeout} s ({last}): "
                           f"{self.log_path.read_text()[-2000:]}")

    def get(self, path: str) -> Any:
        """GET a JSON document (503 from /healthz is still a JSON answer)."""
        req = urllib.request.Request(self.base + path)
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 503:
                return json.loads(exc.read())
            raise

    def events(self) -> list[dict[str, Any]]:
        """Every event the server still holds."""
        out: list[dict[str, Any]] = []
        since = 0
        while True:
            body = self.get(f"/api/v1/events?since={since}&limit=10000")
            out += body["events"]
            if not body.get("more") or not body["events"]:
                return out
            since = body["events"][-1]["seq"]

    def wait_events(self, n: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Wait until the server has produced at least ``n`` events."""
        deadline = time.monotonic() + timeout
        evs: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            evs = self.events()
            if len(evs) >= n:
                return evs
            time.sleep(0.2)
        raise AssertionError(f"only {len(evs)} events after {timeout} s: {[e['type'] for e in evs]}")

    def stop(self) -> int:
        """SIGTERM and wait; returns the exit status."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        code = self.proc.returncode
        self.proc = None
        return code
