"""Netlink pcap files (link type 253, LINKTYPE_NETLINK): read any, write key-scrubbed ones.

File layout (https://www.tcpdump.org/linktypes/LINKTYPE_NETLINK.html)::

    pcap file header (24 bytes): magic, version 2.4, thiszone, sigfigs, snaplen, linktype=253
    per record: ts_sec, ts_usec|ts_nsec, incl_len, orig_len (16 bytes), then the packet:
        struct {                    /* the Linux "cooked" SLL header, all fields big-endian */
            __be16 pkttype;         /* PACKET_HOST 0, PACKET_OUTGOING 4, ... */
            __be16 hatype;          /* ARPHRD_NETLINK = 824 */
            __be16 halen;           /* 0 */
            __u8   addr[8];         /* zero */
            __be16 protocol;        /* the netlink family: NETLINK_XFRM = 6 */
        };                          /* 16 bytes, then the netlink message(s) */

Direction. ``tcpdump -i nlmon0`` writes ``pkttype`` 4 (PACKET_OUTGOING) for *every* record, both
ways (checked on a real capture: the nlmon tap transmits each message, and
``dev_queue_xmit_nit()`` marks clones outgoing). So the reader takes a record as "to the kernel"
only when ``pkttype`` is 4 *and* the first message has ``NLM_F_REQUEST`` (the kernel never sets it
on what it sends). Our writer puts 4 on our requests and 0 (PACKET_HOST) on what we received, so
both rules agree on our own files.

Namespaces. A record's 8 address bytes (``halen`` stays 0, so tools ignore them) carry a netns
index, 0 for ``"default"``. The first time another namespace is written, one extra record names it:
protocol ``NETNS_TAG`` (0x4E53, "NS", not a netlink family, so XFRM readers skip it), address =
its index, payload = the UTF-8 name. Files of the default namespace alone have no such records.

Key material: ``PcapWriter.write`` passes every datagram through ``monitor.wire.scrub.scrub_keys``;
there is no way to write unscrubbed bytes with this module.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, NamedTuple

from monitor.errors import CaptureFormatError
from monitor.wire import xfrm as X
from monitor.wire.scrub import scrub_keys

__all__ = ["LINKTYPE_NETLINK", "CaptureRecord", "PcapWriter", "read_pcap", "scrub_capture"]

LINKTYPE_NETLINK = 253
ARPHRD_NETLINK = 824
PACKET_HOST = 0
PACKET_OUTGOING = 4
SNAPLEN = 262144  # what tcpdump uses; no netlink datagram we read is longer
# Largest record accepted: libpcap refuses caplen > 262144 for this link type; our writer adds the
# 16-byte header to datagrams of up to SNAPLEN. Checked before reading, so a corrupt length cannot
# make ``read`` allocate gigabytes.
MAX_RECORD = SNAPLEN + 16
NETNS_TAG = 0x4E53  # our netns-name records (see the module docstring)

_MAGIC_US = 0xA1B2C3D4
_MAGIC_NS = 0xA1B23C4D
_COOKED = struct.Struct(">HHH8sH")  # pkttype, hatype, halen, addr, protocol (16 bytes)
_FILE_HDR_LE = struct.Struct("<IHHiIII")
_REC_HDR_LE = struct.Struct("<IIII")


class CaptureRecord(NamedTuple):
    """One NETLINK_XFRM packet from a capture: wall-clock ``ts``, direction and netlink bytes."""

    ts: float
    outgoing: bool
    data: bytes
    netns: str = "default"


def _is_request(data: bytes) -> bool:
    # struct nlmsghdr { __u32 nlmsg_len; __u16 nlmsg_type; __u16 nlmsg_flags; ... }
    return len(data) >= 8 and bool(int.from_bytes(data[6:8], "little") & X.NLM_F_REQUEST)


def read_pcap(path: str | Path) -> Iterator[CaptureRecord]:
    """Yield the NETLINK_XFRM records of a netlink pcap file, in file order.

    Records of other netlink families (nlmon sees all of them) are skipped. Both byte orders and
    both microsecond and nanosecond timestamp files are accepted.

    Args:
        path: the capture file.

    Raises:
        CaptureFormatError: not a pcap file, not link type 253, or a record is truncated. Records
            before the bad one have already been yielded.
    """
    with open(path, "rb") as f:
        yield from _read(f, str(path))


def _read(f: BinaryIO, name: str) -> Iterator[CaptureRecord]:
    head = f.read(24)
    if len(head) < 24:
        raise CaptureFormatError(f"{name}: {len(head)} bytes is too short for a pcap file header")
    magic_le = int.from_bytes(head[:4], "little")
    magic_be = int.from_bytes(head[:4], "big")
    if magic_le in (_MAGIC_US, _MAGIC_NS):
        order, magic = "<", magic_le
    elif magic_be in (_MAGIC_US, _MAGIC_NS):
        order, magic = ">", magic_be
    else:
        raise CaptureFormatError(f"{name}: not a pcap file (magic {head[:4].hex()}; pcapng is not supported)")
    divisor = 1e9 if magic == _MAGIC_NS else 1e6
    linktype = struct.unpack_from(order + "I", head, 20)[0] & 0x0FFFFFFF
    if linktype != LINKTYPE_NETLINK:
        raise CaptureFormatError(f"{name}: link type {linktype}, expected {LINKTYPE_NETLINK} (NETLINK, nlmon)")
    rec = struct.Struct(order + "IIII")
    offset = 24
    names: dict[bytes, str] = {bytes(8): "default"}
    while True:
        hdr = f.read(16)
        if not hdr:
            return
        if len(hdr) < 16:
            raise CaptureFormatError(f"{name}: record header truncated at offset {offset}")
        sec, frac, incl, orig = rec.unpack(hdr)
        if incl > MAX_RECORD:
            raise CaptureFormatError(f"{name}: record at offset {offset} claims {incl} bytes, more than the "
                                     f"{MAX_RECORD}-byte maximum (corrupt file?)")
        pkt = f.read(incl)
        if len(pkt) < incl:
            raise CaptureFormatError(f"{name}: record at offset {offset} truncated ({len(pkt)} of {incl} bytes)")
        if incl < orig:
            raise CaptureFormatError(f"{name}: record at offset {offset} was cut to the snaplen ({incl} of {orig})")
        if incl < _COOKED.size:
            raise CaptureFormatError(f"{name}: record at offset {offset} is shorter than the 16-byte netlink header")
        offset += 16 + incl
        pkttype, _hatype, _halen, addr, proto = _COOKED.unpack_from(pkt)
        if proto == NETNS_TAG:
            names[addr] = pkt[_COOKED.size:].decode("utf-8", "replace")
        if proto != X.NETLINK_XFRM:
            continue
        data = pkt[_COOKED.size:]
        # our files name each netns index once before its records; a record with no name record (a raw
        # `tcpdump -i nlmon0` capture, whose address bytes are not ours) belongs to the default namespace
        netns = names.get(addr, "default")
        yield CaptureRecord(sec + frac / divisor, pkttype == PACKET_OUTGOING and _is_request(data), data, netns)


class PcapWriter:
    """Write NETLINK_XFRM datagrams to a pcap file (microsecond, little-endian), scrubbing keys.

    Use as a context manager, or call ``close()``. Each ``write`` is one record.
    """

    def __init__(self, path: str | Path) -> None:
        """Create (or truncate) ``path`` and write the pcap file header."""
        self._f: BinaryIO = open(path, "wb")  # noqa: SIM115 - closed by close()/__exit__
        self._f.write(_FILE_HDR_LE.pack(_MAGIC_US, 2, 4, 0, 0, SNAPLEN, LINKTYPE_NETLINK))
        self.count = 0
        self._netns: dict[str, bytes] = {"default": bytes(8)}

    def _record(self, ts: float, pkttype: int, addr: bytes, proto: int, payload: bytes) -> None:
        sec = int(ts)
        usec = min(round((ts - sec) * 1e6), 999_999)
        size = _COOKED.size + len(payload)
        self._f.write(_REC_HDR_LE.pack(sec, usec, size, size))
        self._f.write(_COOKED.pack(pkttype, ARPHRD_NETLINK, 0, addr, proto))
        self._f.write(payload)

    def write(self, ts: float, data: bytes, outgoing: bool = False, netns: str = "default") -> None:
        """Append one datagram, after zeroing every key byte in it.

        Args:
            ts: wall-clock seconds.
            data: the netlink bytes of one datagram.
            outgoing: True for a request we sent to the kernel.
            netns: the namespace it belongs to (named once in the file, then referred to by index).
        """
        addr = self._netns.get(netns)
        if addr is None:
            addr = self._netns[netns] = len(self._netns).to_bytes(8, "big")
            self._record(ts, PACKET_HOST, addr, NETNS_TAG, netns.encode())
        self._record(ts, PACKET_OUTGOING if outgoing else PACKET_HOST, addr, X.NETLINK_XFRM, scrub_keys(data))
        self.count += 1

    def flush(self) -> None:
        """Push buffered records to the file."""
        self._f.flush()

    def close(self) -> None:
        """Flush and close the file."""
        self._f.close()

    def __enter__(self) -> PcapWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def scrub_capture(src: str | Path, dst: str | Path) -> int:
    """Copy the NETLINK_XFRM records of ``src`` (e.g. a raw nlmon capture) to ``dst``, key-scrubbed.

    Returns:
        The number of records written.
    """
    with PcapWriter(dst) as w:
        for r in read_pcap(src):
            w.write(r.ts, r.data, r.outgoing, r.netns)
        return w.count
