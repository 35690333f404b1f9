"""Full-state refresh at scale: a GETSA dump of 200,000 SAs (100,000 tunnels) decoded and correlated.

    python -m bench.refresh_bench            # 200k SAs, writes bench/results/refresh.json
    python -m bench.refresh_bench --quick    # 50k SAs
    python -m bench.refresh_bench --kernel   # also the host-kernel variant (root; throwaway netns)

What is timed, on one pinned core, on the same bytes in the same run:

* **baseline**: a header-only walk over the dump's datagrams (``nlmsghdr`` length/type of every
  record, which any netlink consumer has to do) and pyroute2's generic ``Marshal.parse`` on a subset;
* **first load**: an empty ``Correlator`` fed the whole dump through ``monitor.health.pipeline.Pipeline``
  (our GETSA request, the 32 KiB reply datagrams, NLMSG_DONE): decode, tunnel creation, quiet load;
  timed twice, interleaved: with CPython's default GC, and with the daemon's GC policy
  (``monitor.serve.daemon.LoadGc.update`` after every item, exactly as ``Daemon._feed`` calls it);
* **steady-state refresh**: the next dump of the same SAs with every SA's ``curlft`` bytes/packets
  grown (patched into the encoded records), so every SA and tunnel is updated and rates computed.

RSS per SA held is measured in a fresh subprocess: VmRSS after imports and an empty pipeline, then
again after a dump of N SAs was generated and fed datagram by datagram (the bytes are dropped as it
goes, so what remains is the correlator's state).

The kernel variant (``--kernel``) creates ``ip netns add bench-<pid>``, allocates N larval SAs there
with ``XFRM_MSG_ALLOCSPI`` (the host kernel has no ESP, but larval states need none), raises the
netns's ``net.core.xfrm_acq_expires`` so they live through the run, and times real GETSA dumps:
raw ``recv`` (+ header walk to find NLMSG_DONE) as the baseline, and ``recv`` + ``Pipeline.feed``.
The netns is deleted afterwards, also on error.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import (
    DUMP_SEQ,
    NOW0,
    cpu_seconds,
    dump_items,
    dump_records,
    pack_records,
    patch_counters,
    pin_one_cpu,
    rss_bytes,
    run_queue_wait,
    write_result,
)
from bench.refresh_fastpath import run_fastpath
from monitor.health.correlate import Correlator
from monitor.health.pipeline import Pipeline
from monitor.serve.load_gc import LoadGc
from monitor.sources.items import Datagram
from monitor.wire import xfrm as X
from monitor.wire.decode import decode_datagram
from monitor.wire.encode import encode_allocspi, encode_dump_request
from monitor.wire.events import SA, LifetimeCfg, LifetimeCur, NlHeader, Selector, Stats

__all__ = ["TARGET_RSS_PER_SA", "TARGET_SECONDS", "allocspi_request", "header_walk", "run", "run_kernel"]

TARGET_SECONDS = 2.0  # per refresh of 200k SAs, one core
TARGET_RSS_PER_SA = 1536  # bytes
TARGET_SAS = 200_000


def header_walk(datagrams: Sequence[bytes]) -> int:
    """The baseline: walk every ``nlmsghdr`` of every datagram (length, type); returns the record count."""
    unpack = X.NLMSGHDR.unpack_from
    n = 0
    for d in datagrams:
        off, size = 0, len(d)
        while off + 16 <= size:
            length, _mtype, _flags, _seq, _pid = unpack(d, off)
            n += 1
            off += (length + 3) & ~3
    return n


def _feed(pipeline: Pipeline, items: Sequence[Datagram], now: float) -> None:
    feed = pipeline.feed
    for item in items:
        feed(item, now)


def _feed_daemon_gc(pipeline: Pipeline, items: Sequence[Datagram], now: float) -> None:
    """``_feed`` with the daemon's GC policy applied after every item, as ``Daemon._feed`` does."""
    feed = pipeline.feed
    policy = LoadGc()
    update = policy.update
    core = pipeline.correlator
    try:
        for item in items:
            feed(item, now)
            update(core, time.monotonic())
    finally:
        policy.release()  # unfreeze: the next round starts from the same GC state


