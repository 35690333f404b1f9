"""The monitor in the loop on a real kernel (issue 3, scenarios 1 and 2; issue 7, the keepalive prober).

Inside the VM, ``monitor record`` runs in ns ``a`` for the whole scenario (tests/vm/scenario.sh). Here its
capture is replayed on the host through the real pipeline (``monitor.wire.pcap`` -> ``Datagram`` ->
``Pipeline(Correlator())``), and what the monitor holds is compared with references taken in the same run
by independent tools: ``ip -s xfrm state``, ``ip xfrm policy``, ``swanctl --list-sas``, the scenario's own
SPI tracking (``rekeys.txt``) and the raw nlmon capture of every netlink message in ns ``a``.

Never put ``xfrm-state-a.txt`` text into a message unredacted: it holds the SA keys.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from monitor.health.model import HealthConfig
from vm.references import (
    DumpView,
    KernelSA,
    MonitorRun,
    esp_sas,
    fmt_spis,
    iter_lines,
    nlmon_sa_notifications,
    parse_ip_xfrm_policy,
    parse_ip_xfrm_state,
    parse_rekeys,
    parse_scenario_log,
    parse_swanctl_sas,
    replay_capture,
)

pytestmark = [pytest.mark.vm, pytest.mark.timeout(900)]

SA_EVENTS = ("sa_added", "sa_deleted", "sa_expired")
PROBER_TARGET = "10.20.1.1"
# The scenario's CHILD_SAs live 25 s (rekey after 13-15 s): the default expiring_margin (120 s) would call every
# tunnel "expiring" all the time. 5 s is the same scale as the production default to a 1 h lifetime.
SCENARIO_HEALTH = HealthConfig(expiring_margin=5.0)


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError as e:
        return f"<{path.name}: {e}>"


def _where(rw: Path) -> str:
    return f"(artifacts kept in {rw})"


def _log(rw: Path) -> list[tuple[float, str]]:
    return parse_scenario_log((rw / "scenario.log").read_text())


@pytest.fixture(scope="module")
def run(vm_ok: Path) -> MonitorRun:
    """The recorder's capture replayed through the real pipeline and correlator."""
    cap = vm_ok / "monitor-a.pcap"
    if not cap.is_file() or cap.stat().st_size <= 24:
        rec_lines = "\n".join(f"  {m}" for _, m in _log(vm_ok) if "recorder" in m)
        pytest.fail(
            f"the recorder wrote no capture ({cap.name}: "
            f"{cap.stat().st_size if cap.exists() else 'missing'} bytes) {_where(vm_ok)}\n"
            f"scenario.log:\n{rec_lines}\n--- monitor-a.log\n{_tail(vm_ok / 'monitor-a.log')}"
        )
    r = replay_capture(cap, config=SCENARIO_HEALTH)
    assert r.malformed == 0, f"{r.malformed} datagrams of {cap.name} did not decode: {r.last_error} {_where(vm_ok)}"
    assert r.dumps, f"no complete SA dump in {r.records} records of {cap.name} {_where(vm_ok)}"
    return r


def _tunnel_of_reqid(tunnels: list[dict[str, Any]], reqid: int) -> dict[str, Any] | None:
    found = [t for t in tunnels if t["reqid"] == reqid]
    return found[0] if len(found) == 1 else None


