"""Tunnel identity, per-SA and per-tunnel state, and the health transition table (pure data + JSON).

Rules / theory of operation
---------------------------
* A **tunnel** is every SA and policy of one IPsec connection. Its key is
  ``(netns, reqid, if_id, mark, {outer address pair})``: reqid alone is not unique across daemons,
  restarts or xfrm interfaces (``xfrm-netlink.md`` 4.3). The pair is unordered, so the inbound
  SA (remote -> local) and the outbound SA (local -> remote) land in the same tunnel.
* A tunnel id is ``"{netns}:{reqid}:{lo}-{hi}"`` plus ``":if{if_id}"`` / ``":m{mark:x}"`` when
  non-zero. It has no ``/`` (URL-path safe) and does not change across rekeys or restarts.
* The **state** is one of ``TunnelState``. Every evaluation turns the tunnel's evidence into one
  ``Trigger`` (the most severe condition that holds, see ``monitor.health.correlate``), and the next state
  is ``TRANSITIONS[state][trigger]``. The table is the single source of truth; the diagram in
  ``docs/health-model.md`` is generated from it (``python -m monitor.health.tunnel --diagram``).
* Per-SA state is a ``__slots__`` object holding only numbers and interned strings, never the
  decoded ``SA`` record, so 200k SAs fit in a few hundred MB.
"""

from __future__ import annotations

import enum
import functools
import sys
from collections.abc import Sequence
from typing import Any, Final

from monitor.health.model import Reason
from monitor.health.sastate import DIR_IN, DIR_OUT, PolicyInfo, SAState

__all__ = [
    "TRANSITIONS",
    "Trigger",
    "Tunnel",
    "TunnelState",
    "mermaid_diagram",
    "tunnel_id",
]

class TunnelState(enum.StrEnum):
    """Health states, most severe first in ``monitor.health.correlate``'s evaluation order."""

    UP = "up"  #: both directions have a live SA and traffic (or no reason to worry yet)
    IDLE = "idle"  #: SAs up, no bytes either way for ``idle_after``
    ONE_WAY = "one-way"  #: outbound grows, inbound flat
    REKEYING = "rekeying"  #: soft expire seen, no new SA pair yet
    EXPIRING = "expiring"  #: hard expiry within ``expiring_margin`` and no successor
    DOWN = "down"  #: a direction has no SA (or nothing is installed at all)
    ERRORS = "errors"  #: replay / integrity counters increasing


class Trigger(enum.StrEnum):
    """The condition an evaluation found; input to ``TRANSITIONS``."""

    LOST = "lost"  #: an SA direction is missing
    HARD_NEAR = "hard_near"  #: hard expiry near, no successor
    ERRORS = "errors"  #: replay/integrity counters rose within ``errors_window``
    SOFT_EXPIRED = "soft_expired"  #: a rekey is in progress
    ONE_WAY = "one_way"  #: outbound moving, inbound flat
    IDLE = "idle"  #: nothing moving
    OK = "ok"  #: none of the above


S = TunnelState
T = Trigger
# TRANSITIONS[state][trigger] -> next state. Every state lists every trigger, so evaluation never
# meets a missing entry. Evaluation applies the table until the state is stable (as h11's
# ``_fire_state_triggered_transitions`` does): a tunnel leaving ``down`` always passes through
# ``up`` first (so ``tunnel_up`` is emitted), then moves on to whatever condition holds.
# The tests check that every state is reachable and leavable.
TRANSITIONS: Final[dict[TunnelState, dict[Trigger, TunnelState]]] = {
    S.DOWN: {T.LOST: S.DOWN, T.HARD_NEAR: S.UP, T.ERRORS: S.UP, T.SOFT_EXPIRED: S.UP,
             T.ONE_WAY: S.UP, T.IDLE: S.UP, T.OK: S.UP},
    S.UP: {T.LOST: S.DOWN, T.HARD_NEAR: S.EXPIRING, T.ERRORS: S.ERRORS, T.SOFT_EXPIRED: S.REKEYING,
           T.ONE_WAY: S.ONE_WAY, T.IDLE: S.IDLE, T.OK: S.UP},
    S.IDLE: {T.LOST: S.DOWN, T.HARD_NEAR: S.EXPIRING, T.ERRORS: S.ERRORS, T.SOFT_EXPIRED: S.REKEYING,
             T.ONE_WAY: S.ONE_WAY, T.IDLE: S.IDLE, T.OK: S.UP},
    S.ONE_WAY: {T.LOST: S.DOWN, T.HARD_NEAR: S.EXPIRING, T.ERRORS: S.ERRORS, T.SOFT_EXPIRED: S.REKEYING,
                T.ONE_WAY: S.ONE_WAY, T.IDLE: S.IDLE, T.OK: S.UP},
    S.REKEYING: {T.LOST: S.DOWN, T.HARD_NEAR: S.EXPIRING, T.ERRORS: S.ERRORS, T.SOFT_EXPIRED: S.REKEYING,
                 T.ONE_WAY: S.ONE_WAY, T.IDLE: S.IDLE, T.OK: S.UP},
    S.EXPIRING: {T.LOST: S.DOWN, T.HARD_NEAR: S.EXPIRING, T.ERRORS: S.ERRORS, T.SOFT_EXPIRED: S.REKEYING,
                 T.ONE_WAY: S.ONE_WAY, T.IDLE: S.IDLE, T.OK: S.UP},
    S.ERRORS: {T.LOST: S.DOWN, T.HARD_NEAR: S.EXPIRING, T.ERRORS: S.ERRORS, T.SOFT_EXPIRED: S.REKEYING,
               T.ONE_WAY: S.ONE_WAY, T.IDLE: S.IDLE, T.OK: S.UP},
}
INITIAL_STATE: Final = S.DOWN
del S, T


