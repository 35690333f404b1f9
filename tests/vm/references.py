"""Reference data of a VM scenario run, and the monitor's view of the same run, for tests/vm.

Two sides are compared by ``test_monitor_vm.py``:

* **references**, produced by tools independent of the monitor: ``ip -s xfrm state`` / ``ip xfrm policy``
  text, ``swanctl --list-sas`` text, the scenario's ``rekeys.txt`` and ``scenario.log``, and the raw
  nlmon capture of every netlink message in ns ``a`` (decoded with ``monitor.wire.decode``, the codec, not
  the correlator);
* **the monitor's view**: the recorder's capture replayed through the real pipeline
  (``monitor.wire.pcap`` reader -> ``monitor.sources.items.Datagram`` -> ``Pipeline(Correlator(...))``), with the
  correlator's timers run at the capture's pace, and a snapshot of every tunnel taken at the end of
  each SA dump.

Key material: ``ip -s xfrm state`` prints the SA keys. The parsers here only ever capture algorithm
*names*; no parsed object holds a key, and ``redact_keys`` must be applied to any such text before it is
put into a message.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monitor.errors import MalformedMessage
from monitor.health.correlate import Correlator
from monitor.health.model import HealthConfig, HealthEvent
from monitor.health.pipeline import Pipeline
from monitor.sources.items import Datagram
from monitor.wire import xfrm as X
from monitor.wire.decode import decode_datagram
from monitor.wire.events import SA, SAAdded, SADeleted, SAExpired, SAUpdated
from monitor.wire.pcap import read_pcap

__all__ = [
    "DumpView",
    "KernelPolicy",
    "KernelSA",
    "MonitorRun",
    "NlmonSAs",
    "SwanChild",
    "nlmon_sa_notifications",
    "parse_ip_xfrm_policy",
    "parse_ip_xfrm_state",
    "parse_rekeys",
    "parse_scenario_log",
    "parse_swanctl_sas",
    "redact_keys",
    "replay_capture",
]

# ------------------------------------------------------------------------------------------ ip xfrm


@dataclass(frozen=True)
class KernelSA:
    """One SA of ``ip -s xfrm state`` (no key material: only algorithm names)."""

    src: str
    dst: str
    proto: str
    spi: int
    reqid: int
    mode: str
    enc: str | None = None
    auth: str | None = None
    aead: str | None = None
    sel_src: str | None = None
    """``sel src`` of the SA selector; None when ``ip`` printed no ``sel`` line (an all-zero selector)."""
    sel_dst: str | None = None
    bytes: int | None = None
    packets: int | None = None


_SA_HEAD = re.compile(r"^src (\S+) dst (\S+)\s*$")
_SA_ID = re.compile(r"^\s+proto (\S+) spi 0x([0-9a-f]+)\S* reqid (\d+)\S* mode (\S+)")
# "auth-trunc hmac(sha256) 0x<KEY> 256 128", "enc cbc(aes) 0x<KEY>", "aead rfc4106(gcm(aes)) 0x<KEY> 160 128":
# only the name (the token right after the keyword) is captured, never what follows it
_ALG = re.compile(r"^\s+(auth-trunc|auth|enc|aead) (\S+)")
_SEL = re.compile(r"^\s+sel src (\S+) dst (\S+)")
_CUR = re.compile(r"^\s+(\d+)\(bytes\), (\d+)\(packets\)")
_KEYLIKE = re.compile(r"0x[0-9a-fA-F]{16,}")


def redact_keys(text: str) -> str:
    """``text`` with every long hex string (key material in ``ip -s xfrm state``) replaced by ``<key>``."""
    return _KEYLIKE.sub("<key>", text)


def parse_ip_xfrm_state(text: str) -> list[KernelSA]:
    """Parse ``ip [-s] xfrm state`` output into ``KernelSA`` records, in output order.

    Counters are set only with ``-s`` (the ``lifetime current`` section). Raises ValueError on a block
    without a ``proto ... spi ... reqid ... mode`` line.
    """
    out: list[KernelSA] = []
    cur: dict[str, Any] | None = None
    want_cur = False

    def close() -> None:
        if cur is None:
            return
        if "spi" not in cur:
            raise ValueError(f"ip xfrm state block src {cur['src']} dst {cur['dst']} has no 'proto ... spi' line")
        out.append(KernelSA(**cur))

    for line in text.splitlines():
        m = _SA_HEAD.match(line)
        if m:
            close()
            cur = {"src": m[1], "dst": m[2]}
            want_cur = False
            continue
        if cur is None:
            continue
        if (m := _SA_ID.match(line)) is not None:
            cur.update(proto=m[1], spi=int(m[2], 16), reqid=int(m[3]), mode=m[4])
        elif (m := _ALG.match(line)) is not None:
            cur[{"auth-trunc": "auth", "auth": "auth", "enc": "enc", "aead": "aead"}[m[1]]] = m[2]
        elif (m := _SEL.match(line)) is not None:
            cur["sel_src"], cur["sel_dst"] = m[1], m[2]
        elif line.strip() == "lifetime current:":
            want_cur = True
        elif want_cur and (m := _CUR.match(line)) is not None:
            cur["bytes"], cur["packets"] = int(m[1]), int(m[2])
            want_cur = False
    close()
    return out


@dataclass(frozen=True)
class KernelPolicy:
    """One policy of ``ip xfrm policy``: selector, direction and (for IPsec policies) template reqid."""

    src: str
    dst: str
    dir: str
    tmpl_src: str | None = None
    tmpl_dst: str | None = None
    reqid: int | None = None


_POL_HEAD = re.compile(r"^src (\S+) dst (\S+)")
_POL_DIR = re.compile(r"^\s+dir (\S+)")
_POL_SOCKET = re.compile(r"^\s+socket (\S+)")
_POL_TMPL = re.compile(r"^\s+tmpl src (\S+) dst (\S+)")
_POL_REQID = re.compile(r"^\s+proto \S+ (?:spi \S+ )?reqid (\d+)")


def parse_ip_xfrm_policy(text: str) -> list[KernelPolicy]:
    """Parse ``ip xfrm policy`` output (socket policies get ``dir`` ``socket-in`` / ``socket-out``)."""
    out: list[KernelPolicy] = []
    cur: dict[str, Any] | None = None
    for line in text.splitlines():
        if (m := _POL_HEAD.match(line)) is not None:
            if cur is not None:
                out.append(KernelPolicy(**cur))
            cur = {"src": m[1], "dst": m[2], "dir": "?"}
        elif cur is None:
            continue
        elif (m := _POL_DIR.match(line)) is not None:
            cur["dir"] = m[1]
        elif (m := _POL_SOCKET.match(line)) is not None:
            cur["dir"] = f"socket-{m[1]}"
        elif (m := _POL_TMPL.match(line)) is not None:
            cur["tmpl_src"], cur["tmpl_dst"] = m[1], m[2]
        elif (m := _POL_REQID.match(line)) is not None:
            cur["reqid"] = int(m[1])
    if cur is not None:
        out.append(KernelPolicy(**cur))
    return out


# ------------------------------------------------------------------------------------------ swanctl


@dataclass(frozen=True)
class SwanChild:
    """One CHILD_SA of ``swanctl --list-sas``."""

    name: str
    reqid: int
    state: str
    in_spi: int | None = None
    out_spi: int | None = None
    bytes_in: int | None = None
    packets_in: int | None = None
    bytes_out: int | None = None
    packets_out: int | None = None
    local_ts: tuple[str, ...] = ()
    remote_ts: tuple[str, ...] = ()


_CHILD = re.compile(r"^\s+(\S+): #\d+, reqid (\d+), (\S+),")
# "in  c5e94d19 (-|0x0000002a),  0 bytes, ...": a child with a mark or if_id shows "(mark|if_id)" after the SPI
_SPI_LINE = re.compile(r"^\s+(in|out)\s+([0-9a-f]{8})(?:_i)?(?:_o)?(?: \([^)]*\))?,\s+(\d+) bytes,\s+(\d+) packets")
_TS = re.compile(r"^\s+(local|remote)\s+(\S+/\d+)")


def parse_swanctl_sas(text: str) -> list[SwanChild]:
    """Parse the CHILD_SAs of ``swanctl --list-sas`` (IKE_SA lines are skipped)."""
    out: list[SwanChild] = []
    cur: dict[str, Any] | None = None

    def close() -> None:
        if cur is not None:
            cur["local_ts"] = tuple(cur["local_ts"])
            cur["remote_ts"] = tuple(cur["remote_ts"])
            out.append(SwanChild(**cur))

    for line in text.splitlines():
        if (m := _CHILD.match(line)) is not None:
            close()
            cur = {"name": m[1], "reqid": int(m[2]), "state": m[3], "local_ts": [], "remote_ts": []}
        elif cur is None:
            continue
        elif (m := _SPI_LINE.match(line)) is not None:
            d = m[1]
            cur[f"{d}_spi"] = int(m[2], 16)
            cur[f"bytes_{d}"], cur[f"packets_{d}"] = int(m[3]), int(m[4])
        elif (m := _TS.match(line)) is not None:
            cur[f"{m[1]}_ts"].append(m[2])
    close()
    return out


# ------------------------------------------------------------------------------------------ scenario files


def parse_rekeys(text: str) -> list[tuple[float, int]]:
    """``rekeys.txt``: ``(epoch, outbound SPI)`` per outbound SA of ns a, first one = the initial SA."""
    out = []
    for line in text.splitlines():
        if line.strip():
            ts, spi = line.split()
            out.append((float(ts), int(spi, 16)))
    return out


_LOG_LINE = re.compile(r"^(\d+\.\d+) \[\+[\d.]+s\] (.*)$")


def parse_scenario_log(text: str) -> list[tuple[float, str]]:
    """``scenario.log``: ``(epoch, message)`` per line."""
    return [(float(m[1]), m[2]) for m in map(_LOG_LINE.match, text.splitlines()) if m]


# ------------------------------------------------------------------------------------------ nlmon reference


@dataclass
class NlmonSAs:
    """ESP SA notifications the kernel sent in ns a, decoded from the nlmon capture."""

    added: set[int] = field(default_factory=set)
    """SPIs of non-larval NEWSA/UPDSA messages from the kernel that are not dump records."""
    deleted: set[int] = field(default_factory=set)
    """SPIs of DELSA messages from the kernel."""
    expired: set[int] = field(default_factory=set)
    """SPIs of EXPIRE messages (soft or hard) of real SAs."""
    hard_expired: set[int] = field(default_factory=set)
    larval_expired: set[int] = field(default_factory=set)
    """SPIs whose EXPIRE the kernel sent but that never were real SAs (no NEWSA/UPDSA with algorithms: an
    unused ALLOCSPI placeholder timing out). The correlator ignores larval SAs; not counted in ``expired``."""
    first_seen: dict[int, float] = field(default_factory=dict)
    """Capture time of each SPI's first notification."""
    records: int = 0
    malformed: int = 0


