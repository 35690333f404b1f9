"""Ghost tunnels on the host kernel (issue 12 items 1 and 7): real policies in a throwaway netns, the real
``monitor serve`` process reading them over netlink, REST as the user reads it.

A tunnel made of policies only (the kernel here has no ESP, so no SA can ever come: exactly libreswan's
placeholder policy while it negotiates, or a connection removed before it came up) is ``down`` while its
policies exist and leaves as soon as they are deleted, instead of staying ``down`` for ``forget_after`` or
forever. Before the fix it stayed: the forget timer was never set once its policies went.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.serve_process import Serve, until

pytestmark = pytest.mark.hostkernel


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def _tunnels(base: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(base + "api/v1/tunnels", timeout=5) as r:
        return list(json.loads(r.read())["tunnels"])


def test_policy_only_tunnel_leaves_with_its_policies(tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2")
    ns = f"mon-ghost-{os.getpid()}"
    _ip("netns", "add", ns)
    serve: Serve | None = None
    try:
        for d in ("out", "in", "fwd"):
            src, dst = ("10.1.0.0/16", "10.2.0.0/16") if d == "out" else ("10.2.0.0/16", "10.1.0.0/16")
            tsrc, tdst = ("192.0.2.1", "192.0.2.2") if d == "out" else ("192.0.2.2", "192.0.2.1")
            _ip("-n", ns, "xfrm", "policy", "add", "src", src, "dst", dst, "dir", d,
                "tmpl", "src", tsrc, "dst", tdst, "proto", "esp", "reqid", "7", "mode", "tunnel")
        config = tmp_path / "monitor.toml"
        config.write_text("interval = 1\n[health]\nforget_after = 3600\n")
        serve = Serve("--config", str(config), "--netns", ns)
        base = serve.base
        (t,) = until("the policy-only tunnel", lambda: _tunnels(base))
        assert t["state"] == "down"
        assert t["reqid"] == 7
        assert [r["code"] for r in t["reasons"]] == ["no_sa"]
        for d in ("out", "in", "fwd"):
            src, dst = ("10.1.0.0/16", "10.2.0.0/16") if d == "out" else ("10.2.0.0/16", "10.1.0.0/16")
            _ip("-n", ns, "xfrm", "policy", "delete", "src", src, "dst", dst, "dir", d)
        # gone within a few dump intervals, not after forget_after (an hour)
        until("the tunnel to leave", lambda: _tunnels(base) == [], timeout=15)
    finally:
        if serve is not None:
            serve.stop()
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
