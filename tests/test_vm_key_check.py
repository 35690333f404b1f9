"""The VM tier's key check (``tests/vm/conftest.py::_check_keys``) on a hand-made run folder.

The check runs in the VM fixture before the folder is redacted; here it gets a raw (unscrubbed) nlmon
capture of golden SA messages and an ``ip -s xfrm state`` text, and must find each key in each form a
face could leak it in (raw, hex in either case, base64), and nothing in a clean file.
"""

from __future__ import annotations

import base64
import struct
from pathlib import Path

import pytest

from tests import golden
from tests.vm.conftest import KEY_CHECK, _check_keys

TEXT_ONLY_KEY = bytes(range(0x40, 0x60))  # seen only in `ip -s xfrm state` (an SA made after the capture)


def _raw_nlmon(path: Path, datagrams: list[bytes]) -> None:
    """A ``tcpdump -i nlmon0`` style pcap: LINKTYPE_NETLINK, cooked header, NETLINK_XFRM, keys unscrubbed."""
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 253)
    for i, d in enumerate(datagrams):
        rec = struct.pack(">HHH8sH", 4, 824, 0, bytes(8), 6) + d
        out += struct.pack("<IIII", 1_700_000_000 + i, 0, len(rec), len(rec)) + rec
    path.write_bytes(out)


def _run_folder(rw: Path, faces: dict[str, bytes]) -> dict[str, str]:
    _raw_nlmon(rw / "nlmon-a.pcap", [golden.newsa_gcm()[0], golden.newsa_cbc()[0]])
    (rw / "xfrm-state-a.txt").write_text(f"src 192.0.2.1 dst 192.0.2.2\n\tenc cbc(aes) 0x{TEXT_ONLY_KEY.hex()}\n")
    (rw / "clean.json").write_bytes(b'{"tunnels": [{"id": "t1", "spi": "0x00001234"}]}\n')
    for name, data in faces.items():
        (rw / name).write_bytes(data)
    _check_keys(rw)
    lines = (rw / KEY_CHECK).read_text().splitlines()
    return dict(line.split(" ", 1) for line in lines if line and not line.startswith(" ")) | {"all": "\n".join(lines)}


def test_keys_come_from_the_raw_capture_and_the_text() -> None:
    """Every SA's keys in the raw capture (walked by hand) and in the text are collected; a clean folder
    has none of them."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        got = _run_folder(Path(d), {})
    assert got["keys"] == "4", got["all"]  # GCM (AEAD), CBC + HMAC (CRYPT, AUTH_TRUNC), the text-only key
    assert got["checked"] == "clean.json", got["all"]  # the key sources themselves are not faces
    assert got["found"] == "0", got["all"]


@pytest.mark.parametrize(("name", "data"), [
    ("serve-a.log", b"debug: " + golden.GCM_KEY + b"\n"),
    ("tunnels.json", b'{"x": "' + golden.CBC_KEY.hex().encode() + b'"}'),
    ("metrics.txt", b"k=" + golden.HMAC_KEY.hex().upper().encode()),
    ("tail.jsonl", b'{"b": "' + base64.b64encode(b"\x00" + golden.HMAC_KEY) + b'"}'),
    ("check.json", base64.b64encode(TEXT_ONLY_KEY)),
])
def test_a_key_in_any_form_in_any_face_is_found(tmp_path: Path, name: str, data: bytes) -> None:
    """One key written into one face, raw, as hex (either case) or base64 (any alignment): found."""
    got = _run_folder(tmp_path, {name: data})
    assert got["found"] == "1", got["all"]
    assert f"  {name}: 1 of 4 keys" in got["all"].splitlines()
