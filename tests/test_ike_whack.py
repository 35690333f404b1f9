"""libreswan's view (``monitor.ike.whack``): ``whack`` output as the IKE view's records, the client running a
real (stand-in) ``whack`` process, and the choice between VICI and whack in the settings."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from pathlib import Path

from monitor.ike.client import Listing, ViciStatus
from monitor.ike.join import IkeState, annotate
from monitor.ike.whack import WhackClient, parse_whack
from monitor.serve.config import Settings
from tests.ike_samples import kernel_tunnel

#: libreswan 4.10's own lines (VM scenario `libreswan`; SPIs changed to the samples'), and a state negotiating.
SHOWSTATES = """\
000 #3: "net":500 STATE_V2_ESTABLISHED_IKE_SA (established IKE SA); REKEY in 27565s; REPLACE in 28645s; newest; idle;
000 #4: "net":500 STATE_V2_ESTABLISHED_CHILD_SA (established Child SA); LIVENESS in 0s; REKEY in 27652s; \
REPLACE in 28645s; newest; eroute owner; IKE SA #3; idle;
000 #4: "net" esp.0d0e0f10@192.0.2.2 esp.c1a2b3c4@192.0.2.1 tun.0@192.0.2.2 tun.0@192.0.2.1 Traffic: ESPin=0B
000 #5: "other":500 STATE_V2_PARENT_I1 (sent IKE_SA_INIT request); RETRANSMIT in 3s; idle;
000 #5: pending CHILD SA for "other"
"""
TRAFFIC = """\
006 #4: "net", type=ESP, add_time=1796357744, inBytes=840, outBytes=840, maxBytes=2^63B, id='@b'
"""


def test_parse_whack_states_spis_and_ids() -> None:
    """An established IKE SA with its Child SA (SPIs, INSTALLED, the peer id), and a connection still
    negotiating (an IKE SA, no child); the pending line and unknown lines are skipped."""
    sas = {s.conn: s for s in parse_whack(SHOWSTATES, TRAFFIC)}
    assert sorted(sas) == ["net", "other"]
    net = sas["net"]
    assert (net.uniqueid, net.state, net.remote_id) == (3, "STATE_V2_ESTABLISHED_IKE_SA", "@b")
    (child,) = net.children
    assert (child.name, child.uniqueid, child.state) == ("net", 4, "INSTALLED")
    assert {child.spi_in, child.spi_out} == {0xC1A2B3C4, 0x0D0E0F10}
    assert (sas["other"].state, sas["other"].children) == ("STATE_V2_PARENT_I1", ())
    assert parse_whack("") == []
    assert parse_whack("garbage\n#x: nothing\n") == []
    unprefixed = parse_whack(SHOWSTATES.replace("000 ", ""))
    assert {s.conn for s in unprefixed} == {"net", "other"}


def test_whack_records_join_kernel_tunnels_by_spi() -> None:
    """No reqid from whack: the kernel tunnel holding the Child SA's SPIs gets the connection's name."""
    state = IkeState.of(parse_whack(SHOWSTATES, TRAFFIC), (), 1000.0, {})
    t = annotate(kernel_tunnel(reqid=16389), state, 1000.0)
    assert (t["ike"]["conn"], t["ike"]["child"], t["ike"]["remote_id"]) == ("net", "net", "@b")
    other = annotate(kernel_tunnel(reqid=16393, spis=(0x11, 0x22)), state, 1000.0)
    assert other["ike"] is None


def _fake_whack(tmp_path: Path, body: str) -> str:
    path = tmp_path / "whack"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


async def test_whack_client_reads_degrades_and_recovers(tmp_path: Path) -> None:
    """A stand-in whack process: a listing with the states; pluto gone (whack fails) = one not-connected status;
    back = connected and listing again. The loop is never blocked meanwhile."""
    (tmp_path / "states").write_text(SHOWSTATES)
    (tmp_path / "traffic").write_text(TRAFFIC)
    cmd = _fake_whack(tmp_path, f"""d={tmp_path}
[ -e $d/down ] && {{ echo 'whack: Pluto is not running (no "$2")' >&2; exit 1; }}
[ "$3" = --showstates ] && cat $d/states
[ "$3" = --trafficstatus ] && cat $d/traffic
exit 0
""")
    got: list[object] = []
    client = WhackClient("/run/test/pluto.ctl", got.append, refresh=0.05, command=[cmd])
    client.start(asyncio.get_running_loop())

    async def until(what: str, cond: object) -> None:
        deadline = time.monotonic() + 10
        while not cond():  # type: ignore[operator]
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {got}"
            await asyncio.sleep(0.02)

    try:
        await until("a listing", lambda: any(isinstance(g, Listing) for g in got))
        assert got[0] == ViciStatus(True, "/run/test/pluto.ctl", None, got[0].ts)  # type: ignore[attr-defined]
        listing = next(g for g in got if isinstance(g, Listing))
        assert {s.conn for s in listing.sas} == {"net", "other"}
        (tmp_path / "down").touch()
        await until("down", lambda: any(isinstance(g, ViciStatus) and not g.connected for g in got))
        await asyncio.sleep(0.3)  # several failing reads: still one status
        down = [g for g in got if isinstance(g, ViciStatus) and not g.connected]
        assert len(down) == 1
        assert "Pluto is not running" in str(down[0].error)
        os.unlink(tmp_path / "down")
        await until("up again", lambda: isinstance(got[-1], Listing) and any(
            isinstance(g, ViciStatus) and g.connected for g in got[got.index(down[0]):]))
    finally:
        await asyncio.get_running_loop().run_in_executor(None, client.stop)


def test_ike_source_choice(tmp_path: Path) -> None:
    """An explicit whack path wins; off/auto without pluto's socket keep VICI (or off) as before."""
    assert Settings(whack=str(tmp_path / "pluto.ctl")).ike_source == ("whack", str(tmp_path / "pluto.ctl"))
    assert Settings(whack="off").ike_source == ("vici", None)
    assert Settings(whack="off", vici="off").ike_source == ("off", None)
    assert Settings(source="simulate").ike_source == ("off", None)
    assert Settings(vici="/x.vici").ike_source == ("vici", "/x.vici")