def _timed(fn: Any) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one call."""
    gc.collect()
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def _pyroute2_rate(datagrams: Sequence[bytes], count: int) -> float | None:
    try:
        from bench.pyroute2_baseline import MarshalXfrm
    except ImportError:  # pragma: no cover - pyroute2 is a dependency
        return None
    marshal = MarshalXfrm()
    t0 = time.perf_counter()
    n = sum(1 for d in datagrams for _ in marshal.parse(d))
    elapsed = time.perf_counter() - t0
    assert n == count, (n, count)
    return count / elapsed


def run(n_sas: int = TARGET_SAS, repeats: int = 3, rss: bool = True) -> dict[str, Any]:
    """Build the dump, time baseline / first load / steady refresh; measure RSS per SA in a subprocess.

    Args:
        n_sas: SAs in the dump (two per tunnel).
        repeats: rounds per timing (the best and the median are reported).
        rss: also run the RSS subprocess.
    """
    wait0 = run_queue_wait()
    t0 = time.perf_counter()
    records = list(dump_records(n_sas))
    encode_s = time.perf_counter() - t0
    dump1 = pack_records(records)
    dumps2 = [pack_records([patch_counters(r, 1_000_000 * k, 1000 * k) for r in records])
              for k in range(1, repeats + 1)]
    nbytes = sum(len(d) for d in dump1)
    del records
    items1 = dump_items(dump1, ts=NOW0)

    walk = [_timed(lambda: header_walk(dump1)) for _ in range(repeats)]
    decode_only = [_timed(lambda: [decode_datagram(d) for d in dump1]) for _ in range(repeats)]
    first: list[tuple[float, float]] = []
    first_gc: list[tuple[float, float]] = []
    steady: list[tuple[float, float]] = []
    check: dict[str, Any] = {}
    for r in range(repeats):
        # the daemon's path (GC held off during the initial load, then frozen: monitor.serve.daemon.LoadGc),
        # interleaved with the plain one so both see the same machine load
        p_gc = Pipeline(Correlator())
        first_gc.append(_timed(lambda p=p_gc: _feed_daemon_gc(p, items1, NOW0)))
        if r == 0:
            check["sas_after_first_daemon_gc"] = p_gc.correlator.sa_count
        del p_gc
        pipeline = Pipeline(Correlator())
        first.append(_timed(lambda p=pipeline: _feed(p, items1, NOW0)))
        c = pipeline.correlator
        if r == 0:
            check["sas_after_first"] = c.sa_count
            check["tunnels_after_first"] = len(c.tunnel_ids())
            c.drain_events()
            c.take_dirty()
        # one steady refresh per pipeline (counters grow by a different amount each round)
        items2 = dump_items(dumps2[r], ts=NOW0 + 10)
        steady.append(_timed(lambda p=pipeline, it=items2: _feed(p, it, NOW0 + 10)))
        if r == 0:
            check["sas_after_steady"] = c.sa_count
            check["dirty_after_steady"] = len(c.take_dirty())
            check["malformed"] = pipeline.stats.malformed
            check["dumps"] = pipeline.stats.netns["bench"].dumps
            tid = next(iter(c.tunnel_ids()))
            tj = c.tunnel_json(tid, NOW0 + 10) or {}
            check["sample_tunnel_bytes_in"] = tj.get("bytes_in")
            check["sample_tunnel_rate_in_bps"] = tj.get("rate_in_bps")
        del pipeline, c
    subset = dump1[: max(1, len(dump1) // 10)]
    sub_count = header_walk(subset)
    p2 = _pyroute2_rate(subset, sub_count)

    def stat(pairs: list[tuple[float, float]]) -> dict[str, float]:
        walls = sorted(w for w, _ in pairs)
        return {"best_s": walls[0], "median_s": walls[len(walls) // 2], "cpu_best_s": min(c for _, c in pairs)}

    res: dict[str, Any] = {
        "sas": n_sas,
        "tunnels": n_sas // 2,
        "datagrams": len(dump1),
        "bytes": nbytes,
        "encode_s": encode_s,
        "header_walk": stat(walk),
        "decode_only": stat(decode_only),
        "first_load": stat(first),
        "first_load_daemon_gc": stat(first_gc),
        "steady_refresh": stat(steady),
        "pyroute2_subset": {"sas": sub_count, "sas_per_s": p2},
        "check": check,
    }
    best_first, best_steady = res["first_load"]["best_s"], res["steady_refresh"]["best_s"]
    res["sas_per_s"] = {"first_load": n_sas / best_first, "steady_refresh": n_sas / best_steady,
                        "first_load_daemon_gc": n_sas / res["first_load_daemon_gc"]["best_s"],
                        "decode_only": n_sas / res["decode_only"]["best_s"],
                        "header_walk": n_sas / res["header_walk"]["best_s"], "pyroute2": p2}
    res["ratio_vs_header_walk"] = {"first_load": best_first / res["header_walk"]["best_s"],
                                   "steady_refresh": best_steady / res["header_walk"]["best_s"]}
    scale = TARGET_SAS / n_sas
    res["projected_200k_s"] = {"first_load": best_first * scale, "steady_refresh": best_steady * scale,
                               "first_load_cpu": res["first_load"]["cpu_best_s"] * scale,
                               "first_load_daemon_gc": res["first_load_daemon_gc"]["best_s"] * scale,
                               "first_load_daemon_gc_cpu": res["first_load_daemon_gc"]["cpu_best_s"] * scale,
                               "steady_refresh_cpu": res["steady_refresh"]["cpu_best_s"] * scale}
    res["run_queue_wait_s"] = run_queue_wait() - wait0  # time this process lost to others (shared machine)
    if rss:
        res["rss"] = rss_per_sa(n_sas)
    return res


# ------------------------------------------------------------------ RSS in a fresh process

def _rss_child(n_sas: int, refreshes: int = 0, fastpath: str = "default") -> dict[str, Any]:
    """In a fresh process: RSS before and after holding a dump of ``n_sas`` SAs (bytes streamed, dropped),
    then after ``refreshes`` more dumps of the same records (the fast path's digests are recorded from the
    second dump on). ``fastpath``: "on", "off" or "default" (the ``Pipeline`` default; older code has no switch).
    """
    kw: dict[str, Any] = {} if fastpath == "default" else {"fastpath": fastpath == "on"}
    pipeline = Pipeline(Correlator(), **kw)
    gc.collect()
    before = rss_bytes()
    for k in range(1 + refreshes):
        seq = DUMP_SEQ + k
        pipeline.feed(Datagram("bench", encode_dump_request(X.XFRM_MSG_GETSA, seq), NOW0 + k, True), NOW0 + k)
        batch: list[bytes] = []
        size = 0
        for rec in dump_records(n_sas, seq=seq):
            if batch and size + len(rec) > 32 * 1024:
                pipeline.feed(Datagram("bench", b"".join(batch), NOW0 + k, False), NOW0 + k)
                batch, size = [], 0
            batch.append(rec)
            size += len(rec)
        items = dump_items([b"".join(batch)], seq=seq)
        for it in items[1:]:
            pipeline.feed(it, NOW0 + k)
        del batch, items
        pipeline.correlator.drain_events()
        pipeline.correlator.take_dirty()
    t0 = time.perf_counter()
    gc.collect()
    first_full = time.perf_counter() - t0
    t0 = time.perf_counter()
    gc.collect()  # a full collection with the whole state held: what a gen-2 pass costs the event loop
    full = time.perf_counter() - t0
    after = rss_bytes()
    return {"sas": pipeline.correlator.sa_count, "tunnels": len(pipeline.correlator.tunnel_ids()),
            "refreshes": refreshes, "fastpath": fastpath, "skipped": getattr(pipeline, "skipped", None),
            "rss_before": before, "rss_after": after, "gc_tracked_objects": len(gc.get_objects()),
            "first_full_gc_s": first_full, "full_gc_s": full}


def rss_per_sa(n_sas: int, refreshes: int = 0, fastpath: str = "default", src: str | None = None) -> dict[str, Any]:
    """Run ``_rss_child`` in a fresh interpreter; bytes of RSS per SA held. ``src``: a directory whose
    ``monitor`` package is imported instead of this one (e.g. another branch's, exported with ``git archive``)."""
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join([src, str(Path(__file__).resolve().parent.parent)])
    out = subprocess.run([sys.executable, "-m", "bench.refresh_bench", "--rss-child", str(n_sas),
                          "--rss-refreshes", str(refreshes), "--rss-fastpath", fastpath],
                         capture_output=True, text=True, check=True, timeout=900, env=env,
                         cwd=src or None)
    d: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    d["bytes_per_sa"] = (d["rss_after"] - d["rss_before"]) / max(1, d["sas"])
    return d


def export_ref(ref: str) -> str | None:
    """``git archive`` of ``ref``'s ``monitor`` and ``bench`` into a temporary directory (None if git cannot)."""
    root = Path(__file__).resolve().parent.parent
    dest = tempfile.mkdtemp(prefix=f"bench-{ref.replace('/', '_')}-")
    try:
        arch = subprocess.run(["git", "-C", str(root), "archive", ref, "monitor", "bench"], capture_output=True,
                              check=True, timeout=60)
        subprocess.run(["tar", "-x", "-C", dest], input=arch.stdout, check=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        shutil.rmtree(dest, ignore_errors=True)
        return None
    # the child runs this branch's bench code against ``ref``'s monitor package
    shutil.rmtree(Path(dest) / "bench")
    shutil.copytree(root / "bench", Path(dest) / "bench", ignore=shutil.ignore_patterns("results", "__pycache__"))
    return dest


# ------------------------------------------------------------------ kernel in the loop

def allocspi_request(seq: int, i: int) -> bytes:
    """``XFRM_MSG_ALLOCSPI`` for larval SA ``i`` (``monitor.wire.encode.encode_allocspi``).

    ESP, tunnel mode, reqid ``i + 1`` (distinct, so each request makes a new state:
    ``xfrm_find_acq()`` would otherwise return the existing one), SPI range 0xC0000000-0xCFFFFFFF.
    Addresses are documentation ranges; nothing is sent anywhere (the netns has no interfaces up but lo).
    """
    peer = f"{('192.0.2.', '198.51.100.', '203.0.113.')[i % 3]}{2 + (i // 3) % 250}"
    sa = SA(sel=Selector("0.0.0.0", "0.0.0.0", family=X.AF_INET), daddr=peer, spi=0,
            proto=X.IPPROTO_ESP, saddr="192.0.2.1", lft=LifetimeCfg(), cur=LifetimeCur(0, 0, 0, 0),
            stats=Stats(), seq=0, reqid=i + 1, family=X.AF_INET, mode=1, replay_window=0, flags=0)
    return encode_allocspi(NlHeader(X.XFRM_MSG_ALLOCSPI, X.NLM_F_REQUEST, seq, 0), sa, 0xC0000000, 0xCFFFFFFF)


def _drain(sock: socket.socket, buf: bytearray) -> int:
    n = 0
    while True:
        try:
            n += sock.recv_into(buf, 0, socket.MSG_DONTWAIT) and 1
        except BlockingIOError:
            return n


def _dump_once(sock: socket.socket, buf: bytearray, seq: int, pipeline: Pipeline | None) -> tuple[float, int, int]:
    """One GETSA dump: (seconds from send to NLMSG_DONE, records, bytes)."""
    req = encode_dump_request(X.XFRM_MSG_GETSA, seq)
    unpack = X.NLMSGHDR.unpack_from
    records = total = 0
    t0 = time.perf_counter()
    if pipeline is not None:
        pipeline.feed(Datagram("kernel", req, NOW0, True), NOW0)
    sock.send(req)
    while True:
        n = sock.recv_into(buf)
        total += n
        if pipeline is not None:
            pipeline.feed(Datagram("kernel", bytes(buf[:n]), NOW0, False), NOW0)
        off, done = 0, False
        while off + 16 <= n:
            length, mtype, _f, _s, _p = unpack(buf, off)
            if mtype == X.NLMSG_DONE:
                done = True
            elif mtype != X.NLMSG_ERROR:
                records += 1
            off += (length + 3) & ~3
        if done:
            return time.perf_counter() - t0, records, total


def _kernel_child(n_sas: int, repeats: int) -> dict[str, Any]:
    """Inside the throwaway netns: ALLOCSPI ``n_sas`` larval SAs, then time GETSA dumps."""
    try:
        with open("/proc/sys/net/core/xfrm_acq_expires", "w") as f:
            f.write("3600\n")  # larval states live 30 s by default; the run takes longer
    except OSError as exc:
        return {"error": f"cannot raise xfrm_acq_expires: {exc}"}
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, X.NETLINK_XFRM)
    sock.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)  # SO_RCVBUFFORCE
    sock.bind((0, 0))
    buf = bytearray(1 << 18)
    t0 = time.perf_counter()
    batch = 256
    errors = 0
    for start in range(0, n_sas, batch):
        reqs = b"".join(allocspi_request(start + j + 1, start + j) for j in range(min(batch, n_sas - start)))
        sock.send(reqs)
        _drain(sock, buf)
    time.sleep(0.05)
    _drain(sock, buf)
    alloc_s = time.perf_counter() - t0
    raw: list[float] = []
    raw_cpu: list[float] = []
    ours: list[float] = []
    ours_cpu: list[float] = []
    records = nbytes = 0
    for r in range(repeats):
        gc.collect()
        c0 = cpu_seconds()
        secs, records, nbytes = _dump_once(sock, buf, 1_000_000 + 2 * r, None)
        raw_cpu.append(cpu_seconds() - c0)
        raw.append(secs)
        pipeline = Pipeline(Correlator())
        gc.collect()
        c0 = cpu_seconds()
        secs, rec2, _ = _dump_once(sock, buf, 1_000_001 + 2 * r, pipeline)
        ours_cpu.append(cpu_seconds() - c0)
        ours.append(secs)
        if rec2 != records or pipeline.stats.malformed:
            errors += 1
        decoded = pipeline.stats.events
    sock.close()
    return {"larval_sas": records, "requested": n_sas, "alloc_s": alloc_s, "dump_bytes": nbytes,
            "raw_recv_s": sorted(raw), "raw_recv_cpu_s": sorted(raw_cpu), "recv_and_pipeline_s": sorted(ours),
            "pipeline_cpu_s": sorted(ours_cpu),
            "decoded_events": decoded, "mismatches": errors}