@functools.lru_cache(maxsize=1024)  # few namespaces, one call per new tunnel: 100k tunnels at a first load
def _safe(netns: str) -> str:
    """A netns name made URL-path safe (``/proc/1/ns/net`` -> ``_proc_1_ns_net``)."""
    if not netns:
        return "host"
    if netns.isalnum():
        return netns
    return "".join(c if c.isalnum() or c in "._-~" else "_" for c in netns)


def tunnel_id(netns: str, reqid: int, *, if_id: int, mark: int, lo: str, hi: str) -> str:
    """The stable, URL-path-safe id of a tunnel key (``lo``/``hi`` are the sorted outer addresses)."""
    tid = f"{_safe(netns)}:{reqid}:{lo}-{hi}"
    if if_id:
        tid += f":if{if_id}"
    if mark:
        tid += f":m{mark:x}"
    # not sys.intern'd: every holder shares the Tunnel's own ``id`` object, and the interpreter's interned
    # table cost ~25 bytes per SA at 100k tunnels (bench/RESULTS.md, "RSS per SA")
    return tid


class Tunnel:
    """All state of one tunnel. Counters are monotonic totals over every SA generation."""

    __slots__ = (
        "acq_count",
        "acq_deadline",
        "anomalies",
        "bytes_in",
        "bytes_out",
        "d_bi",
        "d_bo",
        "d_pi",
        "d_po",
        "down_cause",
        "down_secs",
        "err_codes",
        "err_until",
        "flaps",
        "gone_sels",
        "had_sa",
        "halves",
        "held_since",
        "hi",
        "hints",
        "id",
        "if_id",
        "in_since",
        "integrity_errors",
        "last_in_ts",
        "last_out_ts",
        "last_rekey",
        "lo",
        "local",
        "local_known",
        "mark",
        "netns",
        "packets_in",
        "packets_out",
        "policies",
        "policies_gone",
        "rate_bi",
        "rate_bo",
        "rate_pi",
        "rate_po",
        "reasons",
        "rekey_failures",
        "rekeys",
        "replay_errors",
        "reqid",
        "rk_mark",
        "rk_old",
        "rk_soft",
        "rk_start",
        "sas",
        "since",
        "state",
        "successor",
        "timer_at",
        "up_since",
    )

    def __init__(self, tid: str, netns: str, *, reqid: int, if_id: int, mark: int, lo: str, hi: str,
                 now: float) -> None:
        self.id = tid
        self.netns = netns
        self.reqid = reqid
        self.if_id = if_id
        self.mark = mark
        self.lo = lo
        self.hi = hi
        self.local: str = lo
        self.local_known = False
        self.state = INITIAL_STATE
        self.since = now
        self.reasons: tuple[Reason, ...] = ()
        self.sas: list[SAState] = []
        self.policies: list[PolicyInfo] = []
        self.bytes_in = self.bytes_out = self.packets_in = self.packets_out = 0
        self.d_bi = self.d_bo = self.d_pi = self.d_po = 0  # deltas since the last SA dump ended
        self.rate_bi = self.rate_bo = self.rate_pi = self.rate_po = 0.0
        self.last_in_ts = self.last_out_ts = now
        self.up_since = now
        self.rekeys = self.rekey_failures = 0
        self.last_rekey: dict[str, Any] | None = None
        self.rk_start: float | None = None  # rekey in progress since (soft expire or first new SA)
        self.rk_old: tuple[int, ...] = ()  # SPIs of the generation being replaced
        self.rk_soft = False
        self.rk_mark = 0  # SAs installed with an order above this belong to the new generation
        self.replay_errors = self.integrity_errors = 0
        self.anomalies = 0  # counter values that cannot be true (monitor.health.counters)
        self.flaps = 0  # times the tunnel went down from a working state (tunnel_down events)
        self.down_secs = 0.0  # seconds spent down in finished down intervals (the current one is added on read)
        #: ``((if_id, mark, direction), ...)`` when the connection's directions carry different if_ids or
        #: marks (``mark_in != mark_out``) and were joined into this tunnel (``monitor.health.halves``).
        self.halves: tuple[tuple[int, int, str], ...] | None = None
        self.had_sa = False  # some SA was ever installed (a policy-only tunnel leaves with its policies)
        self.successor: str | None = None  # id of the tunnel that took its policies under a new reqid
        self.gone_sels: frozenset[tuple[Any, ...]] | None = None  # selectors of its removed policies
        self.held_since: float | None = None  # left with no policy and a direction missing: down held from here
        self.in_since = 0.0  # when inbound bytes started moving after a pause of one_way_after or more
        self.policies_gone = 0.0  # when the last policy went (core time); 0: never had one, or has some
        self.err_until = 0.0
        self.err_codes: tuple[str, ...] = ()  # "replay_errors" / "integrity_errors" seen in the window
        self.down_cause = "no_sa"
        self.acq_deadline: float | None = None
        self.acq_count = 0
        self.hints: dict[str, tuple[Reason, float]] | None = None  # code -> (hint, valid until)
        self.timer_at = float("inf")

    @property
    def remote(self) -> str:
        """The outer address of the far end."""
        return self.hi if self.local == self.lo else self.lo

    def newest(self, direction: int) -> SAState | None:
        """The most recently installed live SA of ``direction``."""
        best = None
        for sa in self.sas:
            if sa.dir == direction and (best is None or sa.order > best.order):
                best = sa
        return best

    def newest_pair(self) -> tuple[SAState | None, SAState | None]:
        """``(newest(DIR_IN), newest(DIR_OUT))`` in one pass."""
        nin = nout = None
        for sa in self.sas:
            if sa.dir == DIR_IN:
                if nin is None or sa.order > nin.order:
                    nin = sa
            elif sa.dir == DIR_OUT and (nout is None or sa.order > nout.order):
                nout = sa
        return nin, nout

    def hard_expires_at(self) -> float:
        """Earliest hard expiry of the newest generation (0: none)."""
        at = 0.0
        for direction in (DIR_IN, DIR_OUT):
            sa = self.newest(direction)
            if sa is not None and sa.hard_at and (not at or sa.hard_at < at):
                at = sa.hard_at
        return at

    def counters_row(self) -> list[Any]:
        """``[id, bytes_in, bytes_out, packets_in, packets_out, rate_in_bps, rate_out_bps, state]``."""
        return [self.id, self.bytes_in, self.bytes_out, self.packets_in, self.packets_out,
                round(self.rate_bi, 3), round(self.rate_bo, 3), str(self.state)]

    def metrics_row(self, now: float) -> tuple[Any, ...]:
        """What ``/metrics`` exports of this tunnel, the values :meth:`to_json` would show, without building it:
        ``(netns, reqid, local, remote, id, if_id, mark, state, bytes_in, bytes_out, packets_in, packets_out,
        rekeys, rekey_failures, hard_expires_in | None, replay_errors, integrity_errors, flaps, downtime)``."""
        hard = 0.0  # hard_expires_at() in one pass over the SAs
        for sa in self.newest_pair():
            if sa is not None and sa.hard_at and (not hard or sa.hard_at < hard):
                hard = sa.hard_at
        return (self.netns, self.reqid, self.local, self.remote, self.id, self.if_id, self.mark, str(self.state),
                self.bytes_in, self.bytes_out, self.packets_in, self.packets_out, self.rekeys, self.rekey_failures,
                round(hard - now, 3) if hard else None, self.replay_errors, self.integrity_errors, self.flaps,
                round(self.down_secs + (now - self.since if self.state is TunnelState.DOWN else 0.0), 3))

    def to_json(self, now: float, extra_hints: Sequence[Reason] = (), wall_skew: float = 0.0) -> dict[str, Any]:
        """The public tunnel dict (schema 1). Rates are bytes (packets) per second.

        ``now`` and every stored instant are core time (monotonic); instants are shown in wall time,
        ``core + wall_skew`` (see ``monitor.health.engine.Engine.wall_skew``)."""
        hard = self.hard_expires_at()
        hints = [h.to_json() for h in extra_hints]
        if self.hints:
            hints.extend(h.to_json() for h, until in self.hints.values() if until > now)
        sels: list[dict[str, Any]] = []
        for p in sorted(self.policies, key=lambda p: (p.dir != 1, p.index)):
            sel = p.selector_json()
            if sel not in sels:
                sels.append(sel)
        return {
            "id": self.id,
            "netns": self.netns,
            "reqid": self.reqid,
            "if_id": self.if_id,
            "mark": self.mark,
            **({"halves": [{"if_id": i, "mark": m, "direction": d} for i, m, d in self.halves]}
               if self.halves else {}),
            "local": self.local,
            "remote": self.remote,
            "state": str(self.state),
            "since": self.since + wall_skew,
            "reasons": [r.to_json() for r in self.reasons],
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "packets_in": self.packets_in,
            "packets_out": self.packets_out,
            "rate_in_bps": round(self.rate_bi, 3),
            "rate_out_bps": round(self.rate_bo, 3),
            "rate_in_pps": round(self.rate_pi, 3),
            "rate_out_pps": round(self.rate_po, 3),
            "rekeys": self.rekeys,
            "rekey_failures": self.rekey_failures,
            "last_rekey": ({**self.last_rekey, "ts": self.last_rekey["ts"] + wall_skew}
                           if self.last_rekey is not None and wall_skew else self.last_rekey),
            "hard_expires_in": round(hard - now, 3) if hard else None,
            "selectors": sels,
            "udp_encap": any(sa.encap is not None for sa in self.sas),
            "sas": [sa.to_json(now, wall_skew) for sa in sorted(self.sas, key=lambda s: (s.dir, s.order))],
            "hints": hints,
            "replay_errors": self.replay_errors,
            "integrity_errors": self.integrity_errors,
            "counter_anomalies": self.anomalies,
            "flaps": self.flaps,
            "downtime": round(self.down_secs + (now - self.since if self.state is TunnelState.DOWN else 0.0), 3),
            "probe": None,
        }


