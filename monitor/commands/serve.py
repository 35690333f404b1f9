"""``monitor serve``: websocket stream, REST, Prometheus metrics and the dashboard over one source."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import ssl
import sys
from typing import Any

from aiohttp import web

from monitor.errors import MonitorError
from monitor.serve.config import DEFAULT_HOST, DEFAULT_PORT, Settings, load_settings

log = logging.getLogger("monitor.serve")


def add_source_args(p: argparse.ArgumentParser) -> None:
    """The source flags shared by ``serve`` and ``demo`` (defaults come from config.Settings)."""
    p.add_argument("--source", metavar="SRC",
                   help="kernel (default), replay:FILE.pcap, or simulate [env MONITOR_SOURCE]")
    p.add_argument("--netns", action="append", metavar="NAME",
                   help="kernel: watch this ip-netns namespace (repeatable; default: this process's own)")
    p.add_argument("--all-netns", action="store_const", const=True, dest="all_netns",
                   help="kernel: watch every namespace, following new ones")
    p.add_argument("--interval", type=float, metavar="S", help="kernel: seconds between counter dumps (default 5)")
    p.add_argument("--aevents", action="store_const", const=True,
                   help="kernel: join XFRMNLGRP_AEVENTS (per-packet events; expensive)")
    p.add_argument("--speed", type=float, metavar="X",
                   help="replay/simulate: time acceleration (default 1; replay 0 = as fast as possible)")
    p.add_argument("--tunnels", type=int, metavar="N", help="simulate: number of tunnels (default 24)")
    p.add_argument("--seed", type=int, help="simulate: random seed (default 1)")


def add_parser(sub: Any) -> None:
    """Register ``monitor serve``."""
    p = sub.add_parser("serve", help="serve the live tunnel view: websocket, REST, /metrics, dashboard",
                       description=__doc__)
    p.add_argument("--config", metavar="FILE", help="TOML config file [env MONITOR_CONFIG]")
    p.add_argument("--host", help=f"listen address (default {DEFAULT_HOST}; non-loopback needs a token)")
    p.add_argument("--port", type=int, help=f"listen port (default {DEFAULT_PORT})")
    p.add_argument("--token-file", metavar="FILE",
                   help="file holding the bearer token [env MONITOR_TOKEN holds the token itself]")
    add_source_args(p)
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    p.add_argument("--metrics-tunnels", choices=("all", "unhealthy", "none"),
                   help="per-tunnel series on /metrics: all (default), unhealthy (not up/rekeying), none "
                        "[env MONITOR_METRICS_TUNNELS]")
    p.add_argument("--tls-cert", metavar="PEM",
                   help="serve HTTPS/WSS with this certificate chain [env MONITOR_TLS_CERT]")
    p.add_argument("--tls-key", metavar="PEM", help="the certificate's private key [env MONITOR_TLS_KEY]")
    p.add_argument("--events-log", metavar="FILE|-",
                   help="write every health event as one JSON line to FILE (- for stdout) [env MONITOR_EVENTS_LOG]")
    p.add_argument("--state-dir", metavar="DIR",
                   help="directory of the history database (default: $STATE_DIRECTORY, /var/lib/ipsec-monitor "
                        "as root) [env MONITOR_STATE_DIR]")
    p.add_argument("--no-history", action="store_const", const="off", dest="history",
                   help="keep no history (on by default for the kernel source) [env MONITOR_HISTORY=off]")
    p.add_argument("--history", action="store_const", const="on", dest="history",
                   help="keep history for a replayed or simulated source too (needs no --state-dir)")
    p.add_argument("--vici", metavar="SOCKET",
                   help="strongSwan's VICI socket for the IKE view (default auto: /var/run/charon.vici or "
                        "/run/charon.vici with the kernel source) [env MONITOR_VICI]")
    p.add_argument("--no-vici", action="store_const", const="off", dest="vici",
                   help="no IKE view (kernel only)")
    p.add_argument("--whack", metavar="CTL",
                   help="libreswan: pluto's control socket; names from `whack --showstates` (default auto: "
                        "/run/pluto/pluto.ctl when there is no charon socket) [env MONITOR_WHACK]")
    p.add_argument("--no-whack", action="store_const", const="off", dest="whack", help="never read libreswan")
    p.set_defaults(func=run)


FLAG_NAMES = ("host", "port", "token_file", "source", "netns", "all_netns", "interval", "aevents", "speed",
              "tunnels", "seed", "log_level", "metrics_tunnels", "events_log", "tls_cert",
              "tls_key", "state_dir", "history", "vici", "whack")


#: Seconds ``serve`` waits for the source to open before it listens anyway (/healthz then says how it is).
OPEN_TIMEOUT = 10.0



def tls_context(cert: str, key: str) -> ssl.SSLContext:
    """A server context (TLS 1.2 or newer) with the chain and key loaded."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx


