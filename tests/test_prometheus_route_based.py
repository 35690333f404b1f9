"""Route-based tunnels through a real Prometheus (issue 12 item 4): tunnels that differ only in if_id or mark.

A throwaway netns holds four policy-only tunnels with the same reqid pair, outer addresses and 0.0.0.0/0
selectors (xfrm interfaces, VTI marks): two differ only in ``if_id`` (201, 202), two only in ``mark`` (0x10,
0x20). A real ``monitor serve`` watches it and a real Prometheus scrapes it every second. Before the fix the
pairs exported identical label sets (Prometheus keeps one series, or rejects the scrape as duplicates); now each
tunnel has its own series, labelled with its id (which names its if_id / mark: ``:if201``, ``:m10``); since issue
15 the if_id / mark labels are on ``ipsec_tunnel_info``, joined on (instance, id).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.serve_process import Serve, until

pytestmark = [pytest.mark.hostkernel, pytest.mark.external]

PROMETHEUS = shutil.which("prometheus")
LOCAL, PEER = "192.0.2.1", "198.51.100.7"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _query(base: str, q: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': q})}"
    with urllib.request.urlopen(url, timeout=5) as r:
        return list(json.loads(r.read())["data"]["result"])


def _policies(ns: str, reqid: int, extra: list[str]) -> None:
    for d, (s, t) in (("out", (LOCAL, PEER)), ("in", (PEER, LOCAL)), ("fwd", (PEER, LOCAL))):
        _ip("-n", ns, "xfrm", "policy", "add", "src", "0.0.0.0/0", "dst", "0.0.0.0/0", "dir", d, *extra,
            "tmpl", "src", s, "dst", t, "proto", "esp", "reqid", str(reqid), "mode", "tunnel")


def test_tunnels_differing_only_in_if_id_or_mark_are_separate_series(tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2")
    if PROMETHEUS is None:
        if os.environ.get("CI"):
            pytest.fail("prometheus is not installed (scripts/test.sh installs Debian's prometheus)")
        pytest.skip("prometheus not installed (Debian package prometheus)")
    ns = f"mon-rb-{os.getpid()}"
    _ip("netns", "add", ns)
    serve: Serve | None = None
    prom: subprocess.Popen[bytes] | None = None
    try:
        for if_id in (201, 202):
            _policies(ns, 1, ["if_id", str(if_id)])
        for mark in ("0x10", "0x20"):
            _policies(ns, 2, ["mark", mark, "mask", "0xffffffff"])
        config = tmp_path / "monitor.toml"
        config.write_text("interval = 0.5\n")
        serve = Serve("--config", str(config), "--netns", ns, "--no-history")
        base_url = serve.base

        def four_tunnels() -> list[dict[str, Any]] | None:
            with urllib.request.urlopen(base_url + "api/v1/tunnels", timeout=5) as r:
                ts = list(json.loads(r.read())["tunnels"])
            return ts if len(ts) == 4 else None

        rest = until("four tunnels over REST", four_tunnels)
        port = _free_port()
        cfg = tmp_path / "prometheus.yml"
        cfg.write_text("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: rb\n    static_configs:\n"
                       f"      - targets: ['{serve.base.split('//')[1].rstrip('/')}']\n")
        log = tmp_path / "prometheus.log"
        with log.open("wb") as logf:
            prom = subprocess.Popen([PROMETHEUS, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'data'}",
                                     f"--web.listen-address=127.0.0.1:{port}"], stdout=logf, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"

        def stored() -> list[dict[str, Any]] | None:
            assert prom is not None
            assert prom.poll() is None, log.read_text()[-2000:]
            try:
                # issue 15: the state series carry the id; if_id/mark/reqid/addresses come from the info join
                got = _query(base, '(ipsec_tunnel_state{job="rb"} == 1) * on (instance, id) '
                                   'group_left (netns, reqid, local, remote, if_id, mark) ipsec_tunnel_info{job="rb"}')
                bare = _query(base, 'ipsec_tunnel_state{job="rb"} == 1')
            except OSError:
                return None
            return got if len(got) == 4 and len(bare) == 4 else None

        series = until("four stored state series", stored, 60)
        targets = json.loads(urllib.request.urlopen(f"{base}/api/v1/targets", timeout=5).read())
        (target,) = targets["data"]["activeTargets"]
        assert target["health"] == "up", target
        assert not target["lastError"], target  # no "duplicate sample" rejection
    finally:
        if prom is not None:
            prom.terminate()
            prom.wait(10)
        if serve is not None:
            serve.stop()
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
    labels = [s["metric"] for s in series]
    # the four state series differ by id alone (the per-tunnel series carry no other tunnel label)
    assert len({m["id"] for m in labels}) == 4
    assert sorted(m["id"] for m in labels) == sorted(t["id"] for t in rest)
    # (Prometheus stores no empty label: an unset if_id or mark is absent)
    assert sorted((m["reqid"], m.get("if_id", ""), m.get("mark", "")) for m in labels) == [
        ("1", "201", ""), ("1", "202", ""), ("2", "", "16"), ("2", "", "32")], labels
    # without the id and if_id/mark labels the pairs would be one series each
    assert len({(m["reqid"], m["local"], m["remote"]) for m in labels}) == 2
    assert all(m["state"] == "down" for m in labels)  # policies and no SA (the host kernel has no ESP)
