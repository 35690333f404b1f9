"""``monitor tail``: follow a running ``monitor serve``, one line per health event, ``tail -f`` style.

Lines are health events (``tunnel_up``, ``state_changed``, ``rekey_completed`` ...; every state
change is a ``state_changed`` event), so each line has a unique ``seq``. The tailer remembers the
last ``seq`` it printed and, after any disconnect, reconnects with ``?since=SEQ``: the server
replays what was missed from its ring buffer. What the websocket cannot replay (a ``gap`` from a
slow read, a ring that moved on, or a *restarted* server whose sequence numbers began again) is
fetched from ``GET /api/v1/events``, so no line is lost or printed twice while the server keeps it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

import aiohttp
import orjson
from yarl import URL

from monitor.render import colour_enabled, format_event, format_netns_hint

DEFAULT_URL = "ws://127.0.0.1:8787/ws"
MAX_BACKOFF = 5.0


def add_parser(sub: Any) -> None:
    """Register ``monitor tail``."""
    p = sub.add_parser("tail", help="follow a running monitor serve: one line per event or state change",
                       description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--url", default=os.environ.get("MONITOR_URL", DEFAULT_URL),
                   help=f"websocket URL of monitor serve (env MONITOR_URL; default {DEFAULT_URL}); "
                        "the token comes from env MONITOR_TOKEN")
    p.add_argument("--json", action="store_true", help="print each event as one JSON object per line")
    p.add_argument("--hints", choices=("auto", "yes", "no"), default="auto",
                   help="print namespace hints (lint, xfrm_stat) as they appear (auto: yes, but not with --json, "
                        "whose lines are events only unless asked: they are then {\"type\": \"netns_hint\", ...})")
    p.add_argument("-n", "--lines", type=int, default=10, metavar="N",
                   help="first print the last N events the server still holds (default 10)")
    for name, what in (("tunnel", "tunnel id"), ("netns", "network namespace"),
                       ("event", "event type, e.g. rekey_failed"), ("state", "tunnel state (tunnel updates)")):
        p.add_argument(f"--{name}", action="append", default=[], metavar=name.upper(),
                       help=f"only this {what} (repeatable or comma list)")
    p.add_argument("--since", metavar="DURATION",
                   help="first print the events of the last DURATION (1h, 30m, 2d) from the server's history "
                        "instead of the last N")
    p.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                   help="colour the output (auto: on a TTY unless NO_COLOR is set)")
    p.set_defaults(func=run)


class Tailer:
    """The reconnecting websocket client behind ``monitor tail`` (testable with any output stream)."""

    def __init__(self, url: str, *, token: str | None = None, filters: Mapping[str, list[str]] | None = None,
                 json_lines: bool = False, colour: bool = False, lines: int = 10, since_ts: float | None = None,
                 hints: bool | None = None,
                 out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> None:
        self.url = URL(url)
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.filters = {k: ",".join(v) for k, v in (filters or {}).items() if v}
        self.json_lines, self.colour, self.lines = json_lines, colour, lines
        self.hints = (not json_lines) if hints is None else hints
        self.since_ts = since_ts  # --since: start from the events at or after this wall time
        self.out, self.err = out, err
        self.last_seq: int | None = None
        self.instance: str | None = None
        self.printed = 0
        self.connected = False
        self.hints_seen: dict[str, set[tuple[str, str]]] = {}  # netns -> (code, text) already printed

    # --- output -------------------------------------------------------------------------------

    def _print(self, event: Mapping[str, Any]) -> None:
        seq = event.get("seq")
        if not isinstance(seq, int) or (self.last_seq is not None and seq <= self.last_seq):
            return  # already printed
        line = orjson.dumps(event).decode() if self.json_lines else format_event(event, self.colour)
        self.out.write(line + "\n")
        self.out.flush()
        self.last_seq = seq
        self.printed += 1

    def _print_netns(self, message: Mapping[str, Any]) -> None:
        """A ``netns`` message: its hints that were not printed yet (a namespace's lint and xfrm_stat)."""
        doc = message.get("netns")
        if not self.hints or not isinstance(doc, Mapping):
            return
        name = str(doc.get("netns"))
        hints = [(str(h.get("code")), str(h.get("text"))) for h in doc.get("hints") or () if isinstance(h, Mapping)]
        seen = self.hints_seen.setdefault(name, set())
        new = [h for h in hints if h not in seen]
        seen.intersection_update(hints)  # a hint that went away is printed again when it comes back
        seen.update(new)
        for code, text in new:
            line = (orjson.dumps({"type": "netns_hint", "ts": message.get("ts"), "netns": name, "code": code,
                                  "text": text}).decode()
                    if self.json_lines else format_netns_hint(message.get("ts"), name, code, text, self.colour))
            self.out.write(line + "\n")
        if new:
            self.out.flush()

    def _note(self, text: str) -> None:
        self.err.write(f"monitor tail: {text}\n")
        self.err.flush()

    # --- REST back-fill -------------------------------------------------------------------------

    def _rest_url(self) -> URL:
        scheme = "https" if self.url.scheme == "wss" else "http"
        return self.url.with_scheme(scheme).with_path("/api/v1/events").with_query(None)

    async def _backfill(self, session: aiohttp.ClientSession, since: int, upto: int,
                        frm: float | None = None) -> None:
        """Print the events ``since < seq <= upto`` that the server still holds (with ``frm``: only those at
        or after that wall time, from the server's history)."""
        query = {k: v for k, v in self.filters.items() if k in ("tunnel", "netns", "event")}
        if frm is not None:
            query["from"] = repr(frm)
        while since < upto:
            params = {**query, "since": str(since), "limit": "10000"}
            async with session.get(self._rest_url(), params=params, headers=self.headers) as resp:
                resp.raise_for_status()
                body = await resp.json(loads=orjson.loads)
            events = [e for e in body.get("events", []) if since < e.get("seq", 0) <= upto]
            if body.get("truncated") and events and events[0]["seq"] > since + 1:
                self._note(f"events {since + 1}..{events[0]['seq'] - 1} are no longer held by the server")
            for ev in events:
                self._print(ev)
            if not body.get("more") or not events:
                return
            since = events[-1]["seq"]

    # --- websocket ----------------------------------------------------------------------------------

    def _ws_url(self) -> URL:
        query = {**self.filters, "snapshot": "0"}
        if self.last_seq is not None:
            query["since"] = str(self.last_seq)
        return self.url.update_query(query)

    async def _on_hello(self, session: aiohttp.ClientSession, hello: Mapping[str, Any]) -> None:
        seq, resumed, instance = int(hello.get("seq", 0)), bool(hello.get("resumed")), hello.get("instance")
        restarted = (self.instance is not None and instance is not None and instance != self.instance) or (
            self.last_seq is not None and seq < self.last_seq and not resumed)
        self.instance = instance if isinstance(instance, str) else self.instance
        self.connected = True
        if self.last_seq is None and self.since_ts is not None:  # --since: from history
            self.last_seq = 0
            await self._backfill(session, 0, seq, frm=self.since_ts)
            self.last_seq = seq
            return
        if self.last_seq is None:  # first connection: show the last few lines, like tail
            self.last_seq = max(0, seq - self.lines)
            await self._backfill(session, self.last_seq, seq)
            self.last_seq = seq
            return
        if restarted:
            self._note("server restarted; printing its events from the start")
            upto = self.last_seq if resumed else seq  # a resumed stream continues after our old seq
            self.last_seq = 0
            await self._backfill(session, 0, upto)
            self.last_seq = max(self.last_seq, upto)
        elif not resumed:
            await self._backfill(session, self.last_seq, seq)
            self.last_seq = max(self.last_seq, seq)

    async def _session(self, session: aiohttp.ClientSession) -> None:
        async with session.ws_connect(self._ws_url(), headers=self.headers, heartbeat=20.0) as ws:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                data = orjson.loads(msg.data)
                mtype = data.get("type")
                if mtype == "hello":
                    await self._on_hello(session, data)
                elif mtype == "event":
                    self._print(data["event"])
                elif mtype == "netns":
                    self._print_netns(data)
                elif mtype == "gap" and data.get("reason") == "slow_client":
                    await self._backfill(session, int(data["from_seq"]) - 1, int(data["to_seq"]))

    async def run(self) -> int:
        """Follow the server until cancelled; returns an exit status for fatal errors (auth)."""
        backoff = 0.2
        async with aiohttp.ClientSession() as session:
            while True:
                self.connected = False
                try:
                    await self._session(session)
                    self._note("connection closed; reconnecting")
                except aiohttp.WSServerHandshakeError as exc:
                    if exc.status == 401:
                        self._note(f"{self.url}: HTTP 401: set MONITOR_TOKEN to the server's token")
                        return 2
                    if exc.status == 403:
                        self._note(f"{self.url}: HTTP 403: the server refused this client")
                        return 2
                    if backoff == 0.2:
                        self._note(f"{self.url}: HTTP {exc.status}; retrying")
                except (aiohttp.ClientError, OSError) as exc:
                    if backoff == 0.2 or self.connected:
                        self._note(f"cannot reach {self.url} ({exc.__class__.__name__}); retrying")
                if self.connected:
                    backoff = 0.2
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)


def run(args: argparse.Namespace) -> int:
    """``monitor tail``: exit 0 on Ctrl-C, 2 on a refused token."""
    auto = colour_enabled(sys.stdout.isatty(), os.environ)
    colour = auto if args.color == "auto" else args.color == "always"
    filters = {k: [x for v in getattr(args, k) for x in v.split(",") if x]
               for k in ("tunnel", "netns", "event", "state")}
    since_ts = None
    if args.since:
        from monitor.store.queries import parse_duration  # noqa: PLC0415

        try:
            since_ts = time.time() - parse_duration(args.since)
        except ValueError as exc:
            print(f"monitor tail: error: --since: {exc}", file=sys.stderr)
            return 2
    tailer = Tailer(args.url, token=os.environ.get("MONITOR_TOKEN") or None, filters=filters,
                    json_lines=args.json, colour=colour, lines=args.lines, since_ts=since_ts,
                    hints=None if args.hints == "auto" else args.hints == "yes")
    try:
        return asyncio.run(tailer.run())
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # `monitor tail | head`
        sys.stderr.close()
        return 0
