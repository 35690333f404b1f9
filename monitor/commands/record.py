"""``monitor record``: capture what the kernel source receives to a key-scrubbed netlink pcap.

Everything the source sees goes to the file: multicast events, dump replies and our own dump
requests (so a replay shows where each dump began). Keys are zeroed by ``monitor.wire.pcap``'s writer.
Stops on SIGINT, SIGTERM or after ``--duration`` seconds, then prints one summary line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from pathlib import Path
from typing import Any

from monitor.errors import MonitorError
from monitor.sources.items import Control, Datagram
from monitor.wire.pcap import PcapWriter

FLUSH_EVERY = 0.5  # seconds; so a reader (or a killed recorder) sees a file at most this stale


def add_parser(sub: Any) -> None:
    """Register ``monitor record``."""
    p = sub.add_parser("record", help="record XFRM netlink traffic to a key-scrubbed pcap (tcpdump -r reads it)",
                       description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--out", required=True, metavar="FILE.pcap", help="capture file to write (overwritten)")
    p.add_argument("--duration", type=float, default=None, metavar="S", help="stop after S seconds")
    ns = p.add_mutually_exclusive_group()
    ns.add_argument("--netns", nargs="+", action="extend", default=[], metavar="NAME",
                    help="ip netns name(s) to watch ('default' is our own; default: default)")
    ns.add_argument("--all-netns", action="store_true", help="the default and every named netns, followed")
    p.add_argument("--interval", type=float, default=2.0, metavar="S", help="seconds between dumps (default 2)")
    p.add_argument("--aevents", action="store_true",
                   help="also join XFRMNLGRP_AEVENTS (per-packet NEWAE for every SA: heavy)")
    p.set_defaults(func=run)


async def record(args: argparse.Namespace, out: Any = None) -> int:
    """Run the capture until a signal or the duration; print the summary line (to ``out``, default stdout)."""
    from monitor.sources.kernel import KernelSource  # noqa: PLC0415 - pyroute2 only when reading the kernel

    netns: Any = "all" if args.all_netns else (args.netns or ["default"])
    source = KernelSource(netns, interval=args.interval, aevents=args.aevents)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    counts = {"requests": 0, "received": 0, "bytes": 0}
    seen_netns: set[str] = set()
    t0 = time.monotonic()

    async def consume(writer: PcapWriter) -> None:
        flushed = time.monotonic()
        async with contextlib.aclosing(source.items()) as items:
            async for item in items:
                if time.monotonic() - flushed > FLUSH_EVERY:
                    writer.flush()
                    flushed = time.monotonic()
                if isinstance(item, Datagram):
                    writer.write(item.ts, item.data, item.outgoing, item.netns)
                    counts["requests" if item.outgoing else "received"] += 1
                    counts["bytes"] += len(item.data)
                    seen_netns.add(item.netns)
                elif isinstance(item, Control) and item.kind == "source_error":
                    print(f"monitor record: {item.netns}: {item.message}", file=sys.stderr)

    writer = PcapWriter(args.out)
    try:
        task = asyncio.create_task(consume(writer))
        waiter = asyncio.create_task(stop.wait())
        await asyncio.wait({task, waiter}, timeout=args.duration, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task  # re-raises a source error
    except BaseException:
        writer.close()
        if writer.count == 0:  # the source never started: leave no empty capture behind
            Path(args.out).unlink(missing_ok=True)
        raise
    finally:
        writer.close()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    enobufs = sum(source.enobufs.values())
    print(f"recorded {counts['received']} datagrams and {counts['requests']} requests ({counts['bytes']} bytes) "
          f"from {len(seen_netns)} netns in {time.monotonic() - t0:.1f} s to {args.out}; ENOBUFS {enobufs}; "
          "keys scrubbed", file=out or sys.stdout, flush=True)
    return 0


def run(args: argparse.Namespace) -> int:
    """Entry point of ``monitor record``."""
    if not args.interval > 0 or (args.duration is not None and not args.duration > 0):  # also refuses nan
        print("monitor record: error: --interval and --duration must be positive", file=sys.stderr)
        return 2
    try:
        return asyncio.run(record(args))
    except MonitorError as exc:
        print(f"monitor record: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"monitor record: error: {exc}", file=sys.stderr)
        return 2