def nlmon_sa_notifications(path: Path) -> NlmonSAs:
    """Decode the raw nlmon capture and collect the ESP SA notifications the kernel sent.

    Records going *to* the kernel (charon's and the recorder's requests) are skipped. Dump records
    (``NLM_F_MULTI``) are not notifications. nlmon taps every delivery, so a multicast event appears
    once per listening socket: sets, not counts.
    """
    out = NlmonSAs()
    for rec in read_pcap(path):
        out.records += 1
        if rec.outgoing:
            continue
        try:
            events = decode_datagram(rec.data)
        except MalformedMessage:
            out.malformed += 1
            continue
        for ev in events:
            sa: SA | None = None
            kind = ""
            if isinstance(ev, SAAdded | SAUpdated):
                if ev.nl.flags & X.NLM_F_MULTI or ev.sa.larval:
                    continue
                sa, kind = ev.sa, "added"
            elif isinstance(ev, SADeleted):
                if ev.id.proto != X.IPPROTO_ESP:
                    continue
                out.deleted.add(ev.id.spi)
                out.first_seen.setdefault(ev.id.spi, rec.ts)
                continue
            elif isinstance(ev, SAExpired):
                # an EXPIRE carries no algorithm attributes, so it always looks larval: sorted out below
                sa, kind = ev.sa, "expired"
                if ev.hard and sa.proto == X.IPPROTO_ESP:
                    out.hard_expired.add(sa.spi)
            if sa is None or sa.proto != X.IPPROTO_ESP:
                continue
            getattr(out, kind).add(sa.spi)
            out.first_seen.setdefault(sa.spi, rec.ts)
    # the EXPIRE of an SPI that never was a real SA: an unused ALLOCSPI placeholder timing out
    out.larval_expired = out.expired - out.added
    out.expired -= out.larval_expired
    out.hard_expired -= out.larval_expired
    return out


