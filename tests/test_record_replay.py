"""ReplaySource, `monitor replay` / `monitor decode`, and `monitor record` on the host kernel."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import secrets
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from monitor.cli import main
from monitor.commands.replay import replay
from monitor.errors import CaptureFormatError
from monitor.sources.items import Datagram
from monitor.sources.replay import ReplaySource
from monitor.wire import xfrm as X
from monitor.wire.decode import decode_datagram
from monitor.wire.encode import encode, encode_dump_request
from monitor.wire.events import SA, Algo, LifetimeCfg, LifetimeCur, NlHeader, SAAdded, Selector, Stats
from monitor.wire.pcap import PcapWriter, read_pcap
from tests.conftest import netns_exists

ROOT = Path(__file__).resolve().parent.parent
REAL = ROOT / "tests" / "data" / "strongswan-rekey-nlmon.pcap"


def _sa(spi: int) -> SA:
    return SA(Selector("0.0.0.0", "0.0.0.0"), "192.0.2.2", spi, X.IPPROTO_ESP, "192.0.2.1", LifetimeCfg(),
              LifetimeCur(), Stats(), 0, 3, X.AF_INET, 1, 32, 0, enc=Algo("cbc(aes)", 256),
              auth_trunc=Algo("hmac(sha256)", 256, 128))


def _capture(path: Path, gaps: list[float]) -> list[bytes]:
    """A capture of one request and len(gaps) SA notifications, ``gaps`` seconds apart."""
    data = [encode_dump_request(X.XFRM_MSG_GETSA, 1)]
    data += [encode(SAAdded(NlHeader(X.XFRM_MSG_NEWSA), _sa(0x100 + i))) for i in range(len(gaps))]
    ts = 1_700_000_000.0
    with PcapWriter(path) as w:
        w.write(ts, data[0], True, "site-a")
        for d, gap in zip(data[1:], gaps, strict=True):
            ts += gap
            w.write(ts, d, False, "site-a")
    return data


async def _play(path: Path, speed: float | None) -> tuple[list[Datagram], float]:
    loop = asyncio.get_running_loop()
    t = loop.time()
    got = [i async for i in ReplaySource(path, speed).items()]
    assert all(isinstance(i, Datagram) for i in got)
    return got, loop.time() - t  # type: ignore[return-value]


async def test_replay_keeps_bytes_direction_netns_and_time(tmp_path: Path) -> None:
    """Items come back exactly as recorded (bytes, direction, netns, timestamps)."""
    path = tmp_path / "c.pcap"
    data = _capture(path, [0.001, 0.001])
    got, _ = await _play(path, None)
    assert [i.data for i in got] == data
    assert [i.outgoing for i in got] == [True, False, False]
    assert {i.netns for i in got} == {"site-a"}
    assert got[2].ts - got[0].ts == pytest.approx(0.002, abs=1e-5)


class FakeTime:
    """A monotonic clock and a sleep that advances it (and still yields to the loop once)."""

    def __init__(self) -> None:
        self.t = 100.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.t

    async def sleep(self, delay: float) -> None:
        self.slept.append(delay)
        self.t += delay
        await asyncio.sleep(0)


async def _play_on(path: Path, speed: float | None, work: float = 0.0) -> tuple[list[Datagram], FakeTime]:
    """Play ``path`` on a fake clock; the consumer spends ``work`` seconds of it on each item."""
    ft = FakeTime()
    got: list[Datagram] = []
    async for i in ReplaySource(path, speed, monotonic=ft.monotonic, sleep=ft.sleep).items():
        assert isinstance(i, Datagram)
        got.append(i)
        ft.t += work
    return got, ft


async def test_replay_pacing(tmp_path: Path) -> None:
    """Pacing follows the capture's timestamps on an injected clock: speed=1 waits out each 0.3 s gap,
    speed=4 a quarter of it, time the consumer spent counts towards the wait, and fast mode never waits
    (wall-clock figures: ``bench/timing_bench.py``)."""
    path = tmp_path / "p.pcap"
    _capture(path, [0.3, 0.3])
    got, real = await _play_on(path, 1.0)
    assert len(got) == 3
    assert pytest.approx([0.3, 0.3], abs=1e-6) == real.slept
    _, quick = await _play_on(path, 4.0)
    assert pytest.approx([0.075, 0.075], abs=1e-6) == quick.slept
    # the schedule is kept against the clock, not gap by gap: 0.1 s of work leaves 0.2 s to wait
    _, busy = await _play_on(path, 1.0, work=0.1)
    assert pytest.approx([0.2, 0.2], abs=1e-6) == busy.slept
    # a consumer slower than the capture is never made to wait
    _, slow = await _play_on(path, 1.0, work=0.5)
    assert slow.slept == []
    _, fast = await _play_on(path, None)
    assert fast.slept == []
    assert fast.t == 100.0


async def test_fast_replay_yields_to_the_loop(tmp_path: Path) -> None:
    """Played as fast as possible, a long capture still yields to the loop (sleep(0)) every 256 records."""
    path = tmp_path / "long.pcap"
    _capture(path, [0.001] * 599)  # 600 records
    got, ft = await _play_on(path, None)
    assert len(got) == 600
    assert ft.slept == [0, 0]  # before records 256 and 512


async def test_replay_of_a_bad_file_raises(tmp_path: Path) -> None:
    """A file that is not a netlink pcap raises CaptureFormatError from items()."""
    path = tmp_path / "bad.pcap"
    path.write_bytes(b"not a capture at all, definitely not")
    with pytest.raises(CaptureFormatError):
        await _play(path, None)


async def test_json_replay_of_an_unscrubbed_capture_has_no_key_bytes(tmp_path: Path) -> None:
    """Even a raw (unscrubbed, nlmon-style) capture with keys replays to JSON without any key material."""
    key_c, key_a = hashlib.sha256(b"c").digest(), hashlib.sha256(b"a").digest()
    msg = encode(SAAdded(NlHeader(X.XFRM_MSG_NEWSA), _sa(0xABC)), keys={X.XFRMA_ALG_CRYPT: key_c,
                                                                        X.XFRMA_ALG_AUTH_TRUNC: key_a})
    rec = struct.pack(">HHH8sH", 4, 824, 0, bytes(8), 6) + msg
    raw = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 253)
    raw += struct.pack("<IIII", 1, 0, len(rec), len(rec)) + rec
    path = tmp_path / "raw.pcap"
    path.write_bytes(raw)
    assert key_c in path.read_bytes()
    out = io.StringIO()
    assert await replay(str(path), None, True, out) == 0
    lines = out.getvalue().splitlines()
    obj = orjson.loads(lines[0])
    assert (obj["type"], obj["sa"]["spi"], obj["sa"]["enc"]["name"]) == ("SAAdded", 0xABC, "cbc(aes)")
    text = out.getvalue()
    for key in (key_c, key_a):
        assert key.hex() not in text
        assert key[:8].decode("latin-1") not in text
        assert str(list(key[:4]))[1:-1] not in text


# <linux/netlink.h>, <linux/xfrm.h>: message types by number, and the event each one decodes to
_EXPECTED_EVENT = {2: "NetlinkError", 3: "Done", 16: "SAAdded", 17: "SADeleted", 19: "PolicyAdded",
                   20: "PolicyDeleted", 25: "PolicyUpdated", 26: "SAUpdated", 24: "SAExpired"}
# struct xfrm_usersa_info { struct xfrm_selector sel (56 bytes); struct xfrm_id id { xfrm_address_t daddr
# (16); __be32 spi; ... } ...}: the SPI sits 72 bytes into NEWSA/UPDSA/EXPIRE payloads (xfrm_user_expire
# starts with the xfrm_usersa_info), and 16 bytes into DELSA's struct xfrm_usersa_id { daddr; __be32 spi; }.
_SPI_AT = {16: 72, 26: 72, 24: 72, 17: 16}


def _walk_capture(path: Path) -> tuple[int, list[tuple[bool, int, int | None]]]:
    """(datagrams, [(to kernel, nlmsg_type, spi or None)] per message): the pcap and netlink headers read
    by hand with struct, nothing from ``monitor.wire``."""
    raw = path.read_bytes()
    order = "<" if raw[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    assert struct.unpack_from(order + "I", raw, 20)[0] == 253  # LINKTYPE_NETLINK
    off, datagrams, msgs = 24, 0, []
    while off < len(raw):
        incl = struct.unpack_from(order + "IIII", raw, off)[2]
        pkt = raw[off + 16:off + 16 + incl]
        off += 16 + incl
        pkttype, protocol = struct.unpack_from(">H", pkt, 0)[0], struct.unpack_from(">H", pkt, 14)[0]
        if protocol != 6:  # NETLINK_XFRM only (our files also hold netns-name records)
            continue
        datagrams += 1
        data, pos = pkt[16:], 0
        # struct nlmsghdr { __u32 nlmsg_len; __u16 nlmsg_type; __u16 nlmsg_flags; __u32 seq; __u32 pid; }
        to_kernel = pkttype == 4 and bool(struct.unpack_from("=H", data, 6)[0] & 1)  # NLM_F_REQUEST
        while pos + 16 <= len(data):
            length, mtype = struct.unpack_from("=IH", data, pos)
            spi = None
            if mtype in _SPI_AT and length >= 16 + _SPI_AT[mtype] + 4:
                spi = struct.unpack_from(">I", data, pos + 16 + _SPI_AT[mtype])[0]
            msgs.append((to_kernel, mtype, spi))
            pos += (length + 3) & ~3
    return datagrams, msgs


def test_replay_and_decode_commands_on_the_real_capture(capsys: pytest.CaptureFixture[str]) -> None:
    """`monitor replay --fast` prints one line per message, in order, each with the direction, event and SPI
    read from the capture by hand; `monitor decode --summary` counts the same datagrams and messages."""
    if not REAL.exists():
        pytest.skip(f"{REAL.name} is not committed yet")
    n_datagrams, msgs = _walk_capture(REAL)
    assert len(msgs) > 300  # the capture: a strongSwan rekey with its dumps (about 360 messages)
    assert main(["replay", "--fast", str(REAL)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(msgs) == len(lines)
    for line, (to_kernel, mtype, spi) in zip(lines, msgs, strict=True):
        _ts, _ns, arrow, event, *rest = line.split()
        assert ("->kernel" if to_kernel else "<-kernel") == arrow, line
        assert _EXPECTED_EVENT.get(mtype, "Unknown") == event, f"type {mtype}: {line}"
        if spi is not None:
            assert f"spi=0x{spi:08x}" == rest[0], line
    assert sum(1 for _, _, spi in msgs if spi is not None) > 100
    assert main(["decode", "--summary", str(REAL)]) == 0
    summary = capsys.readouterr().out.splitlines()
    assert summary[-1].startswith(f"{n_datagrams} datagrams, {len(msgs)} messages, 0 malformed")


def test_replay_command_reports_a_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A non-pcap file gives exit code 2 and a one-line error."""
    bad = tmp_path / "x.pcap"
    bad.write_bytes(b"\x00" * 40)
    assert main(["replay", "--fast", str(bad)]) == 2
    assert "not a pcap file" in capsys.readouterr().err


