"""A small driver around ``Correlator`` for table-driven tests: one gateway, one netns, explicit times."""

from __future__ import annotations

from typing import Any

from correlate_builders import (
    make_policy,
    make_sa,
    newpolicy,
    newsa,
    updsa,
    with_counters,
)

from monitor.health.correlate import Correlator
from monitor.health.model import HealthConfig, HealthEvent
from monitor.wire.events import SA, Event

T0 = 1_700_000_000.0


class Gw:
    """One netns with one strongSwan-like tunnel (reqid 1) unless told otherwise."""

    def __init__(self, netns: str = "gw", **cfg: Any) -> None:
        self.c = Correlator(HealthConfig(**cfg))
        self.ns = netns
        self.events: list[HealthEvent] = []
        self.gens: dict[int, tuple[SA, SA]] = {}
        self.dump_seq = 100

    # --- inputs ---------------------------------------------------------------------------------
    def ev(self, now: float, *events: Event) -> None:
        """Feed events at ``now``."""
        self.c.on_events(self.ns, list(events), now)
        self._collect()

    def policies(self, now: float, reqid: int = 1, **kw: Any) -> None:
        """Install the in/out/fwd policies of ``reqid``."""
        self.ev(now, *(newpolicy(make_policy(d, reqid=reqid, **kw)) for d in (0, 1, 2)))

    def pair(self, gen: int, now: float, *, soft: int = 3300, hard: int = 3960, reqid: int = 1,
             **kw: Any) -> tuple[SA, SA]:
        """The SA pair of generation ``gen`` (SPIs 0x1000+gen in, 0x2000+gen out), added at ``now``."""
        i = make_sa(0x1000 + gen, inbound=True, add_time=now, soft=soft, hard=hard, reqid=reqid, **kw)
        o = make_sa(0x2000 + gen, inbound=False, add_time=now, soft=soft + 60, hard=hard, reqid=reqid, **kw)
        self.gens[gen] = (i, o)
        return i, o

    def install(self, now: float, gen: int = 0, **kw: Any) -> tuple[SA, SA]:
        """strongSwan install order: UPDSA inbound, NEWSA outbound."""
        i, o = self.pair(gen, now, **kw)
        self.ev(now, updsa(i), newsa(o))
        return i, o

    def dump(self, now: float, *sas: SA, begin: float | None = None) -> None:
        """A full SA dump reporting exactly ``sas`` (request at ``begin``, records and DONE at ``now``)."""
        self.dump_seq += 1
        self.c.on_dump_begin(self.ns, "sa", now if begin is None else begin)
        self.c.on_events(self.ns, [newsa(sa, dump_seq=self.dump_seq) for sa in sas], now)
        self.c.on_dump_end(self.ns, "sa", now)
        self._collect()

    def traffic(self, now: float, gen: int, bytes_in: int, bytes_out: int) -> None:
        """A dump where generation ``gen`` has the given byte counters (packets = bytes // 100)."""
        i, o = self.gens[gen]
        self.dump(now, with_counters(i, bytes_in, bytes_in // 100), with_counters(o, bytes_out, bytes_out // 100))

    def run_until(self, until: float) -> None:
        """Fire every timer due up to ``until``, each at its own deadline."""
        while True:
            d = self.c.next_deadline()
            if d is None or d > until:
                break
            self.c.on_timer(d)
            self._collect()
        self.c.on_timer(until)
        self._collect()

    # --- outputs --------------------------------------------------------------------------------
    def _collect(self) -> None:
        self.events.extend(self.c.drain_events())

    @property
    def tid(self) -> str:
        """The only tunnel's id."""
        ids = self.c.tunnel_ids()
        assert len(ids) == 1, ids
        return ids[0]

    def json(self, now: float) -> dict[str, Any]:
        """The only tunnel's JSON."""
        j = self.c.tunnel_json(self.tid, now)
        assert j is not None
        return j

    def transitions(self) -> list[tuple[float, str, str]]:
        """``(ts, from, to)`` of every state_changed event so far."""
        return [(e.ts, e.detail["from"], e.detail["to"]) for e in self.events if e.type == "state_changed"]

    def types(self) -> list[str]:
        """Event types so far, in order."""
        return [e.type for e in self.events]

    def of_type(self, etype: str) -> list[HealthEvent]:
        """Events of one type so far."""
        return [e for e in self.events if e.type == etype]