# ------------------------------------------------------------------------------------------ the monitor


@dataclass(frozen=True)
class DumpView:
    """The correlator's tunnels at the end of one SA dump of the replayed capture."""

    begin: float
    end: float
    tunnels: list[dict[str, Any]]


@dataclass
class MonitorRun:
    """Everything the monitor produced from one replayed capture."""

    events: list[HealthEvent]
    dumps: list[DumpView]
    final: list[dict[str, Any]]
    """Every tunnel's JSON at the capture's last record time."""
    first_ts: float
    last_ts: float
    records: int
    malformed: int
    last_error: str | None
    correlator: Correlator

    def events_of(self, *types: str) -> list[HealthEvent]:
        """The health events of the given types, in order."""
        return [e for e in self.events if e.type in types]

    def spis(self, *types: str) -> set[int]:
        """SPIs named in the ``detail.spi`` of the health events of the given types."""
        return {int(e.detail["spi"], 16) for e in self.events_of(*types) if "spi" in e.detail}


def _run_timers(c: Correlator, until: float) -> None:
    dl = c.next_deadline()
    while dl is not None and dl <= until:
        c.on_timer(dl)
        dl = c.next_deadline()


def _is_dump_traffic(data: bytes) -> bool:
    """A dump reply or its end (first message has NLM_F_MULTI or is NLMSG_DONE)."""
    if len(data) < 16:
        return False
    _length, mtype, flags, _seq, _pid = X.NLMSGHDR.unpack_from(data)
    return bool(flags & X.NLM_F_MULTI) or mtype == X.NLMSG_DONE


