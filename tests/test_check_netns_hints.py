"""``monitor check`` raises WARNING for a namespace hint (issue 12 item 8): the real kernel path.

A throwaway netns holds one connection's policies (no SA: the host kernel has no ESP) whose local selector
is in ``10.100.0.0/16``, and four local ranges towards one peer. ``--config`` with the FAQ's
``reserved_local_ranges``/``max_local_ranges`` makes the check WARNING with both hints; without it the same
namespace is OK. ``down`` is not a crit/warn state here, so only the hints can raise the status.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.test_check import OK, WARNING, run_check

pytestmark = pytest.mark.hostkernel

PEER, LOCAL = "198.51.100.7", "192.0.2.1"
LOCAL_NETS = ("10.100.8.0/24", "10.1.0.0/16", "10.2.0.0/16", "10.3.0.0/16")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def test_namespace_hints_make_check_warning(tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2")
    ns = f"mon-chk-{os.getpid()}"
    _ip("netns", "add", ns)
    try:
        for n, net in enumerate(LOCAL_NETS):
            _ip("-n", ns, "xfrm", "policy", "add", "src", net, "dst", "10.192.0.0/12", "dir", "out",
                "tmpl", "src", LOCAL, "dst", PEER, "proto", "esp", "reqid", str(n + 1), "mode", "tunnel")
        config = tmp_path / "monitor.toml"
        config.write_text('[health]\nreserved_local_ranges = ["10.100.0.0/16"]\nmax_local_ranges = 3\n')
        common = ("--netns", ns, "--warn-states", "idle", "--crit-states", "expiring", "--json")
        plain = run_check(*common)
        assert plain.returncode == OK, plain.stdout + plain.stderr
        assert json.loads(plain.stdout)["netns_hints"] == []
        p = run_check(*common, "--config", str(config))
        assert p.returncode == WARNING, p.stdout + p.stderr
        doc = json.loads(p.stdout)
        assert sorted(h["code"] for h in doc["netns_hints"]) == ["reserved_range", "too_many_local_ranges"], doc
        assert all(h["netns"] == ns for h in doc["netns_hints"])
        text = run_check(*common[:-1], "--config", str(config))
        assert "namespace hints" in text.stdout.splitlines()[0]
        assert f"WARNING   namespace {ns}: reserved_range: Local selector 10.100.8.0/24" in text.stdout
        bad = tmp_path / "bad.toml"
        bad.write_text("[health]\nno_such_setting = 1\n")
        assert run_check(*common, "--config", str(bad)).returncode == 3  # UNKNOWN, one clear line
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
