"""A rekey storm with forced overruns on a real kernel (issue 18, issue 17 item 2; guest: tests/vm/scenarios/storm.sh).

210 CHILD_SAs rekey continuously (~3.6 per second), pings run through three of them, and ``monitor serve``
watches with a 64 KiB event buffer. Burst 1: serve is stopped while 600 policy changes and 20+ rekeys happen, so
its event socket overruns during the storm and real rekey events are lost; then the charons and serve are
stopped, burst 2 overruns it again and leaves 20 SA pairs the monitor may never have heard of. The references
are parsed here, on their own: ``ip -s xfrm state`` / ``ip xfrm policy`` (via ``references.py``), the outbound
SPIs polled every 2 s (``spis.txt``), ``/healthz`` polls and the scenario's time stamps.

Asserted: the storm rate; both overruns happened (``ipsec_monitor_enobufs_total``, the log line); the monitor
was never blind (no request timed out, /healthz kept answering, the view was fresh again soon after the overrun
and stayed so); the product's own snapshot (``GET /api/v1/tunnels``: the Pipeline/Correlator) equals the
kernel's SAs, SPIs, directions, reqids and per-SA counters after burst 2, and how long that took; the tunnel set
and selectors equal the kernel's at the final point; rekeys per child equal its outbound SPI changes; no tunnel
that stayed up went down, came up again or had a rekey called failed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.vm.references import KernelSA, esp_sas, parse_ip_xfrm_policy, parse_ip_xfrm_state

pytestmark = [pytest.mark.vm, pytest.mark.timeout(900)]  # the first VM test boots the VM for all

NTUN = 210  # the scenario's CHILD_SAs (10 IKE_SAs x 21)
DUMMY_REQIDS = range(70001, 70021)  # burst 2's SA pairs
INTERVAL = 5.0  # serve --interval
# The guest is QEMU TCG on a shared 2-CPU machine: Python runs 100-500 times slower than natively there (one
# dump of 420 SAs and 630 policies, ~5 ms natively, takes 0.2-4 s), so the bounds below separate "slow" from
# "blind" (the old single-socket source on uvloop: no read after the first overrun, every request timed out
# after REQUEST_TIMEOUT = 60 s, no dump ever again), not a native latency. The measured values are printed and
# kept in bench/RESULTS.md.
#: Convergence bound after the overrun's end: the backlog read, the resync cycle, one dump interval.
CONVERGE_WITHIN = 30.0
#: Longest the last dump may be old at any /healthz poll once the view was fresh after burst 1.
MAX_DUMP_AGE = 45.0
#: After serve continues from its SIGSTOP, the first fresh view (last dump <= 2 intervals old) within this.
RECOVER_WITHIN = 40.0
#: Longest time between two answered /healthz polls (outside the SIGSTOP windows).
MAX_SILENCE = 50.0


@pytest.fixture(scope="module")
def rw(vm_scenario: Callable[[str], Path]) -> Path:
    return vm_scenario("storm")


def _epoch(rw: Path, name: str) -> float:
    return float((rw / name).read_text().split()[0])


def _state(rw: Path, name: str) -> list[KernelSA]:
    """The non-larval ESP SAs of an ``ip -s xfrm state`` file (larval ALLOCSPI placeholders have no algorithm)."""
    return [s for s in esp_sas(parse_ip_xfrm_state((rw / name).read_text())) if s.enc or s.auth or s.aead]


def _mon_sas(tunnels: list[dict[str, Any]]) -> dict[int, tuple[str, int, int, int]]:
    """``spi -> (direction, bytes, packets, reqid)`` of every SA the monitor shows."""
    out: dict[int, tuple[str, int, int, int]] = {}
    for t in tunnels:
        for sa in t["sas"]:
            spi, direction, nbytes, npackets = (sa["spi"], sa["direction"], sa["bytes"], sa["packets"]) \
                if isinstance(sa, dict) else sa
            out[int(spi, 16)] = (direction, nbytes, npackets, t["reqid"])
    return out


def _kernel_sas(sas: list[KernelSA], local: str = "203.0.113.1") -> dict[int, tuple[str, int, int, int]]:
    return {s.spi: ("out" if s.src == local else "in", s.bytes or 0, s.packets or 0, s.reqid) for s in sas}


def _spi_polls(rw: Path) -> dict[int, list[tuple[float, int]]]:
    """``reqid -> [(first seen, out SPI)]`` from spis.txt, in order."""
    out: dict[int, list[tuple[float, int]]] = {}
    for line in (rw / "spis.txt").read_text().splitlines():
        t, reqid, spi = line.split()
        out.setdefault(int(reqid), []).append((float(t), int(spi, 16)))
    return out


def _events(rw: Path) -> list[dict[str, Any]]:
    pages = sorted(rw.glob("events-*.json"), key=lambda p: int(p.stem.split("-")[1]))
    events = [e for p in pages for e in json.loads(p.read_text())["events"]]
    assert events, f"no events in {rw}"
    assert not json.loads(pages[0].read_text())["truncated"], "the event ring lost the storm's first events"
    return events


def _metric(rw: Path, name: str, family: str) -> float:
    text = (rw / f"metrics-{name}.txt").read_text()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(family))


_LOG_TS = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def _log_times(rw: Path, needle: str) -> list[float]:
    out = []
    for line in (rw / "serve.log").read_text(errors="replace").splitlines():
        if needle in line and (m := _LOG_TS.match(line)) is not None:
            out.append(datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f").replace(tzinfo=UTC).timestamp())
    return out


def _real(reqid: int) -> bool:
    return reqid not in DUMMY_REQIDS


def test_the_storm_ran(rw: Path) -> None:
    """Every CHILD_SA came up, and the storm kept several rekeys per second going until the freeze."""
    polls = _spi_polls(rw)
    real = {r: v for r, v in polls.items() if _real(r)}
    assert len(real) >= NTUN, f"{len(real)} children seen in spis.txt"
    freeze = _epoch(rw, "freeze.time")
    changes = sorted(t for v in real.values() for t, _ in v[1:] if t <= freeze)
    rate = len(changes) / (changes[-1] - changes[0])
    assert len(changes) >= 140, f"only {len(changes)} SPI changes before the freeze"
    assert rate >= 2.0, f"{rate:.2f} rekeys/s"
    print(f"storm: {len(changes)} rekeys of {len(real)} children in {changes[-1] - changes[0]:.1f} s = {rate:.2f}/s")


def test_both_bursts_overran_the_event_socket(rw: Path) -> None:
    """Each burst raised ipsec_monitor_enobufs_total, a resync cycle ran, and serve logged the overrun."""
    fam = "ipsec_monitor_enobufs_total"
    assert _metric(rw, "post1", fam) > _metric(rw, "pre1", fam), "burst 1 overran nothing"
    assert _metric(rw, "final", fam) > _metric(rw, "pre2", fam), "burst 2 overran nothing"
    res = "ipsec_monitor_resyncs_total"
    assert _metric(rw, "final", res) > _metric(rw, "pre2", res) > _metric(rw, "pre1", res) - 1
    b1, s1 = _epoch(rw, "burst1.start"), _epoch(rw, "burst1.end")
    logged = _log_times(rw, "receive buffer overrun (ENOBUFS")
    assert any(b1 - 1 <= t <= s1 + 30 for t in logged), f"no overrun logged during burst 1: {logged[:20]}"


def _healthz(rw: Path) -> list[tuple[float, str, dict[str, Any] | None]]:
    rows = []
    for line in (rw / "healthz.log").read_text().splitlines():
        t, code, *rest = line.split(" ", 2)
        rows.append((float(t), code, json.loads(rest[0]) if rest and rest[0].strip() else None))
    return rows


def _stopped(rw: Path) -> list[tuple[float, float]]:
    """The windows in which serve was stopped on purpose (SIGSTOP), widened by a poll's curl timeout (5 s)."""
    return [(_epoch(rw, "burst1.start") - 6, _epoch(rw, "burst1.end")),
            (_epoch(rw, "freeze.time") - 6, _epoch(rw, "burst2.end"))]


