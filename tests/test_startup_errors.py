"""Start-up errors of every command: one line, exit code 2, no secret, never "listening" first.

Issue 11 items 6 and 7. Before the fixes: a config file with invalid UTF-8 gave a 23-line traceback, ``nan``
and ``inf`` were accepted as thresholds and intervals, a mistyped token was echoed; ``serve`` with a missing
netns, no permission or a non-pcap replay file printed "listening on", then a timestamped ERROR, and exited 1.
Real processes, real files, real namespaces (or their absence) and a real privilege drop.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SECRET = "tok-3141592653589793"


def _run(*args: str, cwd: Path | None = None, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONITOR_")}
    return subprocess.run([*prefix, sys.executable, "-m", "monitor", *args], capture_output=True, text=True,
                          env=env, timeout=60, check=False, cwd=cwd)


def _one_line_error(r: subprocess.CompletedProcess[str], command: str, *needles: str) -> str:
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"monitor {command}: error: "), lines[0]
    assert "listening" not in r.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(("text", "needles"), [
    (b'interval = 2.0\ntitle = "\xff\xfe"\n', ("UTF-8",)),
    (b"interval = inf\n", ("interval", "finite")),
    (b"counters_interval = nan\n", ("counters_interval", "finite")),
    (b"stall_timeout = inf\n", ("stall_timeout",)),
    (b"[health]\nidle_after = nan\n", ("idle_after", "finite")),
    (b"[health]\nforget_after = inf\n", ("forget_after",)),
    (f"token = {SECRET.split('-')[1]}\n".encode(), ("token", "hidden")),
])
def test_bad_config_files_are_one_clear_line(tmp_path: Path, text: bytes, needles: tuple[str, ...]) -> None:
    config = tmp_path / "monitor.toml"
    config.write_bytes(text)
    line = _one_line_error(_run("serve", "--config", str(config), "--source", "simulate", "--port", "0"), "serve",
                           *needles)
    assert SECRET.split("-")[1] not in line


def test_replay_of_a_file_that_is_not_a_capture(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.pcap"
    bogus.write_text("this is not a pcap file\n" * 10)
    _one_line_error(_run("serve", "--source", f"replay:{bogus}", "--port", "0"), "serve", str(bogus))
    _one_line_error(_run("replay", str(bogus)), "replay")


@pytest.mark.hostkernel
def test_missing_netns_is_one_line_for_serve_and_record(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to open a named netns")
    name = f"mon-absent-{os.getpid()}"
    _one_line_error(_run("serve", "--netns", name, "--port", "0"), "serve", name)
    out = str(tmp_path / "x.pcap")
    _one_line_error(_run("record", "--netns", name, "--duration", "1", "--out", out), "record", name)


@pytest.mark.hostkernel
def test_no_permission_is_one_line_naming_the_capability() -> None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to drop privileges")
    drop = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all")
    _one_line_error(_run("serve", "--port", "0", prefix=drop, cwd=Path("/")), "serve", "CAP_NET_ADMIN")
