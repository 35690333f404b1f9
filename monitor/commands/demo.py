"""``monitor demo``: ``monitor serve`` on a simulated fleet, no root and no IPsec needed.

The simulated tunnels (``monitor.sources.simfleet``) are encoded into kernel-layout netlink bytes and go
through the real decoder, pipeline and correlator; the dashboard, websocket, REST API and
``/metrics`` are the real ones. Open the printed URL, or follow it with ``monitor tail``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import webbrowser
from typing import Any

from monitor.errors import MonitorError
from monitor.serve.config import DEFAULT_PORT, load_settings


def add_parser(sub: Any) -> None:
    """Register ``monitor demo``."""
    p = sub.add_parser("demo", help="serve the dashboard on a simulated fleet (try this first)",
                       description=__doc__)
    p.add_argument("--tunnels", type=int, default=24, metavar="N", help="simulated tunnels (default 24)")
    p.add_argument("--speed", type=float, default=1.0, metavar="X",
                   help="simulated seconds per real second (default 1; try 10)")
    p.add_argument("--seed", type=int, default=1, help="random seed of the simulated fleet (default 1)")
    p.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"listen port (default {DEFAULT_PORT}; 0 = any)")
    p.add_argument("--open", action="store_true", help="open the dashboard in a web browser")
    p.set_defaults(func=run)


def dashboard_url(host: str, port: int) -> str:
    """The URL to print for a listening ``(host, port)``."""
    shown = f"[{host}]" if ":" in str(host) else host
    return f"http://{shown}:{port}/"


def run(args: argparse.Namespace) -> int:
    """``monitor demo``: serve until Ctrl-C (exit 0)."""
    from monitor.commands.serve import serve  # noqa: PLC0415 - the serve command's own runner

    try:
        settings = load_settings({"source": "simulate", "tunnels": args.tunnels, "speed": args.speed,
                                  "seed": args.seed, "host": args.host, "port": args.port}, config=None)
    except MonitorError as exc:
        print(f"monitor demo: error: {exc}", file=sys.stderr)
        return 2

    def ready(host: str, port: int) -> None:
        url = dashboard_url(host, port)
        print(f"Dashboard: {url}\nFollow it in a terminal: monitor tail --url ws://{url[7:]}ws\n"
              "Press Ctrl-C to stop.", flush=True)
        if args.open:
            webbrowser.open(url)

    try:
        import uvloop  # noqa: PLC0415 - as monitor serve does

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency
        runner = asyncio.run
    try:
        return int(runner(serve(settings, ready=ready)))
    except MonitorError as exc:
        print(f"monitor demo: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
