"""``monitor replay``: decode a netlink capture and print one line (or JSON object) per event.

Plays at the capture's own pace by default; ``--speed X`` plays X times faster, ``--fast`` as fast
as possible. Works on our key-scrubbed captures and on raw ``tcpdump -i nlmon0`` files; output
never contains key bytes (events hold none, and unknown payloads are shown by length only).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson

from monitor.errors import MalformedMessage, MonitorError
from monitor.sources.items import Datagram
from monitor.sources.replay import ReplaySource
from monitor.wire import xfrm as X
from monitor.wire.decode import decode_datagram
from monitor.wire.events import Event, Unknown


def add_parser(sub: Any) -> None:
    """Register ``monitor replay``."""
    p = sub.add_parser("replay", help="print the events in a netlink capture, at its pace or faster",
                       description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("file", metavar="FILE.pcap", help="netlink pcap (monitor record, or tcpdump -i nlmon0 -w)")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument("--speed", type=float, default=1.0, metavar="X", help="playback speed factor (default 1)")
    pace.add_argument("--fast", action="store_true", help="as fast as possible")
    p.add_argument("--json", action="store_true", help="one JSON object per event")
    p.set_defaults(func=run)


def to_json(value: Any) -> Any:
    """Events (nested NamedTuples) as JSON-ready values; raw payload bytes become their length."""
    if isinstance(value, Unknown):
        return {"nl": to_json(value.nl), "payload_len": len(value.payload)}
    if isinstance(value, tuple) and hasattr(value, "_asdict"):
        return {k: to_json(v) for k, v in value._asdict().items()}
    if isinstance(value, tuple):
        return [to_json(v) for v in value]
    if isinstance(value, bytes | bytearray):
        return {"len": len(value)}
    return value


def _describe(ev: Event) -> str:
    fields: Mapping[str, Any] = to_json(ev)
    name = type(ev).__name__
    sa = fields.get("sa") if isinstance(fields.get("sa"), dict) else None
    if sa is not None:
        names = [a["name"] for k in ("aead", "enc", "auth_trunc", "auth") if (a := sa.get(k))]
        algs = ",".join(dict.fromkeys(names)) or "larval"
        extra = f" hard={fields['hard']}" if "hard" in fields else ""
        return (f"{name} spi=0x{sa['spi']:08x} {sa['saddr']}->{sa['daddr']} reqid={sa['reqid']} "
                f"bytes={sa['cur']['bytes']} packets={sa['cur']['packets']} {algs}{extra}")
    if "id" in fields and isinstance(fields["id"], dict) and "spi" in fields["id"]:
        i = fields["id"]
        return f"{name} spi=0x{i['spi']:08x} dst={i['daddr']}"
    pol = fields.get("policy")
    if isinstance(pol, dict):
        s = pol["sel"]
        return f"{name} {s['saddr']}/{s['prefixlen_s']}->{s['daddr']}/{s['prefixlen_d']} dir={pol['dir']}"
    if name == "NetlinkError":
        return f"{name} error={fields['error']} request_type={fields['request']['type']}"
    if name == "SADInfo":
        return f"{name} count={fields['count']}"
    return f"{name} type={X.MSG_NAMES.get(ev.nl.type, ev.nl.type)}"


def format_line(item: Datagram, ev: Event) -> str:
    """One human line: time, netns, direction, event summary."""
    ts = datetime.fromtimestamp(item.ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    arrow = "->kernel" if item.outgoing else "<-kernel"
    return f"{ts} {item.netns} {arrow} {_describe(ev)}"


async def replay(path: str, speed: float | None, json_lines: bool, out: TextIO | None = None) -> int:
    """Print every event of the capture (to ``out``, default stdout); returns the number of malformed datagrams."""
    out = out or sys.stdout
    bad = 0
    async for item in ReplaySource(path, speed).items():
        assert isinstance(item, Datagram)
        try:
            events = decode_datagram(item.data)
        except MalformedMessage as exc:
            bad += 1
            print(f"malformed datagram at {item.ts:.6f} ({len(item.data)} bytes): {exc}", file=sys.stderr)
            continue
        for ev in events:
            if json_lines:
                obj = {"ts": item.ts, "netns": item.netns, "outgoing": item.outgoing, "type": type(ev).__name__,
                       **to_json(ev)}
                out.write(orjson.dumps(obj).decode() + "\n")
            else:
                out.write(format_line(item, ev) + "\n")
    out.flush()
    return bad


def run(args: argparse.Namespace) -> int:
    """Entry point of ``monitor replay``."""
    if not args.fast and not args.speed > 0:  # also refuses nan
        print("monitor replay: error: --speed must be positive (or use --fast)", file=sys.stderr)
        return 2
    try:
        bad = asyncio.run(replay(args.file, None if args.fast else args.speed, args.json))
    except BrokenPipeError:  # pragma: no cover - `| head`
        return 0
    except (MonitorError, OSError) as exc:
        print(f"monitor replay: error: {exc}", file=sys.stderr)
        return 2
    return 1 if bad else 0
