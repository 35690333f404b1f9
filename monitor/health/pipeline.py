"""Source items -> decoder -> correlator, with dump begin/end tracking (pure: no sockets, no clock).

A source hands every ``Datagram`` it sends or receives and every ``Control`` note to
``Pipeline.feed(item, now)``:

* an *outgoing* datagram is one of our own requests. A GETSA (18) or GETPOLICY (21) request with
  ``NLM_F_DUMP`` starts an "sa" or "policy" dump of that netns, and its ``nlmsg_seq`` is remembered.
  Any other outgoing datagram (an ACK request, or an IKE daemon's request in an nlmon capture) is
  ignored;
* an *incoming* datagram is decoded; its events go to the correlator in order, and the
  ``NLMSG_DONE`` whose seq matches a pending dump ends it. An ``NLMSG_ERROR`` answering a dump
  request ends it too, with ``ok=False`` so the correlator removes nothing;
* bytes that do not decode (``MalformedMessage``) are counted and the text kept; feeding goes on;
* while an unfiltered SA dump of the netns is in flight, a reply datagram goes through the skip-unchanged
  fast path (``monitor.health.refresh``): a dump record identical to the one last applied to its SA is not
  decoded, the correlator only stamps it (``Correlator.on_refresh``). ``Pipeline(c, fastpath=False)`` turns
  it off (the shell: ``MONITOR_REFRESH_FASTPATH=off``); state, events and counters are the same either way
  (``tests/test_refresh_fastpath.py``);
* ``Control`` notes: ``enobufs`` -> ``on_resync``, ``xfrm_stat`` -> ``on_xfrm_stat``,
  ``netns_removed`` -> ``on_netns_removed``, ``source_error`` is recorded for ``/healthz``.

``Pipeline.stats`` (a ``PipelineStats``) holds the counters ``/healthz`` and ``/metrics`` expose.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from monitor.errors import MalformedMessage
from monitor.health.correlate import Correlator, DumpKind
from monitor.health.refresh import split_refresh
from monitor.sources.items import Control, Datagram, SourceItem
from monitor.wire import xfrm as X
from monitor.wire.decode import decode_datagram, iter_messages
from monitor.wire.events import Done, Event, NetlinkError

__all__ = ["DumpStats", "Pipeline", "PipelineStats"]

_DUMP_KINDS: dict[int, DumpKind] = {X.XFRM_MSG_GETSA: "sa", X.XFRM_MSG_GETPOLICY: "policy"}


@dataclass(slots=True)
class DumpStats:
    """Dump bookkeeping of one netns."""

    dumps: int = 0
    """Completed dumps (both kinds)."""
    dump_errors: int = 0
    """Dumps ended by an error reply."""
    last_dump_end: float | None = None
    """When the last SA dump ended (item time)."""
    last_dump_duration: float | None = None
    """Seconds from the last SA dump's request to its NLMSG_DONE."""
    last_policy_dump_end: float | None = None
    """When the last policy dump ended."""
    last_error: str | None = None
    """The last dump error, as text."""


@dataclass(slots=True)
class PipelineStats:
    """Counters for ``/healthz`` and ``/metrics``."""

    datagrams: int = 0
    """Datagrams fed (both directions)."""
    events: int = 0
    """Decoded events handed to the correlator."""
    malformed: int = 0
    """Datagrams that did not decode (counted and skipped)."""
    enobufs: int = 0
    """ENOBUFS notes (event loss) from the sources."""
    resyncs: int = 0
    """Resyncs started (one per ENOBUFS)."""
    source_errors: int = 0
    """``source_error`` notes."""
    last_error: str | None = None
    """Text of the last malformed datagram error."""
    last_source_error: str | None = None
    """Text of the last ``source_error`` note, prefixed with its netns."""
    netns: dict[str, DumpStats] = field(default_factory=dict)
    """Per-netns dump bookkeeping."""

    def to_json(self) -> dict[str, Any]:
        """A plain dict for ``/healthz``."""
        return {
            "datagrams": self.datagrams, "events": self.events, "malformed": self.malformed,
            "enobufs": self.enobufs, "resyncs": self.resyncs, "source_errors": self.source_errors,
            "last_error": self.last_error, "last_source_error": self.last_source_error,
            "netns": {name: {"dumps": d.dumps, "dump_errors": d.dump_errors, "last_dump_end": d.last_dump_end,
                             "last_dump_duration": d.last_dump_duration,
                             "last_policy_dump_end": d.last_policy_dump_end, "last_error": d.last_error}
                      for name, d in sorted(self.netns.items())},
        }


def _unfiltered(data: bytes, start: int, end: int) -> bool:
    """True if a GETSA dump request asks for every SA.

    ``xfrm_dump_sa()`` filters only by ``XFRMA_PROTO`` (0 or IPSEC_PROTO_ANY 255 mean all) and
    ``XFRMA_ADDRESS_FILTER``; the attributes follow the ``nlmsghdr`` directly. Like the kernel's
    ``nla_for_each_attr``, parsing stops at an attribute that is too short or runs past the message.
    """
    off = start
    while off + 4 <= end:
        length, atype = X.NLATTR.unpack_from(data, off)
        if length < 4 or off + length > end:
            return True
        atype &= X.NLA_TYPE_MASK
        if atype == X.XFRMA_ADDRESS_FILTER:
            return False
        if atype == X.XFRMA_PROTO and length >= 5 and data[off + 4] not in (0, 255):
            return False
        off += X.align4(length)
    return True