def replay_capture(path: Path, config: HealthConfig | None = None, *, notifications_only: bool = False) -> MonitorRun:
    """Feed a monitor capture through the real pipeline at its own pace (timers at their deadlines).

    With ``notifications_only`` our requests and every dump reply are left out: what remains is what the
    kernel multicast, so the health events show what the monitor learns from notifications alone.

    Each record becomes ``Datagram(netns, data, ts, outgoing)`` (the netns the recorder tagged it with)
    fed with ``now = ts``; before each one,
    every correlator deadline that falls before it is run. A snapshot of all tunnels is taken whenever an
    SA dump ends (``Pipeline.stats`` shows a new ``last_dump_end``).
    """
    c = Correlator(config or HealthConfig())
    p = Pipeline(c)
    events: list[HealthEvent] = []
    dumps: list[DumpView] = []
    first = last = 0.0
    n = 0
    last_end: dict[str, float | None] = {}
    for rec in read_pcap(path):
        if notifications_only and (rec.outgoing or _is_dump_traffic(rec.data)):
            continue
        if n == 0:
            first = rec.ts
        n += 1
        last = max(last, rec.ts)
        _run_timers(c, rec.ts)
        p.feed(Datagram(rec.netns, rec.data, rec.ts, rec.outgoing), rec.ts)
        events.extend(c.drain_events())
        d = p.stats.netns.get(rec.netns)
        if d is not None and d.last_dump_end is not None and d.last_dump_end != last_end.get(rec.netns):
            last_end[rec.netns] = d.last_dump_end
            dur = d.last_dump_duration or 0.0
            dumps.append(DumpView(d.last_dump_end - dur, d.last_dump_end, c.snapshot(rec.ts)))
    _run_timers(c, last)
    events.extend(c.drain_events())
    return MonitorRun(events, dumps, c.snapshot(last), first, last, n, p.stats.malformed, p.stats.last_error, c)


def esp_sas(sas: Iterable[KernelSA]) -> list[KernelSA]:
    """Only the ESP SAs."""
    return [s for s in sas if s.proto == "esp"]


def fmt_spis(spis: Iterable[int]) -> str:
    """``[0x..., ...]`` sorted, for messages."""
    return "[" + ", ".join(f"0x{s:08x}" for s in sorted(spis)) + "]"


def iter_lines(events: Sequence[HealthEvent], limit: int = 60) -> Iterator[str]:
    """Health events as short one-line strings, for failure messages."""
    for e in events[-limit:]:
        yield f"  {e.ts:.3f} {e.type} {e.tunnel} {e.detail}"
