"""Replay the real strongSwan rekey capture (``tests/data/strongswan-rekey-*``) through decoder and correlator.

The capture was taken with nlmon in netns ``a`` of a VM running strongSwan 5.9.8 on Debian's 6.1 kernel
(``tests/data/README-capture.md``). It holds charon's requests, the kernel's replies and EXPIREs, and
the ``ip -s xfrm state`` dumps the scenario polled with; nobody had joined the SA group, so there are no
NEWSA/DELSA notifications: the correlator sees SAs through dumps and charon's GETSA replies, exactly as
a monitor that only polls would.

Every expected value is parsed from the independent references the scenario wrote (``ip -s xfrm state``,
``swanctl --list-sas``, the rekey log, the ping summary), never from this code's output.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from monitor.health.correlate import Correlator
from monitor.health.model import HealthConfig
from monitor.health.pipeline import Pipeline
from monitor.sources.items import Datagram
from monitor.wire.decode import decode_datagram
from monitor.wire.pcap import read_pcap

DATA = Path(__file__).resolve().parent / "data"
PCAP = DATA / "strongswan-rekey-nlmon.pcap"
pytestmark = pytest.mark.skipif(not PCAP.exists(), reason="real capture not present")


def _log() -> str:
    return (DATA / "strongswan-rekey-scenario-log.txt").read_text(encoding="utf-8")


def _dump_point() -> float:
    return float(re.search(r"dump point at ([0-9.]+)", _log()).group(1))  # type: ignore[union-attr]


def _xfrm_state() -> dict[str, tuple[str, str, int, int]]:
    """``ip -s xfrm state``: spi -> (src, dst, bytes, packets)."""
    text = (DATA / "strongswan-rekey-xfrm-state-a.txt").read_text(encoding="utf-8")
    out = {}
    for block in re.split(r"(?m)^(?=src )", text):
        if not block.strip():
            continue
        src, dst = re.match(r"src (\S+) dst (\S+)", block).groups()  # type: ignore[union-attr]
        spi = re.search(r"spi (0x[0-9a-f]+)", block).group(1)  # type: ignore[union-attr]
        nbytes, packets = re.search(r"lifetime current:\s*(\d+)\(bytes\), (\d+)\(packets\)", block).groups()  # type: ignore[union-attr]
        out[f"0x{int(spi, 16):08x}"] = (src, dst, int(nbytes), int(packets))
    return out


def _swanctl() -> tuple[str, dict[str, tuple[str, int, int]]]:
    """``swanctl --list-sas``: local address, and spi -> (direction, bytes, packets)."""
    text = (DATA / "strongswan-rekey-swanctl-a.txt").read_text(encoding="utf-8")
    local = re.search(r"local\s+'([^']+)'", text).group(1)  # type: ignore[union-attr]
    sas = {f"0x{int(spi, 16):08x}": (d, int(b), int(p))
           for d, spi, b, p in re.findall(r"(in|out)\s+([0-9a-f]{8}),\s+(\d+) bytes,\s+(\d+) packets", text)}
    return local, sas


def _rekeys_reference() -> int:
    lines = [ln for ln in (DATA / "strongswan-rekey-rekeys.txt").read_text(encoding="utf-8").splitlines() if ln.strip()]
    return len(lines) - 1  # the first line is the initial SA


def _replay(until: float | None = None) -> tuple[Correlator, Pipeline, list[Any]]:
    # the scenario's CHILD_SAs live 25 s (rekey 15 s): a 3 s expiring margin suits that life time
    c = Correlator(HealthConfig(expiring_margin=3))
    p = Pipeline(c)
    events: list[Any] = []
    for rec in read_pcap(PCAP):
        if until is not None and rec.ts > until:
            break
        deadline = c.next_deadline()
        while deadline is not None and deadline <= rec.ts:
            c.on_timer(deadline)
            deadline = c.next_deadline()
        p.feed(Datagram("a", rec.data, rec.ts, rec.outgoing), rec.ts)
        events.extend(c.drain_events())
    return c, p, events


def test_rekey_count_and_current_sas_match_the_references_at_the_dump_point() -> None:
    """At the dump point: the rekey count equals the rekey log and the live SAs (SPI, direction, bytes,
    packets) equal both ``ip -s xfrm state`` and ``swanctl --list-sas``."""
    point = _dump_point()
    c, p, events = _replay(until=point + 1.0)
    assert p.malformed == 0
    [tid] = c.tunnel_ids()
    j = c.tunnel_json(tid, point)
    assert j is not None
    expected_rekeys = _rekeys_reference()
    assert f"{expected_rekeys} rekeys so far" in _log()
    assert expected_rekeys == j["rekeys"]
    assert expected_rekeys == [e.type for e in events].count("rekey_completed")
    assert j["rekey_failures"] == 0
    assert "tunnel_down" not in [e.type for e in events]
    local, swan = _swanctl()
    state = _xfrm_state()
    assert local == j["local"]
    got = {s["spi"]: (s["direction"], s["bytes"], s["packets"]) for s in j["sas"]}
    from_ip = {spi: ("in" if dst == local else "out", b, n) for spi, (_, dst, b, n) in state.items()}
    assert from_ip == got
    assert swan == got
    assert j["state"] == "up"


def test_inbound_totals_match_the_ping_summary() -> None:
    """Inbound totals over all three SA generations equal the ping summary (every echo reply came back
    through the tunnel; one reply is one inner packet of bytes/packets as ``ip -s xfrm state`` counts)."""
    point = _dump_point()
    c, _, _ = _replay(until=point + 1.0)
    j = c.tunnel_json(c.tunnel_ids()[0], point)
    assert j is not None
    first_ping = re.search(r"ping stopped: (\d+) packets transmitted, (\d+) received", _log())
    assert first_ping is not None
    sent, received = int(first_ping.group(1)), int(first_ping.group(2))
    _, _, b, n = next(iter(_xfrm_state().values()))
    per_packet = b // n
    assert (received, received * per_packet) == (j["packets_in"], j["bytes_in"])
    # Outbound: the capture has no DELSA notifications (no SA-group listener), so an old outbound SA's
    # packets after its last record in the capture cannot be known; never more than were sent.
    assert j["packets_out"] <= sent
    assert j["bytes_out"] <= sent * per_packet


def test_totals_equal_the_highest_counters_the_capture_carries() -> None:
    """Across every SA generation, totals equal the sum of each SPI's highest counters anywhere in the
    capture's kernel messages (nothing lost, nothing counted twice)."""
    point = _dump_point()
    c, _, _ = _replay(until=point + 1.0)
    j = c.tunnel_json(c.tunnel_ids()[0], point)
    assert j is not None
    local, _ = _swanctl()
    best: dict[tuple[int, str], tuple[int, int]] = {}
    for rec in read_pcap(PCAP):
        if rec.outgoing or rec.ts > point + 1.0:
            continue
        for ev in decode_datagram(rec.data):
            sa = getattr(ev, "sa", None)
            if sa is None or sa.reqid == 0 or sa.spi == 0:
                continue
            key = (sa.spi, "in" if sa.daddr == local else "out")
            old = best.get(key, (0, 0))
            best[key] = (max(old[0], sa.cur.bytes), max(old[1], sa.cur.packets))
    for direction in ("in", "out"):
        assert sum(v[0] for (_, d), v in best.items() if d == direction) == j[f"bytes_{direction}"]
        assert sum(v[1] for (_, d), v in best.items() if d == direction) == j[f"packets_{direction}"]


def test_peer_death_takes_the_tunnel_down() -> None:
    """After the peer is killed, the tunnel goes down once, between the kill and 'no ESP SA left'."""
    log = _log()
    killed = float(re.search(r"^([0-9.]+) .*peer death", log, re.M).group(1))  # type: ignore[union-attr]
    gone = float(re.search(r"^([0-9.]+) .*has no ESP SAs left", log, re.M).group(1))  # type: ignore[union-attr]
    c, _, events = _replay()
    downs = [e for e in events if e.type == "tunnel_down"]
    assert len(downs) == 1
    assert killed < downs[0].ts <= gone + 1.0
    j = c.tunnel_json(c.tunnel_ids()[0], gone + 5)
    assert j is not None
    assert j["state"] == "down"
    assert _rekeys_reference() == j["rekeys"]