def run_kernel(n_sas: int = 50_000, repeats: int = 3) -> dict[str, Any]:
    """The host-kernel variant in a throwaway netns (needs root and ``ip``); skipped with a reason otherwise."""
    if os.geteuid() != 0:
        return {"skipped": "needs root (ip netns add)"}
    name = f"bench-{os.getpid()}"
    try:
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return {"skipped": f"ip netns add failed: {exc}"}
    try:
        out = subprocess.run(["ip", "netns", "exec", name, sys.executable, "-m", "bench.refresh_bench",
                              "--kernel-child", str(n_sas), "--repeats", str(repeats)],
                             check=False, capture_output=True, text=True, timeout=900)
        if out.returncode != 0:
            return {"error": f"kernel child failed ({out.returncode}): {out.stderr[-2000:]}"}
        res: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False, capture_output=True, timeout=30)
    if "raw_recv_s" in res:
        raw, ours = res["raw_recv_s"][0], res["recv_and_pipeline_s"][0]
        res["netns"] = name
        res["ratio_vs_raw_recv"] = ours / raw
        res["cpu_ratio_vs_raw_recv"] = res["pipeline_cpu_s"][0] / max(res["raw_recv_cpu_s"][0], 0.01)
        res["sas_per_s"] = {"raw_recv": res["larval_sas"] / raw, "recv_and_pipeline": res["larval_sas"] / ours}
    return res


