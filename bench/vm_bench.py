"""Against the C tool: ``ip xfrm monitor`` and our ``KernelSource`` on the same burst, in the VM.

    python -m bench.vm_bench            # N = 1000 SAs (3,000 events), writes bench/results/vm.json
    python -m bench.vm_bench --quick    # N = 300

Boots Debian's kernel under QEMU (``tests/vm/vm.py: run_in_vm``; TCG, no KVM, so everything in the
guest, the C tool included, runs 10-50x slower than on the host) and runs ``bench/vm_xfrm_monitor.sh``:
one ``ip -batch`` adds N SAs, updates them and deletes them (3N XFRM notifications), while
``ip xfrm monitor`` and our consumer (``--guest-consume``: ``KernelSource`` -> ``Pipeline.feed``, i.e.
receive, decode and correlate; it counts SA notifications, ignoring dump records) listen.

Reported for each consumer: events received, seconds from the burst's start to its last event, and
CPU seconds. Target (issue 6, item 5): our rate >= 1/3 of the C tool's, with no loss (no ENOBUFS, all
3N events). If the VM harness is missing or too slow this says so instead of inventing a number.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import write_result

__all__ = ["consume", "run"]

SCRIPT = Path(__file__).with_name("vm_xfrm_monitor.sh")


async def consume(expect: int, ready: Path | None, timeout: float = 300.0) -> dict[str, Any]:
    """In the guest: count SA notifications through KernelSource + Pipeline until ``expect`` arrived."""
    from monitor.health.correlate import Correlator
    from monitor.health.pipeline import Pipeline
    from monitor.sources.items import Control, Datagram
    from monitor.sources.kernel import KernelSource
    from monitor.wire import xfrm as X
    from monitor.wire.decode import iter_messages

    kinds = {X.XFRM_MSG_NEWSA: "add", X.XFRM_MSG_UPDSA: "update", X.XFRM_MSG_DELSA: "delete"}
    source = KernelSource(netns=("default",), interval=3600.0)
    pipeline = Pipeline(Correlator())
    counts = {"add": 0, "update": 0, "delete": 0}
    n = 0
    first = last = None
    recv_first = recv_last = None
    per_second: dict[int, int] = {}
    enobufs = 0
    deadline = time.monotonic() + timeout
    it = source.items()
    ready_written = False
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    while n < expect and time.monotonic() < deadline:
        try:
            item = await asyncio.wait_for(it.__anext__(), max(0.1, deadline - time.monotonic()))
        except (TimeoutError, StopAsyncIteration):
            break
        now = time.time()
        if isinstance(item, Control):
            enobufs += item.kind == "enobufs"
        elif isinstance(item, Datagram) and not item.outgoing:
            for nl, _, _ in iter_messages(item.data):
                kind = kinds.get(nl.type)
                if kind is not None and not nl.flags & X.NLM_F_MULTI:  # notifications, not dump records
                    counts[kind] += 1
                    n += 1
                    first = first or now
                    last = now
                    recv_first = recv_first or item.ts
                    recv_last = item.ts
                    per_second[int(item.ts)] = per_second.get(int(item.ts), 0) + 1
        pipeline.feed(item, now)
        if not ready_written and ready is not None:
            ready.write_text("ready\n")  # the socket joined its groups before the first item (our GETSA)
            ready_written = True
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    await it.aclose()
    return {"events": n, "counts": counts, "first": first, "last": last, "recv_first": recv_first,
            "recv_last": recv_last, "received_per_second": per_second, "enobufs": enobufs,
            "malformed": pipeline.stats.malformed, "decoded_events": pipeline.stats.events,
            "cpu_s": (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)}


def run(n: int = 1000, timeout: float = 900.0) -> dict[str, Any]:
    """Boot the VM, run the guest script, and compare the two consumers."""
    try:
        from tests.vm.vm import PROJECT_DIR, run_in_vm, vm_available
    except ImportError as exc:
        return {"skipped": f"VM harness not importable: {exc}"}
    try:
        reason = vm_available()
    except Exception as exc:  # VMHarnessMissing under CI
        return {"error": str(exc)}
    if reason:
        return {"skipped": reason}
    rw = Path(tempfile.mkdtemp(prefix="vmbench-", dir="/tmp"))
    t0 = time.perf_counter()
    try:
        run_in_vm(SCRIPT, rw, timeout, args=[rw, PROJECT_DIR, sys.executable, str(n)])
    except subprocess.TimeoutExpired:
        return {"error": f"VM did not finish within {timeout:.0f} s (artifacts in {rw})"}
    vm_s = time.perf_counter() - t0
    done = (rw / "done").read_text().strip() if (rw / "done").exists() else "no done file"
    if done != "ok":
        log = (rw / "guest.log").read_text(errors="replace")[-1500:] if (rw / "guest.log").exists() else ""
        return {"error": f"guest script: {done}; {log}", "artifacts": str(rw)}
    g = json.loads((rw / "result.json").read_text())
    ours: dict[str, Any] = json.loads((rw / "ours.json").read_text()) if (rw / "ours.json").exists() else {}
    start = g["burst_start"]
    ip_s = (g["ip"]["done"] - start) if g["ip"]["done"] else None
    ours_s = (ours["last"] - start) if ours.get("last") else None
    res: dict[str, Any] = {
        "n": n, "expected": g["expected"], "vm_seconds": vm_s, "guest_kernel": g["kernel"],
        "batch_seconds": g["batch_end"] - start,
        "ip": {"events": g["ip"]["events"], "seconds": ip_s, "cpu_s": g["ip"]["cpu_s"],
               "first_event_s": (g["ip"]["first"] - start) if g["ip"].get("first") else None},
        "ours": {"events": ours.get("events", 0), "seconds": ours_s, "cpu_s": ours.get("cpu_s"),
                 "first_event_s": (ours["first"] - start) if ours.get("first") else None,
                 "first_recv_s": (ours["recv_first"] - start) if ours.get("recv_first") else None,
                 "received_per_second": {str(int(k) - int(start)): v
                                         for k, v in (ours.get("received_per_second") or {}).items()},
                 "enobufs": ours.get("enobufs"), "counts": ours.get("counts"), "malformed": ours.get("malformed")},
        "artifacts": str(rw),
    }
    res["ip_rate"] = g["ip"]["events"] / ip_s if ip_s else None
    res["ours_rate"] = ours.get("events", 0) / ours_s if ours_s else None
    res["rate_ratio"] = res["ours_rate"] / res["ip_rate"] if res["ours_rate"] and res["ip_rate"] else None
    no_loss = ours.get("events") == g["expected"] and not ours.get("enobufs")
    res["met"] = bool(no_loss and res["rate_ratio"] is not None and res["rate_ratio"] >= 1 / 3)
    return res


def format_table(result: dict[str, Any]) -> str:
    """Markdown rows for RESULTS.md."""
    v = result["vm"]
    if "ip" not in v:
        return f"not measured: {v.get('error') or v.get('skipped')}"
    rows = ["| consumer | events (of expected) | s from burst start to last event | events/s | CPU s | ENOBUFS |",
            "|---|---:|---:|---:|---:|---:|"]
    for key, label in (("ip", "ip xfrm monitor (C)"), ("ours", "KernelSource + Pipeline (ours)")):
        c = v[key]
        rate = v["ip_rate"] if key == "ip" else v["ours_rate"]
        rows.append(f"| {label} | {c['events']:,} ({v['expected']:,}) | {c['seconds'] or 0:.2f} | "
                    f"{rate or 0:,.0f} | {c['cpu_s']} | {c.get('enobufs', '')} |")
    rows.append(f"\n`ip -batch` itself took {v['batch_seconds']:.2f} s in the guest (kernel {v['guest_kernel']}, TCG).")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point (host side; ``--guest-consume`` runs inside the VM)."""
    parser = argparse.ArgumentParser(prog="python -m bench.vm_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 300")
    parser.add_argument("-n", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--guest-consume", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--expect", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--ready", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.guest_consume:
        res = asyncio.run(consume(args.expect, args.ready))
        assert args.out is not None
        args.out.write_text(json.dumps(res) + "\n")
        return 0
    n = args.n or (300 if args.quick else 1000)
    result: dict[str, Any] = {"benchmark": "vm", "params": {"n": n, "quick": args.quick}, "vm": run(n, args.timeout)}
    path = write_result("vm", result)
    print(format_table(result))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