def _age(doc: dict[str, Any]) -> float:
    return max((n.get("last_dump_age") or 0.0) for n in doc["netns"].values())


def test_never_blind_after_an_overrun(rw: Path) -> None:
    """After burst 1's overrun the view was fresh again within RECOVER_WITHIN, the last dump was never older than
    MAX_DUMP_AGE from then on, no request timed out, and /healthz kept answering (outside the SIGSTOP windows):
    no gap of more than MAX_SILENCE between answered polls, most polls answered. (The old single-socket source:
    a request stranded for 60 s at a time, no dump meanwhile.) The starved TCG guest makes single polls slow
    (each curl has 5 s), so single misses are allowed; blindness is minutes."""
    b1e = _epoch(rw, "burst1.end")
    stopped = _stopped(rw)
    rows = [r for r in _healthz(rw) if r[0] >= _epoch(rw, "burst1.start") - 6
            and not any(a <= r[0] <= b for a, b in stopped)]
    assert len(rows) >= 8, rows
    answered = [t for t, c, _ in rows if c in ("200", "503")]
    assert len(answered) * 2 >= len(rows), f"/healthz answered {len(answered)} of {len(rows)} polls"
    gaps = [b - a for a, b in zip([b1e, *answered], answered, strict=False)
            if not any(x <= b and a <= y for x, y in stopped)]
    assert max(gaps) <= MAX_SILENCE, f"/healthz silent for {max(gaps):.1f} s"
    fresh = next((t for t, c, doc in rows if t > b1e and c == "200" and doc and _age(doc) <= 2 * INTERVAL), None)
    assert fresh is not None, "the view never became fresh again after burst 1"
    recover = fresh - b1e
    assert recover <= RECOVER_WITHIN, f"fresh again only {recover:.1f} s after burst 1's overrun ended"
    later = [(t, _age(doc)) for t, _, doc in rows if doc and t >= fresh]
    worst = max(later, key=lambda a: a[1])
    assert worst[1] <= MAX_DUMP_AGE, f"last dump {worst[1]:.1f} s old at {worst[0] - b1e:.1f} s after burst 1"
    timeouts = _log_times(rw, "no reply to request")
    assert not timeouts, f"{len(timeouts)} requests timed out"
    lags = sorted(doc["event_loop_lag"] for _, _, doc in rows if doc)
    print(f"healthz: {len(answered)} of {len(rows)} polls answered, fresh {recover:.1f} s after burst 1, worst dump "
          f"age then {worst[1]:.1f} s, loop lag p50 {lags[len(lags) // 2]:.1f} s max {lags[-1]:.1f} s")


