"""Smoke runs of the benchmark harness (tiny sizes, seconds): it must keep producing well-formed results.

No timing is asserted (the machine is shared and noisy); what is asserted is that every benchmark runs
end to end on the real components, measures what it claims to (counts, SAs held, events received,
snapshot size) and that ``bench.run`` turns the results into a targets table.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bench import fanout_bench, metrics_bench, refresh_bench, run, storm_bench
from bench.common import dump_records, fleet_sa, patch_counters, write_result
from monitor.wire import xfrm as X
from monitor.wire.decode import decode_datagram
from monitor.wire.encode import encode
from monitor.wire.events import NlHeader, SAAdded

REPO = Path(__file__).resolve().parent.parent


def test_patched_counters_equal_a_fresh_encoding() -> None:
    """The steady-refresh dump patches curlft in place; that must be what encoding the grown SA gives."""
    rec = next(iter(dump_records(1)))
    sa = fleet_sa(0)
    grown = sa._replace(cur=sa.cur._replace(bytes=sa.cur.bytes + 5000, packets=sa.cur.packets + 7))
    expected = encode(SAAdded(NlHeader(X.XFRM_MSG_NEWSA, X.NLM_F_MULTI, 1, 7777), grown))
    assert expected == patch_counters(rec, 5000, 7)
    ev = decode_datagram(patch_counters(rec, 5000, 7))[0]
    assert isinstance(ev, SAAdded)
    assert ev.sa.cur.bytes == sa.cur.bytes + 5000


def test_refresh_smoke() -> None:
    """200 SAs: both refreshes hold every SA, the steady one changes every tunnel, RSS is measured."""
    r = refresh_bench.run(n_sas=200, repeats=1, rss=True)
    assert r["check"]["sas_after_first"] == 200
    assert r["check"]["tunnels_after_first"] == 100
    assert r["check"]["sas_after_steady"] == 200
    assert r["check"]["dirty_after_steady"] == 100
    assert r["check"]["malformed"] == 0
    assert r["check"]["dumps"] == 2
    assert r["check"]["sample_tunnel_rate_in_bps"] > 0
    assert r["rss"]["sas"] == 200
    assert r["rss"]["rss_after"] > 0
    for key in ("header_walk", "decode_only", "first_load", "steady_refresh"):
        assert r[key]["best_s"] > 0
    assert r["pyroute2_subset"]["sas"] > 0


@pytest.mark.hostkernel
def test_refresh_kernel_smoke() -> None:
    """A real GETSA dump of 300 larval ALLOCSPI SAs in a throwaway netns, which is gone afterwards."""
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("needs root and ip (netns)")
    r = refresh_bench.run_kernel(300, repeats=1)
    assert "error" not in r, r
    assert r["larval_sas"] == 300
    assert r["mismatches"] == 0
    assert r["decoded_events"] >= 300
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert r["netns"] not in listed


def test_storm_smoke() -> None:
    """A 50-tunnel fleet: 5 rekeys (30 netlink events) and 15 ACQUIREs go through the real Daemon."""
    r = storm_bench.run(tunnels=50, speed=1000.0)
    rekey, acq = r["storms"]["rekey"], r["storms"]["acquire"]
    assert rekey["netlink_events"] == 30
    assert acq["netlink_events"] == 15
    for e in (rekey, acq):
        for mode in ("realtime", "flat_out"):
            assert e[mode]["health_events"] > 0
            assert e[mode]["malformed"] == 0
            assert e[mode]["loop_lag_ms"]["count"] > 0
    # every rekey completes, in both runs
    assert rekey["realtime"]["health_events"] == rekey["flat_out"]["health_events"]


def test_fanout_smoke() -> None:
    """Real server and client processes: 3 clients (+1 stalled) get every event; a snapshot of 40 tunnels."""
    sizes: dict[str, Any] = {"a": (3, 1, 40.0, 0.6, 0, None), "d": (2, 0, 40.0, 1.5, 20, 0.2)}
    r = fanout_bench.run("quick", ["a", "d"], sizes)
    a, d = r["scenarios"]["a"], r["scenarios"]["d"]
    assert "error" not in a, a
    assert "error" not in d, d
    assert a["clients_result"]["finished"] == 3
    sent = a["server"]["sent"]
    assert sent > 0
    # each healthy client received every event plus bench_end, in order
    assert a["clients_result"]["events_received"] == 3 * (sent + 1)
    assert a["clients_result"]["dropped"] == 0
    assert a["server"]["rss_connected"] > 0
    assert d["clients_result"]["snapshot"]["tunnels"] == 20
    assert set(r["targets"]) == {"a_p99_ms", "a_cpu_fraction", "d_longest_stall_ms"}
    assert r["targets"]["a_cpu_fraction"]["value"] > 0


def test_render_targets_table(tmp_path: Path) -> None:
    """bench.run renders a met / NOT met row per target, keeps text outside its markers, writes summary.json."""
    results = tmp_path / "results"
    r = refresh_bench.run(n_sas=100, repeats=1, rss=False)
    write_result("refresh", {"benchmark": "refresh", "params": {"quick": True}, "refresh": r}, results)
    md = tmp_path / "RESULTS.md"
    md.write_text(f"# Results\n\nhand-written intro\n\n{run.BEGIN}\nold\n{run.END}\n\n## Profiles\nkept\n")
    run.render(results, md)
    text = md.read_text()
    assert "hand-written intro" in text
    assert "## Profiles\nkept" in text
    assert "\nold\n" not in text
    assert "2 refresh: first load" in text
    assert "not run (no results file)" in text  # decode, storm, fanout, vm, profiles are missing here
    summary = json.loads((results / "summary.json").read_text())
    first = next(row for row in summary if row["item"] == "2 refresh: first load")
    # met is the target applied to this run's own figure: CPU seconds scaled to 200k SAs <= 2 s
    cpu_200k = r["first_load"]["cpu_best_s"] * 200_000 / r["sas"]
    assert first["met"] is (cpu_200k <= 2.0), (first, cpu_200k)


def test_metrics_smoke(tmp_path: Path) -> None:
    """The /metrics bench scrapes the real correlator through the streamed gzip path, checks the body against
    prometheus_client, measures the old shape beside it, and bench.run renders its rows (not judged: small)."""
    res = metrics_bench.run_one(300, 1, reference=True)
    a = res["all"]
    assert a["reference_identical"] is True
    assert a["series"] >= 300 * 11
    assert 0 < a["wire_bytes"] < a["bytes"] < a["before"]["bytes"]  # gzip; and the one-hot lines are gone
    assert res["none"]["series"] < 100
    assert a["cpu_s"] > 0
    assert a["before"]["cpu_s"] > 0
    results = tmp_path / "results"
    write_result("metrics", {"params": {"quick": True}, "sizes": [res]}, results)
    md = tmp_path / "RESULTS.md"
    run.render(results, md)
    rows = [r for r in json.loads((results / "summary.json").read_text()) if r["item"] == "/metrics"]
    assert len(rows) == 3
    assert all(r["met"] is None and "not the target size" in r["measured"] for r in rows)
    assert "| 300 | all |" in md.read_text()


def test_vm_guest_script_parses() -> None:
    """The guest script is valid bash (it only runs inside the VM)."""
    out = subprocess.run(["bash", "-n", str(REPO / "bench" / "vm_xfrm_monitor.sh")], capture_output=True, text=True,
                         check=False)
    assert out.returncode == 0, out.stderr


def test_refresh_fastpath_smoke() -> None:
    """Issue 15 item 1 at 400 SAs: raw recv loop, fast path on/off (same tunnels), the stall runs, the rows."""
    from bench import refresh_fastpath

    f = refresh_fastpath.run_fastpath(list(dump_records(400)), repeats=1)
    assert f["sas"] == 400
    assert f["raw_recv_cpu_s"][0] > 0
    assert f["tenth"]["same_tunnels_on_off"]
    assert f["all"]["same_tunnels_on_off"]
    assert 300 <= f["tenth"]["skipped_last"] < 400  # about 90% skipped: the seeded 10% changed
    assert f["all"]["skipped_last"] == 0
    for key in ("tenth", "all", "tenth_unsliced"):
        assert f["stall"][key]["probes"] > 0
        assert f["stall"][key]["dump_end_ms"] is not None
    rows = run._fastpath_rows(f)
    assert [r[1] for r in rows][:2] == ["<= 3x the raw recv loop (CPU)", "<= 6x the raw recv loop (CPU)"]