class Pipeline:
    """Feeds source items through the decoder into a ``Correlator``."""

    def __init__(self, correlator: Correlator, fastpath: bool = True) -> None:
        """Args:
        correlator: the correlator every decoded event goes to.
        fastpath: skip the decoder for SA dump records that did not change (``monitor.health.refresh``).
        """
        self.correlator = correlator
        self.fastpath = fastpath
        self.skipped = 0  # dump records skipped as unchanged (not in ``stats``: those are the same either way)
        self.stats = PipelineStats()
        self._dumps: dict[str, dict[int, tuple[DumpKind, float]]] = {}  # netns -> seq -> (kind, started)

    @property
    def malformed(self) -> int:
        """Datagrams that failed to decode."""
        return self.stats.malformed

    @property
    def last_error(self) -> str | None:
        """Text of the last decode error (None if there was none)."""
        return self.stats.last_error

    def feed(self, item: SourceItem, now: float) -> None:
        """Process one source item. Never raises for bad input bytes."""
        if isinstance(item, Datagram):
            self.stats.datagrams += 1
            if item.outgoing:
                self._outgoing(item, now)
            else:
                self._incoming(item, now)
        elif isinstance(item, Control):
            self._control(item, now)

    def _ns_stats(self, netns: str) -> DumpStats:
        d = self.stats.netns.get(netns)
        if d is None:
            d = self.stats.netns[netns] = DumpStats()
        return d

    def _malformed(self, item: Datagram, exc: MalformedMessage) -> None:
        self.stats.malformed += 1
        self.stats.last_error = f"{item.netns or 'host'}: {exc}"

    def _outgoing(self, item: Datagram, now: float) -> None:
        try:
            messages = iter_messages(item.data)
        except MalformedMessage as exc:
            self._malformed(item, exc)
            return
        for nl, start, end in messages:
            kind = _DUMP_KINDS.get(nl.type)
            if kind is None or (nl.flags & X.NLM_F_DUMP) != X.NLM_F_DUMP:
                continue
            if kind == "sa" and not _unfiltered(item.data, start, end):
                continue  # a filtered dump cannot tell which SAs are gone
            pending = self._dumps.setdefault(item.netns, {})
            for seq, (other, _) in list(pending.items()):
                if other == kind:  # a new dump of the same kind supersedes an unfinished one
                    del pending[seq]
            pending[nl.seq] = (kind, now)
            self.correlator.on_dump_begin(item.netns, kind, now)

    def _incoming(self, item: Datagram, now: float) -> None:
        pending = self._dumps.get(item.netns)
        if pending and self.fastpath and self._refresh(item, pending, now):
            return
        try:
            events = decode_datagram(item.data)
        except MalformedMessage as exc:
            self._malformed(item, exc)
            return
        self.stats.events += len(events)
        if not pending:
            self.correlator.on_events(item.netns, events, now)
            return
        self._dump_events(item, events, pending, now)

    def _refresh(self, item: Datagram, pending: dict[int, tuple[DumpKind, float]], now: float) -> bool:
        """The skip-unchanged fast path (``monitor.health.refresh``); False: take the ordinary path."""
        if "sa" not in [k for k, _ in pending.values()]:
            return False
        sas = self.correlator.refresh_index(item.netns)
        if sas is None:
            return False
        data = item.data if type(item.data) is bytes else bytes(item.data)
        split = split_refresh(data, sas)
        if split is None:
            return False
        events = split.events
        self.stats.events += len(events) + len(split.unchanged)
        self.skipped += len(split.unchanged)
        tail: list[Event] = []
        if events and isinstance(events[-1], (Done, NetlinkError)):
            events, tail = events[:-1], events[-1:]
        self.correlator.on_refresh(item.netns, split, events, now)
        if tail:
            self._dump_events(item, tail, pending, now)
        return True

    def _dump_events(self, item: Datagram, events: list[Event], pending: dict[int, tuple[DumpKind, float]],
                     now: float) -> None:
        """Apply a datagram's events while dumps are pending: a dump's NLMSG_DONE / error ends it."""
        batch: list[Event] = []
        for ev in events:
            seq = None
            ok = True
            if isinstance(ev, Done):
                seq = ev.nl.seq
            elif isinstance(ev, NetlinkError) and ev.error != 0:
                seq = ev.request.seq if ev.request.seq in pending else ev.nl.seq
                ok = False
            if seq is None or seq not in pending:
                batch.append(ev)
                continue
            if batch:
                self.correlator.on_events(item.netns, batch, now)
                batch = []
            kind, started = pending.pop(seq)
            d = self._ns_stats(item.netns)
            if ok:
                d.dumps += 1
                if kind == "sa":
                    d.last_dump_end = now
                    d.last_dump_duration = now - started
                else:
                    d.last_policy_dump_end = now
            else:
                assert isinstance(ev, NetlinkError)
                d.dump_errors += 1
                d.last_error = f"{kind} dump failed: errno {-ev.error}"
            self.correlator.on_dump_end(item.netns, kind, now, ok=ok)
        if batch:
            self.correlator.on_events(item.netns, batch, now)

    def _control(self, item: Control, now: float) -> None:
        kind = item.kind
        if kind == "enobufs":
            self.stats.enobufs += 1
            self.stats.resyncs += 1
            self._dumps.pop(item.netns, None)  # a dump in flight may have lost records too
            self.correlator.on_resync(item.netns, now)
        elif kind == "xfrm_stat":
            if item.counters is not None:
                self.correlator.on_xfrm_stat(item.netns, item.counters, now)
        elif kind == "netns_removed":
            self._dumps.pop(item.netns, None)
            # no stale per-netns dump age (it would keep growing in /metrics and fire the dump-age alert)
            self.stats.netns.pop(item.netns, None)
            self.correlator.on_netns_removed(item.netns, now)
        elif kind == "source_error":
            self.stats.source_errors += 1
            self.stats.last_source_error = f"{item.netns or 'host'}: {item.message}"
