"""No log line holds a token (issue 11 item 4), whatever aiohttp logs.

Before the fix a request line over 8,190 bytes with ``?token=`` was logged at the default level by
aiohttp's server logger, token included. The test runs the real ``monitor serve`` process, sends such a
request over a raw socket, and reads everything the process wrote.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time

from monitor.serve.redact import REDACTED, SecretFilter

TOKEN = "s3cret-Token-0123456789"


def test_filter_redacts_message_args_and_exceptions() -> None:
    f = SecretFilter([TOKEN])
    record = logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1, "bad line %r", (f"GET /?token={TOKEN}",),
                               None)
    try:
        raise ValueError(f"Authorization: Bearer {TOKEN}")
    except ValueError:
        record.exc_info = sys.exc_info()
    assert f.filter(record)
    text = logging.Formatter("%(message)s").format(record)
    assert TOKEN not in text
    assert REDACTED in text
    assert f.redact("GET /ws?token=abc&x=1 HTTP/1.1") == f"GET /ws?token={REDACTED}&x=1 HTTP/1.1"


def test_serve_never_logs_the_token_of_an_oversized_request_line() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONITOR_")}
    env["MONITOR_TOKEN"] = TOKEN
    proc = subprocess.Popen([sys.executable, "-m", "monitor", "serve", "--source", "simulate", "--port", "0",
                             "--tunnels", "2"], stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        m = re.search(r"listening on http://127\.0\.0\.1:(\d+)/", line)
        assert m, line
        port = int(m.group(1))
        for path in (f"/api/v1/tunnels?pad={'x' * 9000}&token={TOKEN}", f"/ws?token={TOKEN}&pad={'y' * 9000}"):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
                s.settimeout(5)
                reply = s.recv(200)
            assert re.match(rb"HTTP/1\.[01] 4\d\d ", reply), reply  # refused; the process keeps serving
        time.sleep(0.5)  # let the server write its log lines before we stop it (it logs synchronously)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
        log = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
    assert "Got more than 8190 bytes" in log, log[:2000]  # aiohttp did log the oversized line...
    assert TOKEN not in log  # ...with the token redacted
    assert f"token={REDACTED}" in log
