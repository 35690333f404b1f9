"""Rows of the history database (pure): checkpoints and events to and from their stored form.

A stored checkpoint is the JSON of ``TunnelCheckpoint`` (SAs as arrays). Reading one checks every field's
type, so a damaged row is skipped (and counted) instead of feeding nonsense to the correlator.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from monitor.health.checkpoint import SACheckpoint, TunnelCheckpoint
from monitor.health.model import HealthEvent

__all__ = ["I63", "checkpoint_from_blob", "checkpoint_to_blob", "dumps", "event_row"]

I63 = 2**63 - 1  # SQLite's INTEGER is signed 64-bit: totals are clamped there in the ``rates`` table
_INTS = ("bytes_in", "bytes_out", "packets_in", "packets_out", "rekeys", "rekey_failures", "replay_errors",
         "integrity_errors", "anomalies")


def dumps(obj: Any) -> bytes:
    """JSON bytes; the standard library takes the integers orjson refuses (past 64 bits)."""
    try:
        return orjson.dumps(obj)
    except TypeError:
        return json.dumps(obj, separators=(",", ":")).encode()


def event_row(e: HealthEvent) -> tuple[int, float, str, str | None, str, bytes]:
    """``(seq, ts, type, tunnel, netns, detail)`` of the ``events`` table."""
    return e.seq, e.ts, e.type, e.tunnel, e.netns, dumps(e.detail)


def checkpoint_to_blob(cp: TunnelCheckpoint) -> bytes:
    """The stored JSON of a checkpoint."""
    doc = cp._asdict()
    doc["sas"] = [list(s) for s in cp.sas]
    doc["reasons"] = list(cp.reasons)
    return dumps(doc)


def _int(doc: dict[str, Any], name: str) -> int:
    v = doc[name]
    if type(v) is not int or v < 0:
        raise ValueError(f"{name} is not a counter: {v!r}")
    return v


def _float(doc: dict[str, Any], name: str) -> float:
    v = doc[name]
    if type(v) not in (int, float):
        raise ValueError(f"{name} is not a time: {v!r}")
    return float(v)


def checkpoint_from_blob(blob: bytes) -> TunnelCheckpoint:
    """A checkpoint read back; ``ValueError`` when the row is not one (damaged, or not ours)."""
    try:
        doc = orjson.loads(blob)
    except orjson.JSONDecodeError:
        doc = json.loads(blob)  # integers past 64 bits (a counter anomaly held at 2^64 - 1 is not one)
    if not isinstance(doc, dict):
        raise ValueError("a checkpoint is an object")
    try:
        for name in ("id", "netns", "state"):
            if not isinstance(doc[name], str):
                raise ValueError(f"{name} is not a string")
        reasons = doc["reasons"]
        if not isinstance(reasons, list) or not all(isinstance(r, str) for r in reasons):
            raise ValueError("reasons is not a list of codes")
        last = doc["last_rekey"]
        if last is not None and (not isinstance(last, dict) or type(last.get("ts")) not in (int, float)):
            raise ValueError("last_rekey has no time")
        sas = []
        for s in doc["sas"]:
            if (not isinstance(s, list) or len(s) != len(SACheckpoint._fields) or not isinstance(s[1], str)
                    or not all(type(x) is int and x >= 0 for i, x in enumerate(s) if i != 1)):
                raise ValueError(f"not an SA checkpoint: {s!r}")
            sas.append(SACheckpoint(*s))
        ints = {name: _int(doc, name) for name in _INTS}
        flaps = _int(doc, "flaps") if "flaps" in doc else 0
        down_secs = _float(doc, "down_secs") if "down_secs" in doc else 0.0
        return TunnelCheckpoint(
            id=doc["id"], netns=doc["netns"], state=doc["state"], reasons=tuple(reasons),
            since=_float(doc, "since"), up_since=_float(doc, "up_since"), last_rekey=last, sas=tuple(sas), **ints,
            flaps=flaps, down_secs=down_secs)
    except KeyError as exc:
        raise ValueError(f"missing field {exc}") from None