# --- the diagram ------------------------------------------------------------------------------------
DIAGRAM_BEGIN: Final = "<!-- BEGIN GENERATED STATE DIAGRAM (python -m monitor.health.tunnel --diagram) -->"
DIAGRAM_END: Final = "<!-- END GENERATED STATE DIAGRAM -->"


def mermaid_diagram() -> str:
    """A Mermaid ``stateDiagram-v2`` of ``TRANSITIONS`` (self-loops left out; edges merged per pair)."""
    def node(s: TunnelState) -> str:
        return s.value.replace("-", "_")

    lines = ["```mermaid", "stateDiagram-v2"]
    lines += [f'    state "{s.value}" as {node(s)}' for s in TunnelState if node(s) != s.value]
    lines.append(f"    [*] --> {node(INITIAL_STATE)}")
    for src, row in TRANSITIONS.items():
        targets: dict[TunnelState, list[str]] = {}
        for trig, dst in row.items():
            if dst is not src:
                targets.setdefault(dst, []).append(trig.value)
        for dst, trigs in targets.items():
            lines.append(f"    {node(src)} --> {node(dst)}: {', '.join(trigs)}")
    lines.append("```")
    return "\n".join(lines) + "\n"


def _write_diagram(path: str) -> None:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    head, _, rest = text.partition(DIAGRAM_BEGIN)
    _, _, tail = rest.partition(DIAGRAM_END)
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"{head}{DIAGRAM_BEGIN}\n{mermaid_diagram()}{DIAGRAM_END}{tail}")


def main(argv: Sequence[str]) -> int:
    """``python -m monitor.health.tunnel --diagram [--write docs/health-model.md]``."""
    if "--write" in argv:
        _write_diagram(argv[argv.index("--write") + 1])
        return 0
    if "--diagram" in argv:
        sys.stdout.write(mermaid_diagram())
        return 0
    sys.stderr.write("usage: python -m monitor.health.tunnel --diagram | --write FILE\n")
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
