"""What the kernel says about each SA reaches the user (issue 12 items 9, 10, 11): NAT-T encapsulation,
ESN, the anti-replay window and sequence numbers (with the 32-bit exhaustion warning), and byte/packet
lifetimes (which ``expiring`` now considers). Built from kernel-shaped records, and checked on the real
strongSwan capture of the committed VM run."""

from __future__ import annotations

from pathlib import Path

from correlate_builders import make_policy, make_sa, newpolicy, newsa, with_counters

from monitor.health.correlate import Correlator
from monitor.health.model import HealthConfig
from monitor.wire.events import Encap, LifetimeCfg, Replay, ReplayEsn
from tests.vm.references import replay_capture

T0 = 1_700_000_000.0
INF = 0xFFFFFFFFFFFFFFFF


def _tunnel(c: Correlator, now: float) -> dict:  # type: ignore[type-arg]
    (tid,) = c.tunnel_ids()
    t = c.tunnel_json(tid, now)
    assert t is not None
    return t


def _load(c: Correlator, *sas: object) -> None:
    c.on_events("default", [newpolicy(make_policy(d)) for d in (0, 1, 2)], T0)
    c.on_events("default", [newsa(sa) for sa in sas], T0)  # type: ignore[arg-type]


def test_nat_t_esn_window_and_sequence_numbers_are_shown() -> None:
    c = Correlator()
    sa_in = make_sa(0x100, inbound=True, add_time=T0, hard=3600)._replace(
        encap=Encap(2, 4500, 4500, "0.0.0.0"), flags=128,
        replay_esn=ReplayEsn(0, 7, 0, 1, 128, (0,) * 4))
    sa_out = make_sa(0x200, inbound=False, add_time=T0, hard=3600)._replace(
        encap=Encap(2, 4500, 4500, "0.0.0.0"), flags=128, replay_esn=ReplayEsn(9, 0, 2, 0, 128, (0,) * 4))
    _load(c, sa_in, sa_out)
    t = _tunnel(c, T0 + 1)
    assert t["udp_encap"] is True
    by_dir = {sa["direction"]: sa for sa in t["sas"]}
    assert by_dir["in"]["encap"] == {"type": "espinudp", "sport": 4500, "dport": 4500, "oa": "0.0.0.0"}
    assert by_dir["in"]["esn"] is True
    assert by_dir["in"]["replay_window"] == 128
    assert by_dir["in"]["seq"] == (1 << 32) | 7  # seq_hi:seq
    assert by_dir["out"]["oseq"] == (2 << 32) | 9  # oseq_hi:oseq


def test_oseq_near_2_32_without_esn_warns_once() -> None:
    c = Correlator(HealthConfig(oseq_margin=1000))
    sa_in = make_sa(0x100, inbound=True, add_time=T0)
    sa_out = make_sa(0x200, inbound=False, add_time=T0)._replace(replay=Replay(2**32 - 5000, 0, 0))
    _load(c, sa_in, sa_out)
    c.drain_events()
    assert "oseq_exhaustion" not in [h["code"] for h in _tunnel(c, T0 + 1)["hints"]]
    for k, oseq in enumerate((2**32 - 900, 2**32 - 800)):
        c.on_events("default", [newsa(with_counters(sa_out, 100 * (k + 1), k + 1)._replace(
            replay=Replay(oseq, 0, 0)))], T0 + 2 + k)
    events = [e for e in c.drain_events() if e.type == "oseq_exhaustion"]
    assert [e.detail for e in events] == [{"spi": "0x00000200", "oseq": 2**32 - 900, "left": 900}]
    assert "oseq_exhaustion" in [h["code"] for h in _tunnel(c, T0 + 5)["hints"]]


def test_byte_limits_are_shown_and_make_the_tunnel_expiring() -> None:
    c = Correlator(HealthConfig(expiring_volume=0.1))
    lft = LifetimeCfg(900_000, 1_000_000, INF, INF, 0, 0, 0, 0)  # libreswan: byte limits, no time limits
    sa_in = make_sa(0x100, inbound=True, add_time=T0)._replace(lft=lft)
    sa_out = make_sa(0x200, inbound=False, add_time=T0)._replace(lft=lft)
    _load(c, sa_in, sa_out)
    t = _tunnel(c, T0 + 1)
    assert t["state"] == "up"
    out = next(sa for sa in t["sas"] if sa["direction"] == "out")
    assert out["limits"] == {"soft_bytes": 900_000, "hard_bytes": 1_000_000, "soft_packets": None,
                             "hard_packets": None, "bytes_to_hard": 1_000_000, "packets_to_hard": None}
    c.on_events("default", [newsa(with_counters(sa_out, 950_000, 700))], T0 + 10)
    t = _tunnel(c, T0 + 10)
    assert t["state"] == "expiring", t["state"]
    assert [r["code"] for r in t["reasons"]] == ["hard_volume_near"]
    assert next(sa for sa in t["sas"] if sa["direction"] == "out")["limits"]["bytes_to_hard"] == 50_000


def test_real_strongswan_capture_carries_sequence_numbers() -> None:
    capture = Path(__file__).parent / "data" / "vm-run-2026-11-26" / "monitor-a.pcap"
    run = replay_capture(capture)
    tunnels = [t for d in run.dumps for t in d.tunnels]  # every SA dump's view, while the tunnel was up
    sas = [sa for t in tunnels for sa in t["sas"]]
    assert sas
    assert all(sa["replay_window"] >= 0 and sa["limits"] is not None for sa in sas)
    assert any(sa["seq"] > 0 or sa["oseq"] > 0 for sa in sas), sas
    assert all(t["udp_encap"] is False for t in tunnels)  # no NAT between the VM's two namespaces