# --- monitor record on the host kernel -------------------------------------------------------------


def _monitor(*args: str) -> list[str]:
    return [sys.executable, "-m", "monitor", *args]


@pytest.mark.hostkernel
def test_record_writes_a_replayable_capture(netns: str, tmp_path: Path) -> None:
    """record --duration captures requests, dump replies and events in a netns; replay decodes them."""
    subprocess.run(["ip", "-n", netns, "xfrm", "state", "allocspi", "src", "192.0.2.1", "dst", "192.0.2.2",
                    "proto", "esp", "mode", "tunnel", "reqid", "4", "min", "0x4444", "max", "0x4444"],
                   check=True, timeout=30, capture_output=True)
    out = tmp_path / "rec.pcap"
    proc = subprocess.Popen(_monitor("record", "--out", str(out), "--duration", "2", "--netns", netns,
                                     "--interval", "0.3"), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 10
    while not (out.exists() and out.stat().st_size > 24):
        assert time.monotonic() < deadline, "record wrote nothing"
        time.sleep(0.05)
    subprocess.run(["ip", "-n", netns, "xfrm", "policy", "add", "src", "198.51.100.0/24", "dst", "203.0.113.0/24",
                    "dir", "out"], check=True, timeout=30)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert stdout.startswith("recorded "), stdout
    records = list(read_pcap(out))
    assert {r.netns for r in records} == {netns}
    events = [(r.outgoing, ev) for r in records for ev in decode_datagram(r.data)]
    assert any(o and ev.nl.type == X.XFRM_MSG_GETSA for o, ev in events)
    assert any(not o and isinstance(ev, SAAdded) and ev.sa.spi == 0x4444 for o, ev in events)
    assert any(not o and ev.nl.type == X.XFRM_MSG_NEWPOLICY and not ev.nl.flags & X.NLM_F_MULTI for o, ev in events)
    n_req = sum(r.outgoing for r in records)
    assert f"and {n_req} requests" in stdout


@pytest.mark.hostkernel
def test_record_stops_cleanly_on_sigint(netns: str, tmp_path: Path) -> None:
    """Without --duration, SIGINT ends the recording with exit 0, a summary and a complete file."""
    out = tmp_path / "sig.pcap"
    proc = subprocess.Popen(_monitor("record", "--out", str(out), "--netns", netns, "--interval", "0.2"), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while not (out.exists() and out.stat().st_size > 200):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "record wrote nothing"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert "recorded" in stdout
    assert len(list(read_pcap(out))) >= 2


@pytest.mark.hostkernel
def test_record_with_a_missing_netns_fails_cleanly(tmp_path: Path) -> None:
    """--netns with a typo: exit 2, a clear message, no file, and no namespace created."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    name = f"mon-test-typo-{secrets.token_hex(3)}"
    out = tmp_path / "none.pcap"
    proc = subprocess.run(_monitor("record", "--out", str(out), "--duration", "1", "--netns", name), cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr
    assert not out.exists()
    assert not netns_exists(name)


@pytest.mark.parametrize("speed", ["0", "-2", "nan"])
def test_replay_refuses_a_speed_that_is_not_positive(
    speed: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--speed must be a positive number: 0, negatives and nan (which compares false with everything,
    so it used to slip through and play unpaced) give exit code 2 and a one-line error."""
    path = tmp_path / "c.pcap"
    _capture(path, [0.0])
    assert main(["replay", "--speed", speed, str(path)]) == 2
    captured = capsys.readouterr()
    assert "--speed must be positive" in captured.err
    assert captured.out == ""
    with pytest.raises(ValueError, match="speed"):
        ReplaySource(path, float(speed) if speed == "nan" else -1.0)


@pytest.mark.parametrize("flag", ["--interval", "--duration"])
def test_record_refuses_nan_interval_and_duration(
    flag: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`monitor record --interval nan` / `--duration nan` are usage errors (exit 2), checked before any
    socket is opened, and leave no capture file behind."""
    out = tmp_path / "r.pcap"
    assert main(["record", "--out", str(out), flag, "nan"]) == 2
    assert "must be positive" in capsys.readouterr().err
    assert not out.exists()
