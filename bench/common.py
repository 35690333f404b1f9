"""Helpers shared by the benchmarks: fleets of encoded SAs, RSS/CPU readings, percentiles, result files.

Everything that builds netlink bytes goes through ``monitor.wire.encode`` (via ``bench.decode_bench``'s SA
profiles), so the benchmarks feed the real decoder exactly what a kernel dump would return.
"""

from __future__ import annotations

import json
import math
import os
import struct
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from bench.decode_bench import _sa, machine_description, pack
from monitor.health.correlate import Correlator
from monitor.health.pipeline import Pipeline
from monitor.sources.items import Datagram
from monitor.wire import xfrm as X
from monitor.wire.encode import encode, encode_dump_request
from monitor.wire.events import SA, Done, NlHeader, SAAdded

__all__ = [
    "ADD_BASE",
    "DUMP_SEQ",
    "RESULTS_DIR",
    "cpu_seconds",
    "dump_items",
    "fleet_sa",
    "loadavg",
    "machine_description",
    "patch_counters",
    "percentile",
    "pin_one_cpu",
    "rss_bytes",
    "run_queue_wait",
    "summary",
    "write_result",
]

RESULTS_DIR = Path(__file__).parent / "results"
DUMP_SEQ = 1
MONITOR_PID = 7777
# decode_bench's SAs were added at 1_700_000_000 + i % 3600 (kernel wall-clock seconds); the benchmark's
# "now" sits just after that, so lifetimes are neither expired nor far in the future.
ADD_BASE = 1_700_000_000
NOW0 = float(ADD_BASE + 3_700)
# struct nlmsghdr (16) + struct xfrm_usersa_info: curlft (struct xfrm_lifetime_cur) at offset 160:
# { __u64 bytes; __u64 packets; __u64 add_time; __u64 use_time; }
_CURLFT = 16 + 160
_U64X2 = struct.Struct("=QQ")


def fleet_sa(i: int) -> SA:
    """SA number ``i`` of the benchmark fleet: SAs ``2t`` (out) and ``2t+1`` (in) belong to tunnel ``t``.

    Even tunnels use the AES-GCM/ESN/NAT-T/if_id/SA_DIR profile (424-byte records), odd tunnels the
    AES-CBC + HMAC-SHA256 profile (584 bytes): the two strongSwan proposals seen in the field.
    """
    return _sa(i, "gcm" if (i // 2) % 2 == 0 else "cbc")


def dump_records(n_sas: int, seq: int = DUMP_SEQ) -> Iterator[bytes]:
    """NEWSA dump records (``NLM_F_MULTI``, our dump's ``seq``) of the first ``n_sas`` fleet SAs."""
    nl = NlHeader(X.XFRM_MSG_NEWSA, X.NLM_F_MULTI, seq, MONITOR_PID)
    for i in range(n_sas):
        yield encode(SAAdded(nl, fleet_sa(i)))


def patch_counters(record: bytes, add_bytes: int, add_packets: int) -> bytes:
    """A copy of a NEWSA record whose ``curlft.bytes``/``packets`` grew (what the next dump returns)."""
    b = bytearray(record)
    nbytes, npackets = _U64X2.unpack_from(b, _CURLFT)
    _U64X2.pack_into(b, _CURLFT, nbytes + add_bytes, npackets + add_packets)
    return bytes(b)


def dump_items(datagrams: Sequence[bytes], netns: str = "bench", seq: int = DUMP_SEQ,
               ts: float = NOW0) -> list[Datagram]:
    """One full dump as the pipeline sees it: our GETSA request, the reply datagrams, NLMSG_DONE."""
    done = encode(Done(NlHeader(X.NLMSG_DONE, X.NLM_F_MULTI, seq, MONITOR_PID)))
    return [
        Datagram(netns, encode_dump_request(X.XFRM_MSG_GETSA, seq), ts, True),
        *(Datagram(netns, d, ts, False) for d in datagrams),
        Datagram(netns, done, ts, False),
    ]


def pack_records(records: Sequence[bytes]) -> list[bytes]:
    """Records packed into datagrams of at most 32 KiB, as a dump ``recv`` returns them."""
    return pack(records)


def loaded_pipeline(tunnels: int) -> tuple[Pipeline, Correlator]:
    """A ``(Pipeline, Correlator)`` that has loaded one full dump of ``tunnels`` tunnels (2 SAs each), with the
    load's events and dirty set drained: the starting point of the fan-out and metrics benchmarks."""
    correlator = Correlator()
    pipeline = Pipeline(correlator)
    for it in dump_items(pack_records(list(dump_records(2 * tunnels))), ts=NOW0):
        pipeline.feed(it, NOW0)
    correlator.drain_events()
    correlator.take_dirty()
    return pipeline, correlator


def rss_bytes(pid: int | None = None) -> int:
    """Resident set size of ``pid`` (default: this process) from ``/proc/PID/status`` (VmRSS)."""
    path = f"/proc/{pid or 'self'}/status"
    with open(path) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS in {path}")


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds used so far by ``pid`` (default: this process), from ``/proc/PID/stat``."""
    with open(f"/proc/{pid or 'self'}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_queue_wait(pid: int | None = None) -> float:
    """Seconds ``pid``'s main thread has spent runnable but waiting for a CPU (``/proc/PID/schedstat``).

    On a shared machine this is the noise indicator: time a benchmark lost to other processes.
    """
    try:
        with open(f"/proc/{pid or 'self'}/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages."""
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def pin_one_cpu() -> int | None:
    """Pin this process to the last CPU (the decode benchmark does the same); returns it, or None."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpu = max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    return cpu


def percentile(values: Sequence[float], p: float) -> float | None:
    """The ``p``-th percentile (0..100, nearest rank) of ``values``; None when empty."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(p / 100 * len(s)) - 1))
    return s[k]


def summary(values: Sequence[float]) -> dict[str, float | int | None]:
    """count, p50, p99, max (same unit as ``values``)."""
    return {"count": len(values), "p50": percentile(values, 50), "p99": percentile(values, 99),
            "max": max(values) if values else None}


def write_result(name: str, result: dict[str, Any], out_dir: Path = RESULTS_DIR) -> Path:
    """Write ``result`` (with the machine description added) to ``out_dir/name.json``."""
    result.setdefault("machine", machine_description())
    result["machine"].setdefault("loadavg_at_end", loadavg())
    result.setdefault("written", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return path


def raise_nofile(want: int = 65536) -> int:
    """Raise this process's open-file soft limit towards ``want`` (up to the hard limit); returns it."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if new > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return max(new, soft)
