"""Test helper: the real ``monitor serve`` as a child process, read like a user reads it.

``start`` returns once the process says "listening" (log lines may come first: it opens its source before
it listens) and ``stop`` sends SIGINT and returns everything it wrote to stderr. ``until`` polls a condition
and says what it last saw when it gives up.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

LISTENING = re.compile(r"listening on (https?://127\.0\.0\.1:\d+/)")


class Serve:
    """One ``monitor serve`` process: ``base`` is its URL, ``stderr_text()`` what it wrote."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, stdout: Any = subprocess.DEVNULL) -> None:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("MONITOR_")}
        self.proc = subprocess.Popen([sys.executable, "-m", "monitor", "serve", "--port", "0", *args],
                                     stderr=subprocess.PIPE, stdout=stdout, text=True, env={**clean, **(env or {})})
        assert self.proc.stderr is not None
        self.early: list[str] = []
        for _ in range(50):
            line = self.proc.stderr.readline()
            self.early.append(line)
            m = LISTENING.search(line)
            if m:
                self.base = m.group(1)
                return
            if not line:
                break
        self.stop()
        raise AssertionError("serve did not listen: " + "".join(self.early))

    def stop(self, timeout: float = 15.0) -> str:
        """SIGINT, wait, close the pipes; returns all of stderr. Asserts a clean exit when it was running."""
        rest = ""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                assert self.proc.wait(timeout=timeout) == 0
            finally:
                if self.proc.poll() is None:
                    self.proc.kill()
                    self.proc.wait()
        for pipe in (self.proc.stderr, self.proc.stdout):
            if pipe is not None:
                if pipe is self.proc.stderr:
                    rest = pipe.read()
                pipe.close()
        return "".join(self.early) + rest


def until(what: str, cond: Callable[[], T], timeout: float = 30.0) -> T:
    """Poll ``cond`` every 0.2 s until it is truthy; fail with ``what`` and the last value after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = cond()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; last seen: {last!r}")
