"""Decode benchmark: our decoder against pyroute2's generic machinery, same bytes, same run.

    python -m bench.decode_bench            # full run (about a minute), writes bench/results/decode.json
    python -m bench.decode_bench --quick    # a few seconds

Mixes are built with ``monitor.wire.encode`` and packed into datagrams of at most 32 KiB, as a GETSA
dump ``recv`` returns them (``netlink_dump()`` sizes dump skbs to 32 KiB):

* ``newsa_gcm``  NEWSA dump of rfc4106(gcm(aes)) SAs (160-bit key+salt, 128-bit ICV), ESN, NAT-T
  encap, IF_ID, SA_DIR, LASTUSED: 424 bytes each, the profile in xfrm-netlink.md section 2;
* ``newsa_cbc``  NEWSA dump of cbc(aes) + hmac(sha256) SAs (CRYPT, AUTH, AUTH_TRUNC, REPLAY_VAL,
  LASTUSED): 584 bytes each;
* ``expire``     soft and hard EXPIREs; ``delsa``  DELSA with the full SA; ``newae``  NEWAE counters;
* ``mixed``      all of the above interleaved.

Times are this thread's CPU time (``time.thread_time``), best of several rounds, so that other load on
the machine does not count against either decoder. pyroute2 is measured twice: ``lazy``
(``Marshal.parse``: header and struct fields decoded, NLAs left for later, its default) and
``get_attr`` (every attribute our decoder reads is fetched, which makes pyroute2 decode it). Both
ratios are reported; the lazy one is the harder to beat.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.pyroute2_baseline import MarshalXfrm, touch_attrs
from monitor.wire import xfrm as X
from monitor.wire.decode import decode_datagram
from monitor.wire.encode import encode
from monitor.wire.events import (
    SA,
    Algo,
    AsyncEvent,
    Encap,
    Event,
    LifetimeCfg,
    LifetimeCur,
    NlHeader,
    Replay,
    ReplayEsn,
    SAAdded,
    SADeleted,
    SAExpired,
    SAId,
    Selector,
    Stats,
)

__all__ = ["build_mixes", "machine_description", "main", "pack", "run"]

RESULTS = Path(__file__).parent / "results" / "decode.json"
DATAGRAM_MAX = 32 * 1024
TARGET_RATIO = 20.0
# CPU time of this thread, not wall time: the machine is shared (2 cores, other jobs running), and CPU
# time is what "messages/s on one core" means. Both decoders are timed with the same clock.
CLOCK = time.thread_time
TARGET_NEWSA_RATE = 300_000.0
# Outer addresses only from the documentation ranges (never sent anywhere: these are just bytes).
_OUTER = ("192.0.2.", "198.51.100.", "203.0.113.")


def _peer(i: int) -> str:
    return f"{_OUTER[i % 3]}{1 + (i // 3) % 254}"


def _sa(i: int, profile: str) -> SA:
    """SA number ``i`` of a fleet: one tunnel per two SAs, distinct inner subnets, growing counters."""
    tunnel = i // 2
    out = i % 2 == 0
    local, remote = "198.51.100.254", _peer(tunnel)
    sel = Selector(f"10.{(tunnel >> 8) & 255}.{tunnel & 255}.0", f"172.16.{tunnel & 255}.0", family=X.AF_INET,
                   prefixlen_d=24, prefixlen_s=24)
    lft = LifetimeCfg(soft_add_expires_seconds=3240 + i % 360, hard_add_expires_seconds=3960)
    base = SA(
        sel=sel, daddr=remote if out else local, spi=0xC0000000 | i, proto=X.IPPROTO_ESP,
        saddr=local if out else remote, lft=lft,
        cur=LifetimeCur(i * 1500, i, 1_700_000_000 + i % 3600, 1_700_000_001 + i % 3600), stats=Stats(),
        seq=0, reqid=1 + tunnel, family=X.AF_INET, mode=1, replay_window=0, flags=0, lastused=1_700_003_000 + i,
    )
    if profile == "gcm":
        return base._replace(
            flags=128,  # XFRM_STATE_ESN
            aead=Algo("rfc4106(gcm(aes))", 160, 128), encap=Encap(2, 4500, 4500, "0.0.0.0"),
            replay_esn=ReplayEsn(i if out else 0, 0 if out else i, 0, 0, 32, (0xFFFFFFFF,)),
            if_id=1 + tunnel, sa_dir=X.XFRM_SA_DIR_OUT if out else X.XFRM_SA_DIR_IN,
        )
    return base._replace(
        replay_window=32, auth=Algo("hmac(sha256)", 256), auth_trunc=Algo("hmac(sha256)", 256, 128),
        enc=Algo("cbc(aes)", 256), replay=Replay(i if out else 0, 0 if out else i, 0xFFFFFFFF),
    )


def pack(messages: Sequence[bytes], limit: int = DATAGRAM_MAX) -> list[bytes]:
    """Pack messages into datagrams of at most ``limit`` bytes, in order (like one dump recv each)."""
    out: list[bytes] = []
    cur: list[bytes] = []
    size = 0
    for m in messages:
        if cur and size + len(m) > limit:
            out.append(b"".join(cur))
            cur, size = [], 0
        cur.append(m)
        size += len(m)
    if cur:
        out.append(b"".join(cur))
    return out


def build_mixes(n: int) -> dict[str, tuple[list[bytes], int]]:
    """Every mix as (datagrams, message count), each with ``n`` messages (``mixed`` has about ``n``)."""
    dump = NlHeader(X.XFRM_MSG_NEWSA, X.NLM_F_MULTI, 1, 4242)
    gcm = [encode(SAAdded(dump, _sa(i, "gcm"))) for i in range(n)]
    cbc = [encode(SAAdded(dump, _sa(i, "cbc"))) for i in range(n)]
    expire = [encode(SAExpired(NlHeader(X.XFRM_MSG_EXPIRE), _sa(i, "gcm" if i % 2 else "cbc")._replace(
        aead=None, auth=None, auth_trunc=None, enc=None, encap=None, replay=None, replay_esn=None, lastused=None,
    ), i % 5 == 0)) for i in range(n)]
    delsa = []
    for i in range(n):
        sa = _sa(i, "gcm" if i % 2 else "cbc")
        delsa.append(encode(SADeleted(NlHeader(X.XFRM_MSG_DELSA), SAId(sa.daddr, sa.spi, sa.family, sa.proto), sa)))
    newae = []
    for i in range(n):
        sa = _sa(i, "gcm" if i % 2 else "cbc")
        newae.append(encode(AsyncEvent(
            NlHeader(X.XFRM_MSG_NEWAE), SAId(sa.daddr, sa.spi, sa.family, sa.proto), sa.saddr, 16, sa.reqid,
            replay=sa.replay, replay_esn=sa.replay_esn, lifetime=sa.cur, if_id=sa.if_id,
        )))
    if (len(gcm[0]), len(cbc[0])) != (424, 584):  # the sizes of xfrm-netlink.md section 2
        raise AssertionError(f"unexpected SA message sizes {len(gcm[0])}, {len(cbc[0])}")
    mixed: list[bytes] = []
    for i in range(n // 5):
        mixed += [gcm[i], cbc[i], expire[i], delsa[i], newae[i]]
    return {
        "newsa_gcm": (pack(gcm), n),
        "newsa_cbc": (pack(cbc), n),
        "expire": (pack(expire), n),
        "delsa": (pack(delsa), n),
        "newae": (pack(newae), n),
        "mixed": (pack(mixed), len(mixed)),
    }


def _best(fn: Callable[[], object], repeats: int, min_time: float) -> float:
    """Seconds per call of ``fn``: the best of ``repeats`` rounds, each looping for at least ``min_time``."""
    best = float("inf")
    for _ in range(repeats):
        gc.collect()
        loops = 0
        start = CLOCK()
        while True:
            fn()
            loops += 1
            elapsed = CLOCK() - start
            if elapsed >= min_time:
                break
        best = min(best, elapsed / loops)
    return best


def _ours(datagrams: list[bytes]) -> Callable[[], int]:
    def go() -> int:
        n = 0
        for d in datagrams:
            n += len(decode_datagram(d))
        return n

    return go


def _pyroute2(datagrams: list[bytes], touch: bool) -> Callable[[], int]:
    marshal = MarshalXfrm()

    def go() -> int:
        n = 0
        for d in datagrams:
            for msg in marshal.parse(d):
                n += 1
                if touch:
                    touch_attrs(msg)
        return n

    return go


def _cross_check(datagrams: list[bytes], count: int) -> None:
    """Both decoders see the same messages and agree on SPI and reqid (the baseline really decodes)."""
    ours: list[Event] = []
    for d in datagrams:
        ours.extend(decode_datagram(d))
    marshal = MarshalXfrm()
    theirs = [msg for d in datagrams for msg in marshal.parse(d)]
    if not len(ours) == len(theirs) == count:
        raise AssertionError(f"message counts differ: ours {len(ours)}, pyroute2 {len(theirs)}, built {count}")
    for ev, msg in zip(ours[:50], theirs[:50], strict=True):
        sa = getattr(ev, "sa", None)
        spi = sa.spi if sa is not None else ev.id.spi  # type: ignore[union-attr]
        if spi != (msg.get("id_spi") or msg.get("spi")):
            raise AssertionError(f"SPI mismatch: ours 0x{spi:08x}, pyroute2 {msg}")


def machine_description() -> dict[str, Any]:
    """CPU model, core count, Python, kernel and library versions of this machine."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "kernel": platform.release(),
        "pyroute2": metadata.version("pyroute2"),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def run(n: int = 10_000, repeats: int = 3, min_time: float = 0.3,
        mixes: Sequence[str] | None = None) -> dict[str, Any]:
    """Build the mixes, cross-check, time both decoders on each; returns the result dict (JSON-ready).

    Args:
        n: messages per mix.
        repeats: best-of rounds per measurement.
        min_time: our decoder loops over the mix for at least this long per round (pyroute2 runs once).
        mixes: restrict to these mix names.
    """
    built = build_mixes(n)
    results: dict[str, Any] = {}
    for name, (datagrams, count) in built.items():
        if mixes is not None and name not in mixes:
            continue
        _cross_check(datagrams, count)
        ours = _best(_ours(datagrams), repeats, min_time)
        lazy = _best(_pyroute2(datagrams, touch=False), repeats, 0.0)
        touched = _best(_pyroute2(datagrams, touch=True), repeats, 0.0)
        results[name] = {
            "messages": count,
            "datagrams": len(datagrams),
            "bytes": sum(len(d) for d in datagrams),
            "ours_msgs_per_s": count / ours,
            "pyroute2_lazy_msgs_per_s": count / lazy,
            "pyroute2_get_attr_msgs_per_s": count / touched,
            "ratio_vs_lazy": lazy / ours,
            "ratio_vs_get_attr": touched / ours,
        }
    newsa = [results[k]["ours_msgs_per_s"] for k in ("newsa_gcm", "newsa_cbc") if k in results]
    ratios = [r["ratio_vs_lazy"] for r in results.values()]
    same_work = [r["ratio_vs_get_attr"] for r in results.values()]
    newsa_same_work = [results[k]["ratio_vs_get_attr"] for k in ("newsa_gcm", "newsa_cbc") if k in results]
    return {
        "benchmark": "decode",
        "machine": machine_description(),
        "params": {"messages_per_mix": n, "repeats": repeats, "min_time_s": min_time, "clock": "thread_time",
                   "datagram_max": DATAGRAM_MAX},
        "mixes": results,
        "targets": {
            "ratio_vs_pyroute2_lazy": {"target": TARGET_RATIO, "worst": min(ratios) if ratios else None,
                                       "met": bool(ratios) and min(ratios) >= TARGET_RATIO},
            "ratio_vs_pyroute2_get_attr": {"target": TARGET_RATIO, "worst": min(same_work) if same_work else None,
                                           "met": bool(same_work) and min(same_work) >= TARGET_RATIO},
            "newsa_ratio_vs_pyroute2_get_attr": {
                "target": TARGET_RATIO, "worst": min(newsa_same_work) if newsa_same_work else None,
                "met": bool(newsa_same_work) and min(newsa_same_work) >= TARGET_RATIO},
            "newsa_msgs_per_s": {"target": TARGET_NEWSA_RATE, "worst": min(newsa) if newsa else None,
                                 "met": bool(newsa) and min(newsa) >= TARGET_NEWSA_RATE},
        },
    }


