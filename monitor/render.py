"""Terminal rendering for ``monitor tail`` and ``monitor check``: one line per event or tunnel.

Pure string formatting from the public JSON (``docs/api.md``): no I/O. Colour is an argument;
the commands switch it on only when stdout is a TTY (and ``NO_COLOR`` is unset).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

__all__ = ["colour_enabled", "format_event", "format_tunnel", "names", "state_colour"]

RESET = "\x1b[0m"
RED, GREEN, YELLOW, BLUE, MAGENTA, CYAN, DIM, BOLD = (
    "\x1b[31m", "\x1b[32m", "\x1b[33m", "\x1b[34m", "\x1b[35m", "\x1b[36m", "\x1b[2m", "\x1b[1m")

_STATE_COLOURS = {
    "up": GREEN, "rekeying": CYAN, "idle": YELLOW, "one-way": YELLOW, "errors": MAGENTA,
    "expiring": RED, "down": RED,
}
_EVENT_COLOURS = {
    "tunnel_up": GREEN, "rekey_completed": GREEN, "sa_added": DIM, "policy_added": DIM,
    "tunnel_down": RED, "rekey_failed": RED, "negotiation_failed": RED, "integrity_errors": MAGENTA,
    "replay_errors": MAGENTA, "rekey_started": CYAN, "acquire": YELLOW, "nat_mapping_changed": BLUE,
    "sa_expired": YELLOW, "sa_deleted": DIM, "policy_removed": DIM, "resync": YELLOW, "tunnel_superseded": CYAN,
}


def colour_enabled(isatty: bool, environ: Mapping[str, str]) -> bool:
    """Colour on a TTY unless ``NO_COLOR`` is set (https://no-color.org); ``FORCE_COLOR`` forces it."""
    if environ.get("FORCE_COLOR"):
        return True
    return isatty and not environ.get("NO_COLOR") and environ.get("TERM") != "dumb"


def state_colour(state: str) -> str:
    """The ANSI colour of a tunnel state (empty for unknown states)."""
    return _STATE_COLOURS.get(state, "")


def _paint(text: str, colour: str, on: bool) -> str:
    return f"{colour}{text}{RESET}" if on and colour else text


def format_time(ts: float) -> str:
    """Local time with milliseconds: ``2024-06-21 12:00:01.234``."""
    frac = int((ts % 1) * 1000)
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) + f".{frac:03d}"


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.1f}" if abs(v) < 1e6 else f"{v:.3g}"
    if isinstance(v, list | tuple):
        return ",".join(_value(x) for x in v)
    if isinstance(v, dict):
        return "{" + " ".join(f"{k}={_value(x)}" for k, x in v.items()) + "}"
    return str(v)


def _reasons(reasons: Any) -> str:
    """``[{code, text}]`` -> ``code: text; code: text`` (text only for the first, to keep lines short)."""
    if not isinstance(reasons, list) or not reasons:
        return ""
    parts = []
    for i, r in enumerate(reasons):
        if isinstance(r, dict):
            code, text = r.get("code", "?"), r.get("text", "")
            parts.append(f"{code}: {str(text).rstrip('.')}" if i == 0 and text else str(code))
        else:
            parts.append(str(r))
    return "; ".join(parts)


def summarise_detail(detail: Mapping[str, Any]) -> str:
    """A short human summary of an event's ``detail``: state transition, reason, then the rest."""
    parts: list[str] = []
    rest = dict(detail)
    old, new = rest.pop("from", None), rest.pop("to", None)
    if new is not None:
        parts.append(f"{old} -> {new}")
    elif old is not None:
        parts.append(f"was {old}")
    text = _reasons(rest.pop("reasons", None))
    reason, why = rest.pop("reason", None), rest.pop("text", None)
    if reason is not None and why:
        text = f"{reason}: {why}" + (f"; {text}" if text else "")
    elif reason is not None:
        parts.append(_value(reason))
    elif why:
        text = str(why) + (f"; {text}" if text else "")
    for key in sorted(rest):
        val = rest[key]
        if val is None or val in ([], {}):
            continue
        if isinstance(val, float) and val > 1e9:  # a timestamp
            val = time.strftime("%H:%M:%S", time.localtime(val))
        parts.append(f"{key}={_value(val)}")
    if text:
        parts.append(f"({text})")
    return " ".join(parts)


def names(ike: Any) -> str:
    """``conn/child`` of an ``ike`` block (a tunnel's, or an event's ``detail.ike``); empty when unnamed."""
    if not isinstance(ike, Mapping) or not ike.get("conn"):
        return ""
    return f"{ike.get('conn')}/{ike.get('child')}" if ike.get("child") else str(ike.get("conn"))


def format_event(event: Mapping[str, Any], colour: bool = False) -> str:
    """One ``monitor tail`` line: ``time  #seq  netns  tunnel  type  detail``; a tunnel the IKE view named is
    followed by ``[conn/child]`` (and charon's last failure, ``ike_error=code``, ends the detail)."""
    etype = str(event.get("type", "?"))
    detail = event.get("detail") or {}
    named = ""
    if isinstance(detail, dict) and isinstance(detail.get("ike"), Mapping):
        ike = detail["ike"]
        named = names(ike)
        err = ike.get("last_error")
        detail = {k: v for k, v in detail.items() if k != "ike"}
        if isinstance(err, Mapping) and err.get("code"):
            detail["ike_error"] = err["code"]
    ts = event.get("ts")
    tunnel = str(event.get("tunnel") or "-") + (f" [{named}]" if named else "")
    paint = _EVENT_COLOURS.get(etype, "")
    new_state = detail.get("to") if isinstance(detail, dict) else None
    if isinstance(new_state, str) and new_state in _STATE_COLOURS:
        paint = _STATE_COLOURS[new_state]
    summary = summarise_detail(detail) if isinstance(detail, dict) else _value(detail)
    line = (f"{format_time(float(ts)) if isinstance(ts, int | float) else '-':23}  "
            f"#{event.get('seq', '?'):<6} {event.get('netns', '-')}  {tunnel:<30}  "
            f"{_paint(f'{etype:<18}', paint, colour)} {summary}")
    return line.rstrip()


def format_netns_hint(ts: Any, netns: str, code: str, text: str, colour: bool = False) -> str:
    """One ``monitor tail`` line for a namespace hint: ``time  netns  hint code: text``."""
    when = format_time(float(ts)) if isinstance(ts, int | float) else "-"
    label = _paint(f"{'hint':<18}", YELLOW, colour)
    return f"{when:23}  {'':7} {netns}  {'-':<30}  {label} {code}: {text}"


def format_tunnel(tunnel: Mapping[str, Any], colour: bool = False) -> str:
    """One ``monitor check`` line for a tunnel: ``STATE id (conn/child, netns, reqid, local -> remote): reasons``
    (``conn/child`` when the IKE view named it)."""
    state = str(tunnel.get("state", "?"))
    label = _paint(f"{state.upper():<9}", state_colour(state), colour)
    reasons = tunnel.get("reasons") or []
    text = " | ".join(f"{r.get('code')}: {r.get('text')}" if isinstance(r, dict) else str(r) for r in reasons)
    expiry = tunnel.get("hard_expires_in")
    exp = f" hard expiry in {expiry:.0f}s" if isinstance(expiry, int | float) else ""
    named = names(tunnel.get("ike"))
    named = f"{named}, " if named else ""
    return (f"{label} {tunnel.get('id')} ({named}{tunnel.get('netns')}, reqid {tunnel.get('reqid')}, "
            f"{tunnel.get('local')} -> {tunnel.get('remote')}){exp}: {text or 'no reason given'}")
