"""The websocket protocol's vocabulary: message framing, serialisation and client filters (pure).

Every message is one JSON object with ``schema``, ``type`` and ``seq`` (docs/api.md, docs/schema/).
This module builds the bytes; :mod:`monitor.serve.hub` decides who gets them and
:mod:`monitor.serve.session` sends them to one client.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

SCHEMA = 1
# The row layout of ``Correlator.counters_row`` (monitor/health/tunnel.py ``Tunnel.counters_row``).
COUNTER_FIELDS = ("id", "bytes_in", "bytes_out", "packets_in", "packets_out", "rate_in_bps", "rate_out_bps",
                  "state")
STATE_COLUMN = COUNTER_FIELDS.index("state")
#: Rows per counters frame: a big fleet's interval goes out as several frames, serialised between yields.
COUNTERS_CHUNK = 5000
STATES = ("up", "idle", "one-way", "rekeying", "expiring", "down", "errors")


class TunnelView(Protocol):
    """What the hub reads from the correlator (``monitor.health.correlate.Correlator`` satisfies it)."""

    @property
    def seq(self) -> int:
        """Sequence number of the newest health event."""
        ...

    def tunnel_ids(self) -> Iterable[str]:
        """Ids of all known tunnels."""
        ...

    def tunnel_json(self, tunnel_id: str, now: float) -> dict[str, Any] | None:
        """Public JSON of one tunnel, or None if unknown."""
        ...


def _default(obj: Any) -> Any:
    if isinstance(obj, tuple | set | frozenset):
        return list(obj)
    return str(obj)


def dumps(obj: Any) -> bytes:
    """Serialise with orjson (tuples and unknown types degrade to lists and strings).

    orjson refuses integers past 64 bits; the core never makes one (``monitor.health.counters`` holds
    totals at 2^64 - 1), but no input may break a message, so such a value falls back to the standard
    library's encoder, which writes any integer.
    """
    try:
        return orjson.dumps(obj, default=_default)
    except orjson.JSONEncodeError:
        return json.dumps(obj, default=_default, separators=(",", ":"), ensure_ascii=False).encode()


def snapshot_message(seq: int, ts: float, n: int, last: bool, tunnels: list[bytes]) -> bytes:
    """A ``snapshot`` message from already serialised tunnels (the same bytes as serialising them nested)."""
    head = dumps({"schema": SCHEMA, "type": "snapshot", "seq": seq, "ts": ts, "chunk": n, "last": last})
    return head[:-1] + b',"tunnels":[' + b",".join(tunnels) + b"]}"



@dataclass(frozen=True)
class Filters:
    """Client filters; empty means "everything". See docs/api.md "Common query filters"."""

    tunnel: frozenset[str] = frozenset()
    netns: frozenset[str] = frozenset()
    state: frozenset[str] = frozenset()
    event: frozenset[str] = frozenset()

    @classmethod
    def from_query(cls, query: Mapping[str, str] | Any) -> Filters:
        """Build from a (multi)dict of query parameters; raises ValueError on a bad state."""
        def values(*names: str) -> frozenset[str]:
            out: set[str] = set()
            for name in names:
                raw = query.getall(name, []) if hasattr(query, "getall") else [query.get(name, "")]
                for item in raw:
                    out.update(v.strip() for v in str(item).split(",") if v.strip())
            return frozenset(out)

        f = cls(values("tunnel"), values("netns"), values("state"), values("event", "type"))
        bad = f.state - set(STATES)
        if bad:
            raise ValueError(f"unknown state {sorted(bad)[0]!r} (states: {', '.join(STATES)})")
        return f

    @property
    def empty(self) -> bool:
        """True when nothing is filtered out."""
        return not (self.tunnel or self.netns or self.state or self.event)

    def tunnel_ok(self, tid: str, netns: str, state: str | None) -> bool:
        """Does a tunnel with these attributes pass?"""
        return (
            (not self.tunnel or tid in self.tunnel)
            and (not self.netns or netns in self.netns)
            and (not self.state or state in self.state)
        )

    def event_ok(self, ev: Mapping[str, Any]) -> bool:
        """Does an event pass? (The state filter does not apply to events.)"""
        return (
            (not self.tunnel or ev.get("tunnel") in self.tunnel)
            and (not self.netns or ev.get("netns") in self.netns)
            and (not self.event or ev.get("type") in self.event)
        )

    def to_json(self) -> dict[str, list[str]]:
        """The filters as sorted lists (for the hello message)."""
        return {k: sorted(getattr(self, k)) for k in ("tunnel", "netns", "state", "event")}


def counters_frame(rows: list[list[Any]], seq: int, now: float) -> bytes:
    """A ``counters`` message: rows in ``COUNTER_FIELDS`` order."""
    return dumps({"schema": SCHEMA, "type": "counters", "seq": seq, "ts": now,
                  "fields": COUNTER_FIELDS, "rows": rows})


def tunnel_message(seq: int, now: float, tunnel: dict[str, Any]) -> bytes:
    """A ``tunnel`` message: one tunnel's full state."""
    return dumps({"schema": SCHEMA, "type": "tunnel", "seq": seq, "ts": now, "tunnel": tunnel})


def removed_message(seq: int, now: float, tid: str, netns: str) -> bytes:
    """A ``tunnel_removed`` message."""
    return dumps({"schema": SCHEMA, "type": "tunnel_removed", "seq": seq, "ts": now, "id": tid, "netns": netns})


def gap_message(seq: int, reason: str, dropped: int, *, span: tuple[int, int], snapshot_follows: bool) -> bytes:
    """A ``gap`` message: events ``span = (from_seq, to_seq)`` were not delivered (``reason`` says why)."""
    return dumps({"schema": SCHEMA, "type": "gap", "seq": seq, "reason": reason, "dropped": dropped,
                  "from_seq": span[0], "to_seq": span[1], "snapshot_follows": snapshot_follows})
