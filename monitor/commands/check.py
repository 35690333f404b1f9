"""``monitor check``: a one-shot health check for cron and Nagios/Icinga (no server needed).

It reads the kernel directly (one dump round per namespace through ``KernelSource``, the pipeline
and the correlator), or a capture (``replay:FILE``), or a few simulated minutes (``simulate``),
then prints a Nagios-style summary line followed by one line per unhealthy tunnel with its reasons.

Exit status (Nagios plugin convention):

====  ==========  ==============================================================================
code  status      when
====  ==========  ==============================================================================
0     OK          every tunnel is ``up`` or ``rekeying`` (and ``--min-tunnels`` is met)
1     WARNING     a tunnel is in a ``--warn-state`` (default ``idle``, ``one-way``, ``errors``),
                  or its hard expiry is under ``--warn-expiry`` seconds, or a namespace has a hint
                  (policy lint with ``--config``'s ``[health]`` ranges; not with ``--tunnel``)
2     CRITICAL    a tunnel is in a ``--crit-state`` (default ``down``, ``expiring``), its hard
                  expiry is under ``--crit-expiry`` seconds, or fewer than ``--min-tunnels`` exist
3     UNKNOWN     the check could not run: no CAP_NET_ADMIN, no such netns, no XFRM support,
                  an unreadable capture, or no complete dump within ``--timeout``
====  ==========  ==============================================================================
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from monitor.errors import ConfigError, MonitorError, SourceError
from monitor.health.correlate import Correlator
from monitor.health.model import HealthConfig
from monitor.health.pipeline import Pipeline
from monitor.health.timers import run_due_timers
from monitor.render import colour_enabled, format_tunnel
from monitor.serve.hub import netns_docs
from monitor.sources import netns as N
from monitor.sources.items import Control, Datagram
from monitor.sources.simfleet import Fleet, FleetConfig
from monitor.wire import xfrm as X
from monitor.wire.decode import iter_messages
from monitor.wire.pcap import read_pcap

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
STATUS = ("OK", "WARNING", "CRITICAL", "UNKNOWN")
ALL_STATES = ("up", "idle", "one-way", "rekeying", "expiring", "down", "errors")
DEFAULT_WARN = ("idle", "one-way", "errors")
DEFAULT_CRIT = ("down", "expiring")
SIMULATE_SECONDS = 900.0  # simulated time a `--source simulate` check looks at


@dataclass(frozen=True)
class Thresholds:
    """What makes a tunnel WARNING or CRITICAL."""

    warn_states: frozenset[str] = frozenset(DEFAULT_WARN)
    crit_states: frozenset[str] = frozenset(DEFAULT_CRIT)
    warn_expiry: float | None = None
    crit_expiry: float | None = None
    min_tunnels: int = 0
    #: WARNING when a tunnel had more than this many flaps (``tunnel_down``) in the history window.
    max_flaps: int | None = None


@dataclass
class Result:
    """The outcome of a check: exit code, summary line and the unhealthy tunnels."""

    code: int
    summary: str
    unhealthy: list[tuple[int, Mapping[str, Any]]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    total: int = 0
    duration: float = 0.0
    sas: int = 0
    #: ``(netns, code, text)`` of the namespace hints (lint, xfrm_stat); each makes the check WARNING.
    hints: list[tuple[str, str, str]] = field(default_factory=list)


def classify(tunnel: Mapping[str, Any], th: Thresholds) -> int:
    """The Nagios status of one tunnel (OK, WARNING or CRITICAL)."""
    state = str(tunnel.get("state"))
    expiry = tunnel.get("hard_expires_in")
    code = OK
    if state in th.warn_states:
        code = WARNING
    if isinstance(expiry, int | float) and state not in ("down",):
        if th.warn_expiry is not None and expiry < th.warn_expiry:
            code = max(code, WARNING)
        if th.crit_expiry is not None and expiry < th.crit_expiry:
            code = CRITICAL
    flaps = tunnel.get("flaps")
    if th.max_flaps is not None and isinstance(flaps, int) and flaps > th.max_flaps:
        code = max(code, WARNING)
    if state in th.crit_states:
        code = CRITICAL
    return code


def evaluate(tunnels: Sequence[Mapping[str, Any]], th: Thresholds,
             netns: Sequence[Mapping[str, Any]] = ()) -> Result:
    """Pure: the check result for a list of public tunnel objects (``docs/schema/tunnel.json``) and of
    namespace views (``docs/schema/netns.json``): a namespace hint is a WARNING."""
    counts = {s: 0 for s in ALL_STATES}
    unhealthy = []
    for t in tunnels:
        counts[str(t.get("state"))] = counts.get(str(t.get("state")), 0) + 1
        code = classify(t, th)
        if code != OK:
            unhealthy.append((code, t))
    unhealthy.sort(key=lambda ct: (-ct[0], str(ct[1].get("id"))))
    code = max((c for c, _ in unhealthy), default=OK)
    extra = ""
    if len(tunnels) < th.min_tunnels:
        code = CRITICAL
        extra = f", expected at least {th.min_tunnels}"
    hints = [(str(d.get("netns")), str(h.get("code")), str(h.get("text")))
             for d in netns for h in d.get("hints") or () if isinstance(h, Mapping)]
    if hints:
        code = max(code, WARNING)
    n_crit = sum(1 for c, _ in unhealthy if c == CRITICAL)
    n_warn = len(unhealthy) - n_crit
    states = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    summary = (f"IPSEC {STATUS[code]} - {len(tunnels)} tunnels{extra}: {n_crit} critical, {n_warn} warning"
               + (f" ({states})" if states else "") + (f"; {len(hints)} namespace hints" if hints else ""))
    return Result(code, summary, unhealthy, counts, len(tunnels), hints=hints)


def perfdata(r: Result) -> str:
    """Nagios performance data: per-state tunnel counts and the check duration."""
    parts = [f"tunnels={r.total}", *(f"{s.replace('-', '_')}={n}" for s, n in r.counts.items()),
             f"sas={r.sas}", f"duration={r.duration:.3f}s"]
    return " ".join(parts)


# --- reading the tunnels ------------------------------------------------------------------------


def _core(health: Mapping[str, Any] | None = None) -> tuple[Any, Any]:
    try:
        config = HealthConfig(**(health or {}))
    except TypeError as exc:
        raise ConfigError(f"bad [health] setting: {exc}") from None
    correlator = Correlator(config)
    return correlator, Pipeline(correlator)


def _count_sas(tunnels: Iterable[Mapping[str, Any]]) -> int:
    return sum(len(t.get("sas") or ()) for t in tunnels)


def _netns_docs(correlator: Any, now: float, out: list[dict[str, Any]] | None) -> None:
    if out is not None:
        out.extend(netns_docs(correlator, now))


def read_replay(path: str, health: Mapping[str, Any] | None = None,
                netns_out: list[dict[str, Any]] | None = None) -> tuple[list[dict[str, Any]], float]:
    """Feed a whole capture through the pipeline (``now`` = each record's time); snapshot at its end.
    ``netns_out`` (optional) receives each namespace's view (``docs/schema/netns.json``)."""
    correlator, pipeline = _core(health)
    now = 0.0
    for rec in read_pcap(path):
        now = max(now, rec.ts)
        run_due_timers(correlator, now)
        pipeline.feed(Datagram(rec.netns, rec.data, rec.ts, rec.outgoing), now)
    run_due_timers(correlator, now)
    _netns_docs(correlator, now, netns_out)
    return correlator.snapshot(now), now


def read_simulation(tunnels: int, seed: int, seconds: float = SIMULATE_SECONDS,
                    health: Mapping[str, Any] | None = None,
                    netns_out: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Run the simulated fleet for ``seconds`` of simulated time (instantly) and snapshot it."""
    correlator, pipeline = _core(health)
    start = time.time() - seconds
    fleet = Fleet(seed, FleetConfig(tunnels=tunnels), start=start)
    t = start
    while t <= start + seconds:
        for item in fleet.step(t):
            run_due_timers(correlator, item.ts)
            pipeline.feed(item, item.ts)
        nxt = fleet.next_time()
        if nxt is None:
            break
        t = nxt
    now = start + seconds
    run_due_timers(correlator, now)
    _netns_docs(correlator, now, netns_out)
    return list(correlator.snapshot(now))


async def read_kernel(netns: Sequence[str], timeout: float, health: Mapping[str, Any] | None = None,
                      netns_out: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One dump round (GETSA + GETPOLICY) in every namespace through ``KernelSource``; then snapshot.

    Raises:
        SourceError: no CAP_NET_ADMIN, no such namespace, no XFRM netlink.
        TimeoutError: the dumps did not complete within ``timeout`` seconds.
    """
    from monitor.sources.kernel import KernelSource  # noqa: PLC0415 - pyroute2 only when reading the kernel

    names: list[str] = list(netns) or [N.DEFAULT]
    if names == ["all"]:
        names = [N.DEFAULT, *(n for n in N.list_netns() if not N.same_as_own(n))]
    correlator, pipeline = _core(health)
    source = KernelSource(names, interval=3600.0)
    pending: dict[str, dict[int, int]] = {n: {} for n in names}  # netns -> {request seq: msg type}
    done: dict[str, set[int]] = {n: set() for n in names}
    wanted = {X.XFRM_MSG_GETSA, X.XFRM_MSG_GETPOLICY}

    async def consume() -> None:
        items = source.items()
        try:
            await _until_dumped(items)
        finally:
            aclose = getattr(items, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _until_dumped(items: Any) -> None:
        async for item in items:
            now = time.time()
            pipeline.feed(item, now)
            if isinstance(item, Control):
                if item.kind == "source_error":
                    raise SourceError(f"netns {item.netns}: {item.message}")
                continue
            if not isinstance(item, Datagram):
                continue
            for nl, _start, _end in iter_messages(item.data):
                if item.outgoing and nl.type in wanted:
                    pending.setdefault(item.netns, {})[nl.seq] = nl.type
                elif nl.type in (X.NLMSG_DONE, X.NLMSG_ERROR):
                    mtype = pending.get(item.netns, {}).get(nl.seq)
                    if mtype is not None:
                        done.setdefault(item.netns, set()).add(mtype)
            if all(wanted <= done.get(n, set()) for n in names):
                return

    await asyncio.wait_for(consume(), timeout)
    now = time.time()
    run_due_timers(correlator, now)
    _netns_docs(correlator, now, netns_out)
    return list(correlator.snapshot(now))


# --- command line ------------------------------------------------------------------------------


def _states(text: str) -> frozenset[str]:
    values = frozenset(s.strip() for s in text.split(",") if s.strip())
    bad = values - set(ALL_STATES)
    if bad:
        raise argparse.ArgumentTypeError(f"unknown state(s) {', '.join(sorted(bad))}; "
                                         f"choose from {', '.join(ALL_STATES)}")
    return values


def add_parser(sub: Any) -> None:
    """Register ``monitor check``."""
    p = sub.add_parser("check", help="one-shot health check for cron / Nagios (exit 0/1/2/3)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default="kernel", help="kernel (default), replay:FILE.pcap or simulate")
    p.add_argument("--netns", action="append", default=[], metavar="NAME",
                   help="kernel: namespace to read (repeatable; 'default' is our own, 'all' every one)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    p.add_argument("--warn-states", type=_states, default=frozenset(DEFAULT_WARN), metavar="S,S",
                   help=f"states that make the check WARNING (default {','.join(DEFAULT_WARN)})")
    p.add_argument("--crit-states", type=_states, default=frozenset(DEFAULT_CRIT), metavar="S,S",
                   help=f"states that make the check CRITICAL (default {','.join(DEFAULT_CRIT)})")
    p.add_argument("--warn-expiry", type=float, default=None, metavar="SECONDS",
                   help="WARNING when a tunnel's hard expiry is closer than this")
    p.add_argument("--crit-expiry", type=float, default=None, metavar="SECONDS",
                   help="CRITICAL when a tunnel's hard expiry is closer than this")
    p.add_argument("--min-tunnels", type=int, default=0, metavar="N",
                   help="CRITICAL when fewer than N tunnels exist")
    p.add_argument("--tunnel", action="append", default=[], metavar="ID", help="only these tunnel ids")
    p.add_argument("--config", metavar="FILE",
                   help="TOML config of monitor serve: its [health] table (thresholds, lint ranges) applies")
    p.add_argument("--timeout", type=float, default=10.0, help="kernel: give up (UNKNOWN) after this many seconds")
    p.add_argument("--tunnels", type=int, default=24, help="simulate: number of tunnels")
    p.add_argument("--seed", type=int, default=1, help="simulate: random seed")
    p.add_argument("--max-flaps", type=int, default=None, metavar="N",
                   help="WARNING for a tunnel that went down more than N times within --window (from the history "
                        "store of `monitor serve`)")
    p.add_argument("--window", default="1h", metavar="DURATION", help="the --max-flaps window (default 1h)")
    p.add_argument("--state-dir", metavar="DIR", help="where serve's history database is [env MONITOR_STATE_DIR]")
    p.add_argument("--vici", metavar="SOCKET", default=None,
                   help="strongSwan's VICI socket: name tunnels conn/child and add configured children that are "
                        "not up (default with the kernel source: /var/run/charon.vici or /run/charon.vici if there)")
    p.add_argument("--no-vici", action="store_const", const="off", dest="vici", help="do not read strongSwan")
    p.set_defaults(func=run)


def add_flaps(tunnels: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """Give each tunnel its ``flaps`` within ``--window`` from the history store, and a ``flapping`` reason
    when over ``--max-flaps``. Raises ``MonitorError`` (UNKNOWN) without a usable store."""
    from pathlib import Path  # noqa: PLC0415 - only with --max-flaps

    from monitor.store import queries  # noqa: PLC0415
    from monitor.store.schema import DB_NAME, default_state_dir, open_readonly  # noqa: PLC0415

    try:
        window = queries.parse_duration(args.window)
    except ValueError as exc:
        raise MonitorError(f"--window: {exc}") from None
    now = time.time()
    conn = open_readonly((Path(args.state_dir) if args.state_dir else default_state_dir()) / DB_NAME)
    try:
        flaps = {row["id"]: row["flaps"] for row in queries.history_summary(conn, now - window, now)}
    finally:
        conn.close()
    for t in tunnels:
        n = flaps.get(str(t.get("id")), 0)
        t["flaps"] = n
        if n > args.max_flaps:
            t["reasons"] = [*t.get("reasons", []),
                            {"code": "flapping", "text": f"went down {n} times in the last {args.window}"}]


def _read(args: argparse.Namespace, netns_out: list[dict[str, Any]]) -> list[dict[str, Any]]:
    health: Mapping[str, Any] = {}
    if args.config:
        from monitor.serve.config import read_toml  # noqa: PLC0415 - only with --config

        health = read_toml(args.config).get("health") or {}
    kind, _, rest = args.source.partition(":")
    if kind == "replay" and rest:
        return read_replay(rest, health, netns_out)[0]
    if kind == "simulate":
        return read_simulation(args.tunnels, args.seed, health=health, netns_out=netns_out)
    if kind == "kernel" and not rest:
        return asyncio.run(read_kernel(args.netns, args.timeout, health, netns_out))
    raise MonitorError(f"--source must be kernel, replay:FILE.pcap or simulate, not {args.source!r}")


def _unknown(args: argparse.Namespace, message: str) -> int:
    if args.json:
        sys.stdout.write(orjson.dumps({"schema": 1, "status": "UNKNOWN", "exit": UNKNOWN,
                                       "summary": f"IPSEC UNKNOWN - {message}", "tunnels": []}).decode() + "\n")
    else:
        sys.stdout.write(f"IPSEC UNKNOWN - {message}\n")
    return UNKNOWN


def run(args: argparse.Namespace) -> int:
    """``monitor check``: exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN."""
    t0 = time.perf_counter()
    netns: list[dict[str, Any]] = []
    try:
        tunnels = _read(args, netns)
    except MonitorError as exc:  # PermissionDenied, NetnsNotFound, XfrmUnsupported, CaptureFormatError ...
        return _unknown(args, str(exc))
    except TimeoutError:
        return _unknown(args, f"no complete dump within {args.timeout:g} s")
    except OSError as exc:
        return _unknown(args, f"{exc.__class__.__name__}: {exc}")
    ike: dict[str, Any] | None = None
    if args.vici != "off" and (args.vici is not None or args.source == "kernel"):
        from monitor.ike.view import join_once  # noqa: PLC0415 - the vici package only when reading charon

        tunnels, ike = join_once(tunnels, args.vici, timeout=args.timeout,
                                 netns="default" if args.source == "kernel" else None)
    if args.tunnel:
        wanted = set(args.tunnel)
        tunnels = [t for t in tunnels if t.get("id") in wanted]
    if args.max_flaps is not None:
        try:
            add_flaps(tunnels, args)
        except MonitorError as exc:
            return _unknown(args, str(exc))
    th = Thresholds(args.warn_states, args.crit_states, args.warn_expiry, args.crit_expiry, args.min_tunnels,
                    args.max_flaps)
    result = evaluate(tunnels, th, [] if args.tunnel else netns)
    result.sas = _count_sas(tunnels)
    result.duration = time.perf_counter() - t0
    if args.json:
        doc = {"schema": 1, "status": STATUS[result.code], "exit": result.code, "summary": result.summary,
               "counts": result.counts, "total": result.total, "sas": result.sas,
               "duration": round(result.duration, 4),
               "tunnels": [{"status": STATUS[c], "id": t.get("id"), "netns": t.get("netns"),
                            "reqid": t.get("reqid"), "local": t.get("local"), "remote": t.get("remote"),
                            "state": t.get("state"), "reasons": t.get("reasons", []),
                            "hard_expires_in": t.get("hard_expires_in"), "ike": t.get("ike")}
                           for c, t in result.unhealthy],
               "netns_hints": [{"status": "WARNING", "netns": ns, "code": code, "text": text}
                               for ns, code, text in result.hints],
               "ike": ike}
        sys.stdout.write(orjson.dumps(doc).decode() + "\n")
        return result.code
    colour = colour_enabled(sys.stdout.isatty(), os.environ)
    lines = [f"{result.summary} | {perfdata(result)}"]
    lines += [format_tunnel(t, colour) for _, t in result.unhealthy]
    lines += [f"WARNING   namespace {ns}: {code}: {text}" for ns, code, text in result.hints]
    if ike is not None and ike["error"] and (args.vici is not None or ike["socket"] is not None):
        lines.append(f"IKE view unavailable, kernel-only: {ike['error']}")
    sys.stdout.write("\n".join(lines) + "\n")
    return result.code
