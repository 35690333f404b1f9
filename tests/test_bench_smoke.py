"""Smoke run of the decode benchmark (tiny sizes, no timing assertions) so that it cannot rot."""

from __future__ import annotations

import json
from pathlib import Path

from bench import decode_bench


def test_decode_bench_runs_and_reports_both_decoders() -> None:
    """run() on a few messages per mix gives positive rates for ours and pyroute2 on every mix."""
    result = decode_bench.run(n=25, repeats=1, min_time=0.0)
    assert {"newsa_gcm", "newsa_cbc", "expire", "delsa", "newae", "mixed"} == set(result["mixes"])
    for name, mix in result["mixes"].items():
        assert mix["messages"] > 0, name
        assert mix["ours_msgs_per_s"] > 0, name
        assert mix["pyroute2_lazy_msgs_per_s"] > 0, name
        assert mix["pyroute2_get_attr_msgs_per_s"] > 0, name
        assert mix["ratio_vs_lazy"] > 0, name
    assert result["machine"]["cores"] >= 1
    assert "newsa_msgs_per_s" in result["targets"]
    assert "| newsa_gcm |" in decode_bench.format_table(result)


def test_decode_bench_command_writes_json(tmp_path: Path) -> None:
    """The command line entry point writes the JSON results file with the machine description."""
    out = tmp_path / "decode.json"
    assert decode_bench.main(["-n", "10", "--repeats", "1", "--min-time", "0", "--no-pin", "--output", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["benchmark"] == "decode"
    assert data["machine"]["python"]
    assert data["mixes"]["newsa_cbc"]["ours_msgs_per_s"] > 0


def test_history_bench_runs_at_tiny_sizes(tmp_path: Path) -> None:
    """The history benchmark at tiny sizes: both sides of every comparison measured (no timing asserted)."""
    from bench import history_bench

    tmp_path.mkdir(exist_ok=True)
    w = history_bench.bench_writes(2_000, tmp_path)
    assert w["batched_events_per_s"] > 0
    assert w["naive_events_per_s"] > 0
    assert w["paced_events"] == 2_000
    s = history_bench.bench_startup(300, tmp_path)
    assert s["open_and_restore_s"] > 0
    assert s["bare_select_s"] > 0
    q = history_bench.bench_query(3, tmp_path)
    assert q["intervals"] == 3 * 720
    z = history_bench.bench_size(1, tmp_path)
    assert z["events_per_tunnel_day"] == 120
    assert z["bytes_per_tunnel_day"] > 0