def reload_tls(ctx: ssl.SSLContext, cert: str, key: str) -> None:
    """SIGHUP: load a renewed certificate into the live context (new connections get it); a bad file is
    logged and the old certificate stays."""
    try:
        ctx.load_cert_chain(cert, key)
        log.info("TLS certificate reloaded from %s", cert)
    except (OSError, ssl.SSLError) as exc:
        log.error("TLS certificate reload failed, keeping the old one: %s", exc)


def settings_from_args(args: argparse.Namespace, **overrides: Any) -> Settings:
    """Settings from parsed flags (None = not given), the environment and the config file."""
    flags = {k: getattr(args, k, None) for k in FLAG_NAMES}
    flags.update(overrides)
    return load_settings(flags, config=getattr(args, "config", None))


async def serve(settings: Settings, *, ready: Any = None) -> int:
    """Run until SIGINT/SIGTERM or a fatal source error; returns the exit code.

    Args:
        settings: validated settings.
        ready: optional callable given the bound ``(host, port)`` once listening.
    """
    from monitor.serve.handlers import DAEMON  # noqa: PLC0415 - keep `monitor --help` fast
    from monitor.serve.web import create_app  # noqa: PLC0415 - keep `monitor --help` fast

    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    await runner.setup()  # starts the daemon, which opens the source
    daemon = app[DAEMON]
    try:
        # never say "listening" before the source is open: a missing netns, no permission or a file that is
        # not a capture is a start-up error (one line, exit 2), like a bad setting
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(daemon.opened.wait(), OPEN_TIMEOUT)
        if daemon.state == "failed" and daemon.items == 0:
            print(f"monitor serve: error: {daemon.error_text}", file=sys.stderr)
            return 2
        ssl_context = None
        if settings.tls_cert and settings.tls_key:
            try:
                ssl_context = tls_context(settings.tls_cert, settings.tls_key)
            except (OSError, ssl.SSLError) as exc:
                print(f"monitor serve: error: cannot load the TLS certificate or key: {exc}", file=sys.stderr)
                return 2
        site = web.TCPSite(runner, settings.host, settings.port, ssl_context=ssl_context)
        try:
            await site.start()
        except OSError as exc:
            print(f"monitor serve: error: cannot listen on {settings.host}:{settings.port}: {exc.strerror}",
                  file=sys.stderr)
            return 2
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        host, port = sockets[0].getsockname()[:2] if sockets else (settings.host, settings.port)
        shown = f"[{host}]" if ":" in str(host) else host
        scheme = "https" if ssl_context is not None else "http"
        print(f"monitor serve: listening on {scheme}://{shown}:{port}/ (source {settings.source})",
              file=sys.stderr, flush=True)
        if daemon.history is not None:
            daemon.history.report()
        if ready is not None:
            ready(host, port)
        stop = asyncio.Event()
        for sig in signals:
            loop.add_signal_handler(sig, stop.set)
        if ssl_context is not None and settings.tls_cert and settings.tls_key:
            loop.add_signal_handler(signal.SIGHUP, reload_tls, ssl_context, settings.tls_cert, settings.tls_key)
        stopper = asyncio.create_task(stop.wait())
        failer = asyncio.create_task(daemon.failed.wait())
        try:
            done, _ = await asyncio.wait({stopper, failer}, return_when=asyncio.FIRST_COMPLETED)
            if failer in done and daemon.items == 0:
                print(f"monitor serve: error: {daemon.error_text}", file=sys.stderr)
                return 2
            await stopper  # a source that fails later leaves /healthz degraded; keep serving
            return 0
        finally:
            for t in (stopper, failer):
                t.cancel()
    finally:
        for sig in (*signals, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        with contextlib.suppress(Exception):
            await runner.cleanup()


def run(args: argparse.Namespace) -> int:
    """``monitor serve`` entry point."""
    try:
        settings = settings_from_args(args)
    except MonitorError as exc:
        print(f"monitor serve: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from monitor.serve import redact  # noqa: PLC0415 - keep `monitor --help` fast

    redact.install([settings.token] if settings.token else [])
    try:
        import uvloop  # noqa: PLC0415

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency
        runner = asyncio.run
    try:
        return int(runner(serve(settings)))
    except MonitorError as exc:
        print(f"monitor serve: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