def _sa_rows(t: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """The monitor's SAs of a tunnel, in the shape of a KernelSA (addresses from direction + local/remote)."""
    rows = {}
    for sa in t["sas"]:
        out = sa["direction"] == "out"
        rows[int(sa["spi"], 16)] = {
            "src": t["local"] if out else t["remote"], "dst": t["remote"] if out else t["local"],
            "reqid": t["reqid"], "enc": sa["enc"], "auth": sa["auth"], "aead": sa["aead"],
            "bytes": sa["bytes"], "packets": sa["packets"], "direction": sa["direction"],
        }
    return rows


def _kernel_rows(sas: list[KernelSA], local: str) -> dict[int, dict[str, Any]]:
    return {s.spi: {"src": s.src, "dst": s.dst, "reqid": s.reqid, "enc": s.enc, "auth": s.auth, "aead": s.aead,
                    "bytes": s.bytes, "packets": s.packets, "direction": "out" if s.src == local else "in"}
            for s in sas}


def _diff(a: dict[int, dict[str, Any]], b: dict[int, dict[str, Any]], an: str, bn: str) -> str:
    lines = []
    for spi in sorted(set(a) | set(b)):
        x, y = a.get(spi), b.get(spi)
        if x != y:
            lines.append(f"  0x{spi:08x}: {an}={x}\n  {' ' * 12}{bn}={y}")
    return "\n".join(lines) or "  (equal)"


@pytest.fixture(scope="module")
def dump_point(vm_ok: Path, run: MonitorRun) -> DumpView:
    """The monitor's view at the dump point: the last SA dump that ended after ``dumppoint.time`` and before
    the next change (the next SA event, or the end of the scenario's quiet window)."""
    dp = float((vm_ok / "dumppoint.time").read_text())
    quiet_end = next((ts for ts, m in _log(vm_ok) if ts > dp and m.startswith("dump point stable")), None)
    assert quiet_end is not None, f"scenario.log has no 'dump point stable' after {dp} {_where(vm_ok)}"
    next_sa = next((e.ts for e in run.events_of(*SA_EVENTS) if e.ts > dp), float("inf"))
    end = min(quiet_end, next_sa)
    cands = [d for d in run.dumps if dp < d.end < end]
    if not cands:
        near = [f"{d.begin - dp:+.2f}..{d.end - dp:+.2f}" for d in run.dumps if abs(d.end - dp) < 15]
        pytest.fail(f"no SA dump of the recorder ended in the quiet window after the dump point "
                    f"(dp={dp:.3f}, window end {end - dp:+.2f} s); dumps near it (begin..end relative to dp): "
                    f"{near} {_where(vm_ok)}")
    return cands[-1]


# ------------------------------------------------------------------------------------------ scenario 1


def test_dump_point_sas_equal_kernel(vm_ok: Path, dump_point: DumpView) -> None:
    """At the dump point, the SAs the monitor holds (SPI, reqid, addresses, algorithm names, byte and packet
    counters) equal the kernel's (`ip -s xfrm state` taken at that moment)."""
    kernel = esp_sas(parse_ip_xfrm_state((vm_ok / "xfrm-state-a.txt").read_text()))
    assert len(kernel) == 2, f"kernel reference: expected 1 in + 1 out ESP SA, got {fmt_spis(s.spi for s in kernel)}"
    reqids = {s.reqid for s in kernel}
    assert len(reqids) == 1, f"kernel SAs with several reqids {reqids}"
    t = _tunnel_of_reqid(dump_point.tunnels, reqids.pop())
    assert t is not None, (f"monitor has no single tunnel with the kernel's reqid at the dump point; it has "
                           f"{[(x['id'], x['state'], [s['spi'] for s in x['sas']]) for x in dump_point.tunnels]} "
                           f"{_where(vm_ok)}")
    assert (t["local"], t["remote"]) == ("192.0.2.1", "192.0.2.2")
    mon = _sa_rows(t)
    ker = _kernel_rows(kernel, t["local"])
    assert mon == ker, (f"monitor SAs != kernel SAs at the dump point (dump {dump_point.begin:.3f}.."
                        f"{dump_point.end:.3f}, tunnel {t['id']} state {t['state']}):\n"
                        f"{_diff(mon, ker, 'monitor', 'kernel ')}\n{_where(vm_ok)}")
    assert t["state"] in ("up", "idle"), f"tunnel {t['id']} is {t['state']} {t['reasons']} at the dump point"


def test_dump_point_matches_swanctl_and_policies(vm_ok: Path, dump_point: DumpView) -> None:
    """The monitor's SPIs and per-direction counters equal strongSwan's view (`swanctl --list-sas`), and its
    selectors equal the kernel's policies of the tunnel's reqid and strongSwan's traffic selectors."""
    children = [c for c in parse_swanctl_sas((vm_ok / "swanctl-a.txt").read_text()) if c.state == "INSTALLED"]
    assert len(children) == 1, f"swanctl: expected one INSTALLED CHILD_SA, got {children}"
    ch = children[0]
    t = _tunnel_of_reqid(dump_point.tunnels, ch.reqid)
    assert t is not None, f"monitor has no tunnel with reqid {ch.reqid}: {[x['id'] for x in dump_point.tunnels]}"
    by_dir = {sa["direction"]: sa for sa in t["sas"]}
    seen = {d: (by_dir[d]["spi"], by_dir[d]["bytes"], by_dir[d]["packets"]) if d in by_dir else None
            for d in ("in", "out")}
    want = {"in": (f"0x{ch.in_spi:08x}", ch.bytes_in, ch.packets_in),
            "out": (f"0x{ch.out_spi:08x}", ch.bytes_out, ch.packets_out)}
    assert seen == want, f"monitor (spi, bytes, packets) per direction {seen} != swanctl {want} {_where(vm_ok)}"

    policies = [p for p in parse_ip_xfrm_policy((vm_ok / "xfrm-policy-a.txt").read_text()) if p.reqid == ch.reqid]
    out_sel = {(p.src, p.dst) for p in policies if p.dir == "out"}
    in_sel = {(p.dst, p.src) for p in policies if p.dir in ("in", "fwd")}
    mon_sel = {(s["src"], s["dst"]) for s in t["selectors"]}
    swan_sel = {(lt, rt) for lt in ch.local_ts for rt in ch.remote_ts}
    assert out_sel, f"no out policy with reqid {ch.reqid} in xfrm-policy-a.txt"
    assert mon_sel == out_sel == in_sel == swan_sel, (
        f"selectors: monitor {sorted(mon_sel)}, kernel out policies {sorted(out_sel)}, kernel in/fwd policies "
        f"(reversed) {sorted(in_sel)}, swanctl {sorted(swan_sel)} {_where(vm_ok)}")
    assert all(s["proto"] == 0 and s["sport"] == 0 and s["dport"] == 0 for s in t["selectors"]), t["selectors"]


def test_every_sa_add_delete_expire_seen(vm_ok: Path, run: MonitorRun) -> None:
    """Every ESP SA add, delete and expire the kernel announced (decoded from the independent nlmon capture)
    is a health event of the monitor, and every outbound SPI of rekeys.txt was added and deleted."""
    nl = nlmon_sa_notifications(vm_ok / "nlmon-a.pcap")
    assert nl.malformed == 0, f"{nl.malformed} nlmon records did not decode"
    rekeys = parse_rekeys((vm_ok / "rekeys.txt").read_text())
    out_spis = {spi for _, spi in rekeys}
    mon = {k: run.spis(f"sa_{k}") for k in ("added", "deleted", "expired")}
    ref = {"added": nl.added, "deleted": nl.deleted, "expired": nl.expired}
    msg = "\n".join(f"  {k}: monitor {fmt_spis(mon[k])}\n  {' ' * len(k)}  nlmon   {fmt_spis(ref[k])}"
                    for k in ref)
    assert out_spis <= nl.added, f"rekeys.txt SPIs {fmt_spis(out_spis - nl.added)} not added in nlmon\n{msg}"
    first_sa = min(nl.first_seen.values())
    rec_lines = "\n".join(f"  {m}" for _, m in _log(vm_ok) if "recorder" in m)
    assert run.first_ts < first_sa, (
        f"the recorder's capture starts at {run.first_ts:.3f}, {run.first_ts - first_sa:.1f} s after the kernel's "
        f"first SA notification: it was not listening before charon started\n{rec_lines}")
    assert nl.expired, f"the kernel sent no EXPIRE at all (the scenario should rekey on soft expiry)\n{msg}"
    assert mon == ref, (f"monitor's SA events differ from what the kernel sent (nlmon, {nl.records} records; "
                        f"monitor capture {run.records} records):\n{msg}\nlast monitor events:\n"
                        + "\n".join(iter_lines(run.events_of(*SA_EVENTS), 30)) + f"\n{_where(vm_ok)}")
    # after the peer death every SA is gone: each one added was deleted or hard-expired
    assert nl.added <= nl.deleted | nl.hard_expired, f"SAs never removed: {fmt_spis(nl.added - nl.deleted)}"
    # seen as events, not repaired later by a dump: no deletion was found missing from a dump, and the
    # notifications alone (dump replies left out of the replay) give the same SPI sets
    repaired = [e for e in run.events_of("sa_deleted") if e.detail.get("reason") == "missing_from_dump"]
    assert not repaired, "SA deletions only found by a later dump:\n" + "\n".join(iter_lines(repaired))
    live = replay_capture(vm_ok / "monitor-a.pcap", config=SCENARIO_HEALTH, notifications_only=True)
    mon_live = {k: live.spis(f"sa_{k}") for k in ("added", "deleted", "expired")}
    assert mon_live == ref, "from notifications alone (no dump replies) the monitor saw:\n" + "\n".join(
        f"  {k}: {fmt_spis(mon_live[k])} (nlmon {fmt_spis(ref[k])})" for k in ref)


def test_rekeys_counted(vm_ok: Path, run: MonitorRun) -> None:
    """The correlator counted >= 2 rekeys, exactly as many as the outbound SPI changes in rekeys.txt, and no
    rekey failure before the peer died."""
    rekeys = parse_rekeys((vm_ok / "rekeys.txt").read_text())
    changes = len(rekeys) - 1
    tunnels = [t for t in run.final if t["reqid"] != 0]
    assert len(tunnels) == 1, f"expected one tunnel at the end, got {[(t['id'], t['rekeys']) for t in tunnels]}"
    t = tunnels[0]
    done = run.events_of("rekey_completed")
    assert t["rekeys"] >= 2, f"monitor counted {t['rekeys']} rekeys, rekeys.txt has {changes} SPI changes"
    assert t["rekeys"] == changes, (
        f"monitor counted {t['rekeys']} rekeys ({len(done)} rekey_completed events: "
        f"{[e.detail.get('new_spis') for e in done]}), rekeys.txt has {changes} outbound SPI changes "
        f"{fmt_spis(s for _, s in rekeys)} {_where(vm_ok)}")
    pd = float((vm_ok / "peerdeath.time").read_text())
    early = [e for e in run.events_of("rekey_failed") if e.ts < pd]
    assert not early, "rekey failures before the peer died:\n" + "\n".join(iter_lines(early))


# ------------------------------------------------------------------------------------------ scenario 2


def test_peer_death_seen(vm_ok: Path, run: MonitorRun) -> None:
    """After the peer's charon is killed, the monitor sees every live SA of the tunnel deleted, emits
    tunnel_down with a reason, and ends `down` with no SA, like the kernel (after-peer-death-a.txt)."""
    pd = float((vm_ok / "peerdeath.time").read_text())
    kernel_after = esp_sas(parse_ip_xfrm_state((vm_ok / "after-peer-death-a.txt").read_text()))
    assert kernel_after == [], f"kernel still has ESP SAs {fmt_spis(s.spi for s in kernel_after)}"
    live: set[int] = set()
    newest: dict[str, int] = {}  # direction -> the last SA added before the kill
    for e in run.events:
        if e.ts > pd:
            break
        if e.type == "sa_added":
            live.add(int(e.detail["spi"], 16))
            newest[str(e.detail["direction"])] = int(e.detail["spi"], 16)
        elif e.type == "sa_deleted" or (e.type == "sa_expired" and e.detail.get("hard")):
            live.discard(int(e.detail["spi"], 16))
    after = [e for e in run.events if e.ts > pd]
    gone = {int(e.detail["spi"], 16) for e in after
            if e.type == "sa_deleted" or (e.type == "sa_expired" and e.detail.get("hard"))}
    trail = "\n".join(iter_lines(after, 40))
    # the newest pair is live; an older SA may still be too when the kill falls inside a rekey's
    # delete_rekeyed_delay (charon deletes the old inbound SA seconds after the new pair is in)
    assert sorted(newest) == ["in", "out"], f"SAs added before the kill: {newest}"
    assert set(newest.values()) <= live, f"newest pair {fmt_spis(newest.values())} not live: {fmt_spis(live)}"
    assert len(live) <= 4, f"more SAs live at the kill than two generations: {fmt_spis(live)}"
    assert live <= gone, (f"SAs live at the peer death {fmt_spis(live)}, deleted after it {fmt_spis(gone)}; "
                          f"events after the kill:\n{trail}\n{_where(vm_ok)}")
    downs = [e for e in after if e.type == "tunnel_down"]
    assert len(downs) == 1, f"tunnel_down events after the kill:\n{trail}"
    assert downs[0].detail.get("reason"), f"tunnel_down without a reason: {downs[0]}"
    final = [t for t in run.final if t["id"] == downs[0].tunnel]
    assert final, f"tunnel {downs[0].tunnel} missing from the final view"
    t = final[0]
    final_view = f"final tunnel: state {t['state']}, SAs {[s['spi'] for s in t['sas']]}, reasons {t['reasons']}"
    assert t["state"] == "down", final_view
    assert t["sas"] == [], final_view
    assert t["reasons"], final_view
    assert t["reasons"][-1]["code"] == downs[0].detail["reason"], (t["reasons"], downs[0].detail)
    no_esp = next((ts for ts, m in _log(vm_ok) if ts > pd and m.startswith("ns a has no ESP SAs left")), None)
    assert no_esp is not None
    print(f"peer death: killed at {pd:.3f}; monitor tunnel_down +{downs[0].ts - pd:.2f} s "
          f"({downs[0].detail['reason']}); scenario saw no ESP SA at +{no_esp - pd:.2f} s")


# ------------------------------------------------------------------------------------------ issue 7: prober


def test_prober_keeps_idle_tunnel_up(vm_ok: Path, run: MonitorRun) -> None:
    """With the pings stopped, `monitor serve` with the keepalive prober on keeps the tunnel up (no idle,
    one-way or down transition for longer than [health] idle_after) and shows answered probes; the kernel's
    counters (recorder capture) moved during the phase although no other traffic flowed."""
    result_file = vm_ok / "prober.result"
    if not result_file.exists():
        lines = "\n".join(f"  {m}" for _, m in _log(vm_ok) if "serve" in m or "prober" in m)
        pytest.fail(f"the prober phase did not run:\n{lines}\n--- serve-a.log\n{_tail(vm_ok / 'serve-a.log')}\n"
                    f"{_where(vm_ok)}")
    result = result_file.read_text().strip()
    assert result == "ok", f"prober phase: {result}\n--- serve-a.log\n{_tail(vm_ok / 'serve-a.log')} {_where(vm_ok)}"
    start = float((vm_ok / "prober.start").read_text())
    end = float((vm_ok / "prober.end").read_text())
    cfg = tomllib.loads((vm_ok / "serve.toml").read_text())
    idle_after = float(cfg["health"]["idle_after"])
    assert end - start > idle_after, f"prober phase lasted {end - start:.1f} s, not longer than idle_after"

    doc = json.loads((vm_ok / "prober-tunnels.json").read_text())
    probed = [t for t in doc["tunnels"] if t.get("probe")]
    assert len(probed) == 1, f"expected one probed tunnel, got {[(t['id'], t.get('probe')) for t in doc['tunnels']]}"
    t = probed[0]
    p = t["probe"]
    assert p["target"] == PROBER_TARGET, p
    assert p["answered"] > 0, f"probe results {p}"
    assert p["sent"] >= p["answered"], f"probe results {p}"
    assert p["last_answer"] is not None, f"probe results {p}"
    assert start <= p["last_answer"] <= end, f"last answer outside the phase {start:.3f}..{end:.3f}: {p}"
    assert t["state"] in ("up", "rekeying"), f"tunnel {t['id']} is {t['state']} {t['reasons']}; probe {p}"

    events = json.loads((vm_ok / "prober-events.json").read_text())["events"]
    bad = [e for e in events if e["type"] == "state_changed" and e["tunnel"] == t["id"]
           and start <= e["ts"] <= end and e["detail"]["to"] in ("idle", "one-way", "down")]
    assert not bad, f"the probed tunnel left 'up' during the prober phase: {bad}"

    # independent evidence through the recorder: the tunnel's counters moved while the pings were stopped
    # (only probes and their answers can have moved them)
    views = [d for d in run.dumps if start <= d.begin and d.end <= end]
    assert len(views) >= 2, f"only {len(views)} recorder dumps inside the prober phase"
    first = _tunnel_of_reqid(views[0].tunnels, t["reqid"])
    last = _tunnel_of_reqid(views[-1].tunnels, t["reqid"])
    assert first is not None
    assert last is not None
    moved = {k: last[k] - first[k] for k in ("packets_out", "packets_in")}
    assert min(moved.values()) > 0, (
        f"kernel counters of {t['id']} during the prober phase moved by {moved} ({len(views)} dumps); "
        f"probe {p}")
    # and the monitor's replay with the same idle threshold never saw the tunnel idle in the phase
    r8 = replay_capture(vm_ok / "monitor-a.pcap", config=HealthConfig(**cfg["health"]))
    idle = [e for e in r8.events_of("state_changed") if start <= e.ts <= end and e.detail["to"] == "idle"]
    assert not idle, f"replayed with idle_after={idle_after}, the tunnel went idle in the phase: {idle}"
    print(f"prober: {p['answered']}/{p['sent']} probes answered in {end - start:.1f} s, last rtt "
          f"{p['last_rtt_ms']} ms, tunnel {t['state']}; counters moved {moved}")


def test_no_key_bytes_in_monitor_outputs(vm_ok: Path) -> None:
    """No key of any SA the run showed (every SA message of the raw nlmon capture, walked by hand, plus the
    `ip -s xfrm state` texts; collected before the artifacts are redacted) appears, raw, as hex in either
    case or as base64, in any other file of the run folder: the recorder's capture, the monitor's logs,
    serve's JSON (tests/vm/conftest.py::_check_keys; tests/test_vm_key_check.py shows it finding each form)."""
    check = vm_ok / "keys-check.txt"
    assert check.exists(), f"no {check.name}: the fixture found no keys to check in xfrm-state-a.txt {_where(vm_ok)}"
    lines = check.read_text().splitlines()
    fields = dict(line.split(" ", 1) for line in lines if line and not line.startswith(" "))
    assert int(fields["keys"]) >= 2, lines
    checked = fields["checked"].split()
    assert "monitor-a.pcap" in checked, lines
    # every face of the witness serve that ran across the whole scenario was searched
    faces = {"witness-serve.log", "witness-tail.jsonl", "witness-tunnels.json", "witness-tunnel-detail.json",
             "witness-metrics.txt", "witness-events.json", "witness-check.json", "witness-history.sqlite3"}
    assert faces <= set(checked), f"faces not searched: {sorted(faces - set(checked))} {_where(vm_ok)}"
    assert fields["found"] == "0", "key bytes in the monitor's outputs:\n" + "\n".join(lines)


def test_the_key_witness_saw_the_whole_run(vm_ok: Path) -> None:
    """The witness serve's faces are not empty: it streamed the run's events (every SA it saw added: one
    sa_added per SPI the scenario's rekeys made), it logged at debug level, check and REST answered."""
    tail = [json.loads(x) for x in (vm_ok / "witness-tail.jsonl").read_text().splitlines() if x.strip()]
    added = {e["detail"].get("spi") for e in tail if e["type"] == "sa_added"}
    rekeys = parse_rekeys((vm_ok / "rekeys.txt").read_text())
    assert len(added) >= len(rekeys), (len(added), len(rekeys), _where(vm_ok))
    assert "DEBUG" in (vm_ok / "witness-serve.log").read_text(), _where(vm_ok)
    assert json.loads((vm_ok / "witness-check.json").read_text())["schema"] == 1
    assert (vm_ok / "witness-history.sqlite3").stat().st_size > 0
    assert (vm_ok / "witness-metrics.txt").read_text().count("ipsec_tunnel_bytes_total") >= 2
    assert "ipsec_tunnel_info{" in (vm_ok / "witness-metrics.txt").read_text()  # issue 15: the info series