def format_table(result: dict[str, Any]) -> str:
    """A Markdown table of the result, as pasted into bench/RESULTS.md."""
    rows = ["| mix | msgs | ours msg/s | pyroute2 lazy msg/s | pyroute2 get_attr msg/s | x lazy | x get_attr |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in result["mixes"].items():
        rows.append(
            f"| {name} | {r['messages']} | {r['ours_msgs_per_s']:,.0f} | {r['pyroute2_lazy_msgs_per_s']:,.0f} | "
            f"{r['pyroute2_get_attr_msgs_per_s']:,.0f} | {r['ratio_vs_lazy']:.1f} | {r['ratio_vs_get_attr']:.1f} |"
        )
    t = result["targets"]
    rows.append("")
    for key, label in (("ratio_vs_pyroute2_lazy", "ratio >= 20x (lazy pyroute2, worst mix)"),
                       ("ratio_vs_pyroute2_get_attr", "ratio >= 20x (pyroute2 with get_attr, worst mix)"),
                       ("newsa_ratio_vs_pyroute2_get_attr", "ratio >= 20x (pyroute2 with get_attr, NEWSA mixes)"),
                       ("newsa_msgs_per_s", "NEWSA >= 300k msg/s (worst NEWSA mix)")):
        worst = t[key]["worst"]
        shown = "n/a" if worst is None else f"{worst:,.1f}"
        rows.append(f"- {label}: {shown} -> {'met' if t[key]['met'] else 'NOT met'}")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(prog="python -m bench.decode_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2,000 messages per mix, 2 rounds (seconds)")
    parser.add_argument("-n", type=int, default=None, help="messages per mix (default 10,000)")
    parser.add_argument("--repeats", type=int, default=None, help="best-of rounds (default 5)")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON results file (default {RESULTS})")
    parser.add_argument("--min-time", type=float, default=None,
                        help="CPU seconds our decoder loops per round (default 0.3; quick 0.1)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin the process to one CPU")
    args = parser.parse_args(argv)
    n = args.n or (2_000 if args.quick else 10_000)
    repeats = args.repeats or (2 if args.quick else 5)
    pinned = None
    if not args.no_pin and hasattr(os, "sched_setaffinity"):
        pinned = max(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {pinned})
    min_time = args.min_time if args.min_time is not None else (0.1 if args.quick else 0.3)
    result = run(n=n, repeats=repeats, min_time=min_time)
    result["params"]["pinned_cpu"] = pinned
    result["params"]["quick"] = args.quick
    print(f"machine: {result['machine']}")
    print(format_table(result))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
