"""Skip-unchanged refresh (pure): dump records identical to the last ones applied are not decoded again.

Theory of operation
-------------------
Most SAs of a big gateway do not change between two dumps (idle SAs: same counters, same everything), yet
every dump record used to be decoded in full and applied (``Lifecycle._ev_sa_added``), which changes
nothing for a record identical to the one applied last except two things: the SA is stamped with the
dump's generation (so the dump's removal pass keeps it), and the SA's counters are checked against its
hard byte/packet limits (``Counters._details``: the tunnel is re-evaluated near the limit).

So, while an unfiltered SA dump is in flight (``Pipeline`` knows; ``Correlator.refresh_index`` says whether
the netns allows it: not during an initial load or a resync), each ``XFRM_MSG_NEWSA`` dump record
(``NLM_F_MULTI``) of a datagram is hashed before it is decoded: a 60-bit digest of its payload (the
``struct xfrm_usersa_info`` and every attribute after the ``nlmsghdr``; counters, sequence numbers and
``XFRMA_LASTUSED`` included, so any change of a counter is a change). The SA it names is looked up by its
identity read from the raw bytes; if the SA holds the same digest, the record is handed to the correlator
as the ``SAState`` itself (``Correlator.on_refresh``: stamp + volume re-check), else the record (and any
run of such records) is decoded as usual, and the digest is recorded on the SA after it was applied
(only if the SA's counters then equal the record's: a record that went backwards takes the full path
every time, as its anomaly must be counted every time).

A digest is dropped (``SAState.digest = -1``) on every event about its SA (a notification may change
state the next dump record does not show), on a resync, and with the SA itself (removal, tombstone,
netns removal: the ``SAState`` goes, a new one starts without a digest). A changed record's SA loses its
digest at once, so a second record of the same SA later in the same datagram cannot match the old one.

A datagram that holds anything but NEWSA dump records, ``NLMSG_DONE`` and ``NLMSG_ERROR`` (never the
case for a kernel dump) takes the ordinary path whole, so records of one datagram cannot remove each
other's SA between the split and their application. A datagram that does not frame or decode falls back
to the ordinary path too, which raises the very same ``MalformedMessage``.

The digest is ``hash(bytes) & (2**60 - 1)``: CPython's SipHash-1-3 of the payload with the process's
random key (``PYTHONHASHSEED``), 60 bits so that it fits the 32-byte int object. A changed record is taken
for unchanged with a probability of about 2**-60 per record. The payload includes key bytes
(``XFRMA_ALG_*``); the digest stays inside the process, like the SA itself, and reveals nothing of them.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from monitor.errors import MalformedMessage
from monitor.health.checkpoint import Checkpointing
from monitor.health.nsstate import NetnsState
from monitor.health.sastate import SAState
from monitor.wire import xfrm as X
from monitor.wire.decode import decode_datagram
from monitor.wire.events import AsyncEvent, Event, NatMapping, SAAdded, SADeleted, SAExpired, SAUpdated
from monitor.wire.sa_values import _V4, _V6, format_address

__all__ = ["DIGEST_MASK", "Refreshing", "SaKey", "Split", "split_refresh"]

SaKey = tuple[int, str, int]
DIGEST_MASK = (1 << 60) - 1
_HDR = struct.Struct("=IHH").unpack_from  # struct nlmsghdr { __u32 nlmsg_len; __u16 nlmsg_type; __u16 nlmsg_flags; ...
# struct xfrm_usersa_info: id (struct xfrm_id) at 56 = { xfrm_address_t daddr (16); __be32 spi; __u8 proto; },
# ...; __u16 family at 212 (AF_INET 2, AF_INET6 10: its low byte, host order)
_ID = struct.Struct(">16sIB").unpack_from
_CUR = struct.Struct("=QQ").unpack_from  # curlft at 160: struct xfrm_lifetime_cur { __u64 bytes, packets; ... }
_NEWSA = X.XFRM_MSG_NEWSA
_MULTI = X.NLM_F_MULTI
_ENDS = (X.NLMSG_DONE, X.NLMSG_ERROR)
_AF_INET6 = X.AF_INET6


class Split(NamedTuple):
    """A dump datagram split by ``split_refresh``."""

    unchanged: list[SAState]
    """The SAs whose record is identical to the one last applied to them."""
    events: list[Event]
    """Every other message, decoded, in order (a terminating ``NLMSG_DONE``/``NLMSG_ERROR`` last)."""
    fresh: list[tuple[SAState, int, int, int]]
    """``(SA, digest, bytes, packets)`` of each changed NEWSA record of a held SA: the digest is recorded on
    the SA once the record was applied, if the SA's counters then equal the record's ``curlft``."""


def split_refresh(data: bytes, sas: Mapping[SaKey, SAState]) -> Split | None:  # noqa: PLR0911 (one loop, many ways out)
    """Split an SA dump datagram into unchanged SAs and decoded events.

    Args:
        data: one datagram of an SA dump in flight.
        sas: the netns's live SAs (``Correlator.refresh_index``).

    Returns:
        The split, or None: take the ordinary path (a message that is no dump record, a message after an
        ``NLMSG_DONE``/``NLMSG_ERROR``, or bytes that do not decode).
    """
    unchanged: list[SAState] = []
    keep = unchanged.append
    events: list[Event] = []
    fresh: list[tuple[SAState, int, int, int]] = []
    count = 0  # messages to decode
    runs: list[tuple[int, int]] = []
    run = -1  # start of the run of messages to decode
    get = sas.get
    off = 0
    size = len(data)
    while off < size:
        if size - off < 16:
            return None
        length, mtype, flags = _HDR(data, off)
        end = off + length
        if length < 16 or end > size:
            return None
        if mtype == _NEWSA and flags & _MULTI and length >= 240:
            s = off + 16
            h = hash(data[s:end]) & DIGEST_MASK
            daddr_raw, spi, proto = _ID(data, s + 56)
            family = data[s + 212]
            daddr = (_V6 if family == _AF_INET6 else _V4).get(daddr_raw)
            if daddr is None:
                try:
                    daddr = format_address(daddr_raw, family)
                except ValueError:
                    return None
            st = get((spi, daddr, proto))
            if st is not None:
                if st.digest == h:
                    if run >= 0:
                        runs.append((run, off))
                        run = -1
                    keep(st)
                    off += (length + 3) & ~3
                    continue
                st.digest = -1  # changed: a later record of this SA must not match the old digest
                nbytes, npackets = _CUR(data, s + 160)
                fresh.append((st, h, nbytes, npackets))
            # an SA not held yet gets its digest from its next record, once it is held
        elif mtype in _ENDS:
            if (off + length + 3) & ~3 < size:
                return None  # the dump's end is the datagram's last message
        else:
            return None
        count += 1
        if run < 0:
            run = off
        off += (length + 3) & ~3
    if run >= 0:
        runs.append((run, size))
    try:  # the ordinary path raises the same error, with its own offsets
        for a, b in runs:
            events.extend(decode_datagram(data[a:b]))
    except MalformedMessage:
        return None
    if len(events) != count:  # pragma: no cover - one event per message, always
        return None
    return Split(unchanged, events, fresh)


class Refreshing(Checkpointing):
    """The correlator's side of the fast path: which netns may use it, unchanged SAs, digests kept and dropped."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._digested: set[str] = set()  # netns whose SAs may hold dump-record digests

    def refresh_index(self, netns: str) -> Mapping[SaKey, SAState] | None:
        """The live SAs of ``netns`` if its dump records may skip the decoder when unchanged: an SA dump in
        flight, not an initial load, no resync pending. Else None (the ordinary path)."""
        ns = self._ns.get(netns)
        if ns is None or ns.sa_dump_begin is None or ns.loading or ns.ploading or ns.resync:
            return None
        return ns.sas

    def _refresh_apply(self, netns: str, split: Split, events: Sequence[Event], now: float) -> NetnsState:
        """``Correlator.on_refresh`` before its flush.

        Args:
            netns: the namespace.
            split: from ``split_refresh``. For each of its ``unchanged`` SAs this does what
                ``Lifecycle._ev_sa_added`` does with a record identical to the one last applied: ``_bump`` finds
                nothing above the SA's counters, drop counters or last use, and the same limits, so only the
                volume check of ``Counters._details`` and the dump stamp remain. Its ``fresh`` digests are
                recorded after ``events`` were applied, on SAs whose counters then equal the record's (one that
                went backwards must count its anomaly every time).
            events: ``split.events`` or the part of them before the dump's end, applied after the unchanged
                SAs (the split never lets a record of an SA follow a changed one of the same SA). No digest is
                forgotten for them: the split already dropped those of changed records.
            now: core time.
        """
        ns = self._netns(netns, now)
        self._digested.add(netns)
        gen = ns.gen
        pending = ns.pending
        seen = 0
        for st in split.unchanged:
            if st.near_volume():
                pending.add(st.tunnel)
            if st.gen != gen:
                st.gen = gen
                seen += 1
        ns.seen += seen
        if events:
            handlers = self._handlers  # type: ignore[attr-defined] # Correlator's dispatch table
            for ev in events:
                h = handlers.get(ev.__class__)
                if h is not None:
                    h(ns, ev, now)
            # the last record applied to an SA decides (a crafted datagram may hold two of one SA): every fresh
            # SA has -1 since the split, so in reverse order the first one seen decides, -2 meaning "no digest"
            undecided = []
            for st, d, nbytes, npackets in reversed(split.fresh):
                if st.digest != -1:
                    continue
                if st.bytes == nbytes and st.packets == npackets:
                    st.digest = d
                else:
                    st.digest = -2
                    undecided.append(st)
            for st in undecided:
                st.digest = -1
        return ns

    @staticmethod
    def _forget_digest(ns: NetnsState, ev: Event) -> None:
        """Drop the digest of the SA an event is about: the next dump record of it takes the full path."""
        if isinstance(ev, (SAAdded, SAUpdated, SAExpired)):
            sa = ev.sa
            st = ns.sas.get((sa.spi, sa.daddr, sa.proto))
        elif isinstance(ev, (SADeleted, AsyncEvent, NatMapping)):
            i = ev.id
            st = ns.sas.get((i.spi, i.daddr, i.proto))
        else:
            return
        if st is not None:
            st.digest = -1

    def _drop_digests(self, ns: NetnsState) -> None:
        """Drop every digest of a netns (a resync: events were lost)."""
        if ns.name in self._digested:
            self._digested.discard(ns.name)
            for st in ns.sas.values():
                st.digest = -1
