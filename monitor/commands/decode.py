"""``monitor decode``: decode a netlink capture as fast as possible (``monitor replay --fast``).

With ``--summary`` it prints only counts per event type and direction instead of every event.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import Counter
from typing import Any

from monitor.commands.replay import replay
from monitor.errors import MalformedMessage, MonitorError
from monitor.wire.decode import decode_datagram
from monitor.wire.pcap import read_pcap


def add_parser(sub: Any) -> None:
    """Register ``monitor decode``."""
    p = sub.add_parser("decode", help="decode a netlink capture at full speed (replay --fast)",
                       description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("file", metavar="FILE.pcap", help="netlink pcap (monitor record, or tcpdump -i nlmon0 -w)")
    p.add_argument("--json", action="store_true", help="one JSON object per event")
    p.add_argument("--summary", action="store_true", help="only counts per event type")
    p.set_defaults(func=run)


def summary(path: str) -> tuple[Counter[str], int, int]:
    """Count events per ``type direction``; returns (counts, datagrams, malformed datagrams)."""
    counts: Counter[str] = Counter()
    n = bad = 0
    for rec in read_pcap(path):
        n += 1
        try:
            events = decode_datagram(rec.data)
        except MalformedMessage:
            bad += 1
            continue
        for ev in events:
            counts[f"{type(ev).__name__} {'->kernel' if rec.outgoing else '<-kernel'}"] += 1
    return counts, n, bad


def run(args: argparse.Namespace) -> int:
    """Entry point of ``monitor decode``."""
    try:
        if args.summary:
            counts, n, bad = summary(args.file)
            for key, value in sorted(counts.items()):
                print(f"{value:8d}  {key}")
            print(f"{n} datagrams, {sum(counts.values())} messages, {bad} malformed")
        else:
            bad = asyncio.run(replay(args.file, None, args.json))
    except BrokenPipeError:  # pragma: no cover - `| head`
        return 0
    except (MonitorError, OSError) as exc:
        print(f"monitor decode: error: {exc}", file=sys.stderr)
        return 2
    return 1 if bad else 0