def fastpath_rss(n_sas: int, baseline_ref: str | None) -> dict[str, Any]:
    """RSS per SA after the load and two refreshes: fast path on, off, and ``baseline_ref``'s code."""
    out: dict[str, Any] = {"on": rss_per_sa(n_sas, 2, "on"), "off": rss_per_sa(n_sas, 2, "off")}
    if baseline_ref:
        src = export_ref(baseline_ref)
        if src is None:
            out["baseline"] = {"skipped": f"git archive {baseline_ref} failed"}
        else:
            try:
                out["baseline"] = rss_per_sa(n_sas, 2, "default", src=src)
                out["baseline"]["ref"] = baseline_ref
            finally:
                shutil.rmtree(src, ignore_errors=True)
    return out


def format_table(result: dict[str, Any]) -> str:
    """Markdown summary of a refresh result."""
    r = result["refresh"]
    rows = ["| pass | best wall s | median wall s | best CPU s | SAs/s (wall) | x header walk |",
            "|---|---:|---:|---:|---:|---:|"]
    hw = r["header_walk"]["best_s"]
    for key, label in (("header_walk", "baseline: header walk"), ("decode_only", "decode only"),
                       ("first_load", "first load (decode+correlate), default GC"),
                       ("first_load_daemon_gc", "first load, daemon GC policy (LoadGc)"),
                       ("steady_refresh", "steady refresh (counters changed)")):
        s = r[key]
        rows.append(f"| {label} | {s['best_s']:.3f} | {s['median_s']:.3f} | {s['cpu_best_s']:.3f} | "
                    f"{r['sas'] / s['best_s']:,.0f} | "
                    f"{s['best_s'] / hw:.1f} |")
    p2 = r["pyroute2_subset"]["sas_per_s"]
    if p2:
        rows.append(f"| pyroute2 Marshal.parse ({r['pyroute2_subset']['sas']:,} SAs) | | | | {p2:,.0f} | "
                    f"{(r['sas'] / p2) / hw:.1f} |")
    f = result.get("fastpath")
    if f:
        rows += ["", "| issue 15 refresh (same dump, same run) | CPU s (best) | x raw recv loop | "
                 "fast path off CPU s | x raw | on vs off | skipped | longest stall ms (dump end) |",
                 "|---|---:|---:|---:|---:|---:|---:|---|"]
        raw = f["raw_recv_cpu_s"][0]
        rows.append(f"| raw recv loop (socket pair + header walk) | {raw:.3f} | 1.0 | | | | | |")
        for key, label in (("tenth", "10% of SAs changed"), ("all", "every SA changed")):
            e, s = f[key], (f.get("stall") or {}).get(key) or {}
            rows.append(f"| {label} | {e['on_cpu_s'][0]:.3f} | {e['ratio_on_vs_raw_cpu']:.1f} | "
                        f"{e['off_cpu_s'][0]:.3f} | {e['ratio_off_vs_raw_cpu']:.1f} | "
                        f"{e['speedup_on_vs_off_cpu']:.2f}x | {e['skipped_last']:,} | "
                        f"{s.get('longest_stall_ms') or 0:.0f} ({s.get('dump_end_ms') or 0:.0f}) |")
        u = (f.get("stall") or {}).get("tenth_unsliced") or {}
        if u:
            rows.append(f"| 10%, daemon without feed slices | | | | | | | {u.get('longest_stall_ms') or 0:.0f} "
                        f"({u.get('dump_end_ms') or 0:.0f}) |")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(prog="python -m bench.refresh_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="50,000 SAs, 2 rounds; kernel variant 20,000")
    parser.add_argument("-n", type=int, default=None, help="SAs in the dump (default 200,000)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--kernel", action="store_true", help="also the host-kernel ALLOCSPI variant (root)")
    parser.add_argument("--kernel-sas", type=int, default=None, help="larval SAs (default 50,000)")
    parser.add_argument("--no-rss", action="store_true")
    parser.add_argument("--rss-child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--rss-refreshes", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--rss-fastpath", default="default", help=argparse.SUPPRESS)
    parser.add_argument("--baseline-ref", default="main",
                        help="git ref whose monitor package is the RSS baseline (default main; '' to skip)")
    parser.add_argument("--no-fastpath", action="store_true", help="skip the issue 15 fast-path scenarios")
    parser.add_argument("--kernel-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rss_child is not None:
        print(json.dumps(_rss_child(args.rss_child, args.rss_refreshes, args.rss_fastpath)))
        return 0
    if args.kernel_child is not None:
        pin_one_cpu()
        print(json.dumps(_kernel_child(args.kernel_child, args.repeats or 3)))
        return 0
    pinned = pin_one_cpu()
    n = args.n or (50_000 if args.quick else TARGET_SAS)
    repeats = args.repeats or (2 if args.quick else 3)
    result: dict[str, Any] = {"benchmark": "refresh", "params": {"sas": n, "repeats": repeats, "quick": args.quick,
                                                                "pinned_cpu": pinned}}
    result["refresh"] = run(n, repeats, rss=not args.no_rss)
    if not args.no_fastpath:
        result["fastpath"] = run_fastpath(list(dump_records(n)), repeats)
        if not args.no_rss:
            result["fastpath"]["rss"] = fastpath_rss(n, args.baseline_ref or None)
    if args.kernel:
        result["kernel"] = run_kernel(args.kernel_sas or (20_000 if args.quick else 50_000), repeats)
    path = write_result("refresh", result)
    print(format_table(result))
    print(json.dumps({k: v for k, v in result.items() if k != "refresh"}, indent=1, default=str)[:3000])
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