def _conv_polls(rw: Path) -> list[tuple[float, dict[str, Any] | None]]:
    """``(time the answer was complete, snapshot)`` of each REST poll after burst 2 (the answer's end: the
    snapshot is taken while it streams, so that is the conservative time)."""
    out = []
    for line in (rw / "conv" / "times.txt").read_text().splitlines():
        n, _t1, t2 = line.split()
        f = rw / "conv" / f"{int(n):03d}.json"
        text = f.read_text() if f.exists() else ""
        out.append((float(t2), json.loads(text) if text.strip() else None))
    return out


def test_snapshot_equals_the_kernel_after_the_overrun(rw: Path) -> None:
    """Issue 17 item 2: after burst 2's overrun the product's own snapshot (REST, from the Pipeline and
    Correlator) holds exactly the kernel's SAs: SPIs, direction, reqid, bytes, packets; within CONVERGE_WITHIN
    of the overrun's end. The 20 SA pairs burst 2 added are in it (their events may well have been lost)."""
    ref = _kernel_sas(_state(rw, "xfrm-state-ref.txt"))
    assert {s.reqid for s in _state(rw, "xfrm-state-ref.txt")} >= set(DUMMY_REQIDS)
    end = _epoch(rw, "burst2.end")
    polls = _conv_polls(rw)
    first = next(((t, doc) for t, doc in polls if doc is not None and _mon_sas(doc["tunnels"]) == ref), None)
    last_doc = next((doc for _, doc in reversed(polls) if doc is not None), None)
    if first is None:
        mon = _mon_sas(last_doc["tunnels"]) if last_doc else {}
        missing = sorted(set(ref) - set(mon))[:10]
        extra = sorted(set(mon) - set(ref))[:10]
        differ = [(hex(s), ref[s], mon[s]) for s in set(ref) & set(mon) if ref[s] != mon[s]][:10]
        pytest.fail(f"never converged in {len(polls)} polls: missing {[hex(s) for s in missing]}, "
                    f"extra {[hex(s) for s in extra]}, differ {differ}")
    took = first[0] - end
    print(f"converged {took:.2f} s after burst 2 ended ({len(ref)} SAs)")
    assert took <= CONVERGE_WITHIN, f"converged only {took:.2f} s after the overrun's end"


