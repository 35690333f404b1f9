"""Checkpoints of the correlator (pure): what the history store keeps of each tunnel, and the restore.

A **checkpoint** is a tunnel's totals, rekey counts, state and the last counters of each of its live SAs,
with instants in wall time (``core + wall_skew``: the store outlives the process, the monotonic clock does
not). ``monitor.store`` writes them; after a restart ``restore`` hands them back before the first event,
and each netns's initial load is reconciled with them once it has been dumped:

* an SA live at the checkpoint and still live continues from its checkpointed counters (only its growth
  since is added); an SA that is new adds all of its counters; totals and Prometheus counters never go down;
* checkpointed SAs that are gone took bytes with them that nobody saw: a ``counters_gap`` event says which;
* a tunnel whose SA pair changed (some old SAs gone, new ones live, up before and after) rekeyed at least
  once: ``rekeys`` + 1 and a ``rekey_completed`` event, both marked ``inferred``;
* a tunnel in the same state keeps its ``since`` (and its ``up_since``: uptime continues); one that went
  down or came up while nobody watched gets its ``tunnel_down`` / ``tunnel_up`` marked ``inferred``;
* a checkpointed tunnel with nothing left once the netns is fully loaded went down (if it was not) and is
  marked dirty, so the store closes its history.

The event ``seq`` continues from the checkpoint's, so clients resume across a restart.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

from monitor.health.counters import U64_MAX
from monitor.health.engine import spi_list
from monitor.health.lifecycle import Lifecycle
from monitor.health.model import STATE_CHANGED, TUNNEL_DOWN, TUNNEL_UP, HealthEvent
from monitor.health.nsstate import NetnsState
from monitor.health.sastate import DIR_IN
from monitor.health.tunnel import Tunnel, TunnelState

__all__ = ["Checkpointing", "SACheckpoint", "TunnelCheckpoint"]

SAKey = tuple[int, str, int]  # (spi, daddr, proto): the kernel's xfrm_usersa_id


class SACheckpoint(NamedTuple):
    """The last counters seen of one live SA."""

    spi: int
    daddr: str
    proto: int
    direction: int  # DIR_IN / DIR_OUT
    bytes: int
    packets: int
    replay: int
    integrity: int


class TunnelCheckpoint(NamedTuple):
    """What survives a restart of one tunnel. Instants are wall-clock seconds."""

    id: str
    netns: str
    state: str
    reasons: tuple[str, ...]
    since: float
    up_since: float
    bytes_in: int
    bytes_out: int
    packets_in: int
    packets_out: int
    rekeys: int
    rekey_failures: int
    last_rekey: dict[str, Any] | None
    replay_errors: int
    integrity_errors: int
    anomalies: int
    sas: tuple[SACheckpoint, ...]
    flaps: int = 0
    down_secs: float = 0.0


class Checkpointing(Lifecycle):
    """``checkpoint`` and ``restore`` on top of the SA lifecycle."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._restore: dict[str, dict[str, TunnelCheckpoint]] = {}  # netns -> id -> checkpoint, until loaded

    def restore(self, tunnels: Iterable[TunnelCheckpoint], seq: int) -> None:
        """Continue from a checkpoint (call before the first event): ``seq`` continues, and each netns's
        tunnels are reconciled with their checkpoints when its initial load ends."""
        self._seq = max(self._seq, seq)
        for cp in tunnels:
            self._restore.setdefault(cp.netns, {})[cp.id] = cp

    @property
    def restoring(self) -> int:
        """Checkpointed tunnels not reconciled yet (their netns is not fully loaded)."""
        return sum(len(m) for m in self._restore.values())

    def checkpoint(self, ids: Iterable[str]) -> tuple[list[TunnelCheckpoint], list[str]]:
        """Checkpoints of the tunnels ``ids`` that exist, and the ids that no longer do."""
        out: list[TunnelCheckpoint] = []
        gone: list[str] = []
        skew = self.wall_skew
        tunnels = self._tunnels
        new = tuple.__new__  # the NamedTuples built without their keyword-handling __new__ (half the cost)
        for tid in ids:
            t = tunnels.get(tid)
            if t is None:
                gone.append(tid)
                continue
            last = t.last_rekey
            out.append(new(TunnelCheckpoint, (
                t.id, t.netns, t.state.value, tuple([r.code for r in t.reasons]), t.since + skew,
                t.up_since + skew, t.bytes_in, t.bytes_out, t.packets_in, t.packets_out, t.rekeys, t.rekey_failures,
                {**last, "ts": last["ts"] + skew} if last is not None else None,
                t.replay_errors, t.integrity_errors, t.anomalies,
                tuple([new(SACheckpoint, (s.spi, s.daddr, s.proto, s.dir, s.bytes, s.packets, s.replay, s.integrity))
                       for s in t.sas]), t.flaps, t.down_secs)))
        return out, gone

    # ------------------------------------------------------------------ the reconciliation

    def _restore_netns(self, ns: NetnsState, now: float) -> None:
        """Reconcile the netns's loaded tunnels with their checkpoints; once both of its initial dumps
        ended, checkpointed tunnels with nothing left are gone."""
        pending = self._restore.get(ns.name)
        if not pending:
            return
        for tid in [tid for tid in pending if tid in self._tunnels]:
            self._continue(self._tunnels[tid], pending.pop(tid), now)
        if ns.sa_dumped and ns.pol_dumped:
            for cp in self._restore.pop(ns.name).values():
                if cp.state != TunnelState.DOWN:
                    self._inferred(now, STATE_CHANGED, cp.id, ns.name, {"from": cp.state, "to": "down", "reasons": []})
                    self._inferred(now, TUNNEL_DOWN, cp.id, ns.name, {"reason": "no_sa", "from": cp.state,
                                                                      "text": self._reason("no_sa").text})
                self._dirty.add(cp.id)  # gone: the store closes its history

    def _inferred(self, now: float, etype: str, tid: str, netns: str, detail: dict[str, Any]) -> None:
        """An event about what happened while the monitor was stopped (``inferred``; never dropped as quiet)."""
        self._seq += 1
        self._events.append(HealthEvent(self._seq, now + self.wall_skew, etype, tid, netns,
                                        {**detail, "inferred": True}, now))

    def _continue(self, t: Tunnel, cp: TunnelCheckpoint, now: float) -> None:
        """One tunnel continues from its checkpoint (see the module docstring)."""
        skew = self.wall_skew
        live: dict[SAKey, Any] = {(s.spi, s.daddr, s.proto): s for s in t.sas}
        old = {(s.spi, s.daddr, s.proto): s for s in cp.sas}
        seen = [0, 0, 0, 0]  # bytes_in, bytes_out, packets_in, packets_out already in the checkpoint's totals
        replay = integrity = 0
        for key, c in old.items():
            st = live.get(key)
            if st is None or st.bytes < c.bytes or st.packets < c.packets:
                continue  # gone (or not the same SA): nothing of it is counted twice
            i = 0 if st.dir == DIR_IN else 1
            seen[i] += c.bytes
            seen[i + 2] += c.packets
            replay += min(c.replay, st.replay)
            integrity += min(c.integrity, st.integrity)
        t.bytes_in = min(U64_MAX, cp.bytes_in + t.bytes_in - seen[0])
        t.bytes_out = min(U64_MAX, cp.bytes_out + t.bytes_out - seen[1])
        t.packets_in = min(U64_MAX, cp.packets_in + t.packets_in - seen[2])
        t.packets_out = min(U64_MAX, cp.packets_out + t.packets_out - seen[3])
        t.replay_errors = cp.replay_errors + t.replay_errors - replay
        t.integrity_errors = cp.integrity_errors + t.integrity_errors - integrity
        t.rekeys += cp.rekeys
        t.rekey_failures += cp.rekey_failures
        t.anomalies += cp.anomalies
        t.flaps += cp.flaps
        t.down_secs += cp.down_secs
        if t.last_rekey is None and cp.last_rekey is not None:
            t.last_rekey = {**cp.last_rekey, "ts": cp.last_rekey["ts"] - skew}
        gone = [c for k, c in old.items() if k not in live]
        new = [st for k, st in live.items() if k not in old]
        was_down = cp.state == TunnelState.DOWN
        is_down = t.state is TunnelState.DOWN
        if gone:
            self._inferred(now, "counters_gap", t.id, t.netns, {
                "spis": [f"0x{c.spi:08x}" for c in gone],
                "text": "SAs ended while the monitor was stopped; their bytes after the last checkpoint are unknown"})
        if gone and new and not was_down and not is_down:
            t.rekeys += 1
            old_spis = [f"0x{c.spi:08x}" for c in gone]
            new_spis = spi_list(t.newest_pair())
            t.last_rekey = {"ts": now, "duration": None, "old_spis": old_spis, "new_spis": new_spis, "inferred": True}
            self._inferred(now, "rekey_completed", t.id, t.netns, {
                "duration": None, "old_spis": old_spis, "new_spis": new_spis, "soft_expire": False,
                "rekeys": t.rekeys})
        if cp.state == t.state:
            t.since = cp.since - skew
        if not was_down and not is_down:
            t.up_since = min(t.up_since, cp.up_since - skew)
        elif was_down != is_down:
            to = str(t.state)
            self._inferred(now, STATE_CHANGED, t.id, t.netns, {"from": cp.state, "to": to,
                                                              "reasons": [r.to_json() for r in t.reasons]})
            if is_down:
                t.flaps += 1
                r = t.reasons[-1] if t.reasons else self._reason("no_sa")
                self._inferred(now, TUNNEL_DOWN, t.id, t.netns, {"reason": r.code, "text": r.text, "from": cp.state})
            else:
                self._inferred(now, TUNNEL_UP, t.id, t.netns, {
                    "local": t.local, "remote": t.remote,
                    "spis": spi_list(t.newest_pair())})
        self._dirty.add(t.id)
