"""``monitor tail`` as a user runs it: in a tmux terminal, against a real ``monitor serve`` on the simulator.

The server is restarted in the middle; the tail must reconnect by itself, print every event of both
server runs exactly once (contiguous ``seq`` per run), and exit 0 without a traceback on Ctrl-C.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.simserver import SimServer, free_port

pytestmark = pytest.mark.external

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
REPO = Path(__file__).resolve().parent.parent
LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}  #(\d+) ")


class Tmux:
    """A private tmux server (own socket, own config) with one shell window."""

    def __init__(self, tmp: Path) -> None:
        self.sock = f"mon-tail-{os.getpid()}"
        conf = tmp / "tmux.conf"
        conf.write_text("set -g history-limit 200000\n")
        self.base = ["tmux", "-L", self.sock, "-f", str(conf)]
        subprocess.run([*self.base, "new-session", "-d", "-s", "t", "-x", "220", "-y", "50",
                        "bash --norc --noprofile"], check=True)

    def send(self, *keys: str) -> None:
        """tmux send-keys."""
        subprocess.run([*self.base, "send-keys", "-t", "t", *keys], check=True)

    def capture(self, escapes: bool = False) -> str:
        """The whole pane history (``-e``: with colour escapes)."""
        args = [*self.base, "capture-pane", "-p", "-J", "-S", "-", "-t", "t"] + (["-e"] if escapes else [])
        return subprocess.run(args, check=True, capture_output=True, text=True).stdout

    def wait_for(self, what: str, cond: Callable[[str], bool], timeout: float = 60.0) -> str:
        """Poll the pane until ``cond(text)``; fail with what the pane showed."""
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = self.capture()
            if cond(text):
                return text
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}; the pane shows:\n{text[-4000:]}")

    def kill(self) -> None:
        """Stop this private tmux server."""
        subprocess.run([*self.base, "kill-server"], check=False, capture_output=True)


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    """A tmux server of our own."""
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    t = Tmux(tmp_path)
    try:
        yield t
    finally:
        t.kill()


def seqs(text: str) -> list[int]:
    """The event seq of every tail line in the pane, in order."""
    return [int(m.group(1)) for ln in text.splitlines() if (m := LINE.match(ln))]


def runs(values: list[int]) -> list[list[int]]:
    """Split at each point where seq goes back (a restarted server counts from 1 again)."""
    out: list[list[int]] = [[]]
    for v in values:
        if out[-1] and v <= out[-1][-1]:
            out.append([])
        out[-1].append(v)
    return out


def test_tail_in_tmux_survives_server_restart(tmux: Tmux, tmp_path: Path) -> None:
    """Lines appear; a server restart loses and repeats nothing; Ctrl-C exits 0 without a traceback."""
    port = free_port()
    log = tmp_path / "serve.log"
    first = SimServer(port, log, speed=20.0).start()
    second: SimServer | None = None
    try:
        first.wait_events(5)
        cmd = (f"cd {shlex.quote(str(REPO))} && {shlex.quote(sys.executable)} -m monitor tail "
               f"--url ws://127.0.0.1:{port}/ws -n 100000; echo TAIL-EXIT=$?")
        tmux.send(cmd, "Enter")
        tmux.wait_for("first tail lines", lambda t: len(seqs(t)) >= 20)
        held = first.events()  # what the first server had produced just before it stops
        assert first.stop() == 0
        tmux.wait_for("the disconnect notice", lambda t: "reconnecting" in t or "cannot reach" in t)
        time.sleep(1.0)  # the server is really gone for a while; tail keeps retrying
        second = SimServer(port, log, speed=20.0).start()
        before = len(seqs(tmux.capture()))
        tmux.wait_for("lines from the restarted server",
                      lambda t: len(runs(seqs(t))) >= 2 and len(runs(seqs(t))[-1]) >= 10, timeout=90)
        time.sleep(1.0)
        held_second = second.events()
        text = tmux.wait_for("the tail to catch up with the second server",
                             lambda t: runs(seqs(t))[-1][-1] >= held_second[-1]["seq"])
        parts = runs(seqs(text))
        assert len(parts) == 2, f"expected two server runs, got {[(p[0], p[-1]) for p in parts]}"
        for i, part in enumerate(parts):
            assert part == list(range(1, part[-1] + 1)), f"run {i}: missing or repeated seq: {part}"
        assert parts[0][-1] >= held[-1]["seq"], "lines the first server held were never printed"
        assert len(seqs(text)) > before
        coloured = tmux.capture(escapes=True)
        assert "\x1b[" in coloured, "no colour on a TTY"
        tmux.send("C-c")
        text = tmux.wait_for("tail to exit", lambda t: re.search(r"TAIL-EXIT=\d", t) is not None, timeout=20)
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "tail-tmux.txt").write_text(text)
        assert "TAIL-EXIT=0" in text, text[-2000:]
        assert "Traceback" not in text
    finally:
        first.stop()
        if second is not None:
            second.stop()