def test_final_point_tunnels_selectors_and_counters(rw: Path) -> None:
    """At the final (stable) point: the monitor's tunnels are the kernel's (by reqid), each real tunnel holds
    the kernel's SAs with their counters and the kernel's policy selectors; the busy children moved bytes."""
    assert (rw / "dumppoint.stable").read_text().strip() == "stable"
    kernel = _state(rw, "xfrm-state-a.txt")
    tunnels = json.loads((rw / "tunnels-final.json").read_text())["tunnels"]
    assert _mon_sas(tunnels) == _kernel_sas(kernel)
    policies = [p for p in parse_ip_xfrm_policy((rw / "xfrm-policy-a.txt").read_text()) if p.reqid]
    k_reqids = {s.reqid for s in kernel} | {p.reqid for p in policies}
    by_reqid = {t["reqid"]: t for t in tunnels}
    assert len(by_reqid) == len(tunnels), "two tunnels share a reqid"
    assert set(by_reqid) == k_reqids
    for reqid, t in by_reqid.items():
        # the monitor shows each selector once, local -> remote (out); in and fwd policies are its mirror
        want = {(p.src, p.dst) if p.dir == "out" else (p.dst, p.src) for p in policies if p.reqid == reqid}
        got = {(s["src"], s["dst"]) for s in t["selectors"] or ()}
        assert got == want, (reqid, got, want)
    busy = [t for t in tunnels if t["bytes_out"] > 0]
    assert len(busy) >= 3, [t["reqid"] for t in busy]
    for t in busy:  # totals never below what the current SAs hold
        cur_out = sum(s.bytes or 0 for s in kernel if s.reqid == t["reqid"] and s.src == "203.0.113.1")
        assert t["bytes_out"] >= cur_out


def test_rekeys_counted_per_child(rw: Path) -> None:
    """Each child's rekey count is its outbound SPI changes in the polls (first SPI = the initial SA) up to the
    final point: up to the outbound SPI of the final ``ip -s xfrm state``, taken with tunnels-final.json (the poller
    runs on into the clean-up, whose SIGCONT lets a charon stopped with a soft-expired SA rekey once more)."""
    polls = _spi_polls(rw)
    final_out: dict[int, set[int]] = {}
    for s in _state(rw, "xfrm-state-a.txt"):
        if s.src == "203.0.113.1":
            final_out.setdefault(s.reqid, set()).add(s.spi)
    tunnels = json.loads((rw / "tunnels-final.json").read_text())["tunnels"]
    wrong = []
    for t in tunnels:
        if not _real(t["reqid"]):
            continue
        spis = [spi for _, spi in polls.get(t["reqid"], [])]
        at = [spis.index(x) for x in final_out.get(t["reqid"], ()) if x in spis]
        assert at, f"reqid {t['reqid']}: the final outbound SPI never showed in the polls"
        want = max(at)
        if t["rekeys"] != want:
            wrong.append((t["reqid"], t["rekeys"], want))
    total = sum(len(v) - 1 for r, v in polls.items() if _real(r))
    assert not wrong, f"{len(wrong)} children counted wrong (reqid, monitor, polls): {wrong[:20]}; {total} in all"


def test_no_false_down_or_up(rw: Path) -> None:
    """No real tunnel went down (every child kept an outbound SA in every poll), none came up twice, and no
    rekey was called failed."""
    events = _events(rw)
    ids = {t["id"]: t["reqid"] for t in json.loads((rw / "tunnels-final.json").read_text())["tunnels"]}
    real = {i for i, r in ids.items() if _real(r)}
    downs = [e for e in events if e["type"] == "tunnel_down" and e["tunnel"] in real]
    ups: dict[str, int] = {}
    for e in events:
        if e["type"] == "tunnel_up" and e["tunnel"] in real:
            ups[e["tunnel"]] = ups.get(e["tunnel"], 0) + 1
    failed = [e for e in events if e["type"] == "rekey_failed" and e["tunnel"] in real]
    assert not downs, downs[:5]
    assert all(n <= 1 for n in ups.values()), {k: v for k, v in ups.items() if v > 1}
    assert not failed, failed[:5]
