"""VICI answers shaped as strongSwan's ``src/libcharon/plugins/vici/README.md`` (and ``vici_query.c`` of 5.9.8)
describe them, with values as the ``vici`` package returns them (``bytes``; lists of ``bytes``; sections as
``OrderedDict``). Shared by the IKE unit tests and the fake charon."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any


def b(**kv: Any) -> OrderedDict[str, Any]:
    """A section with dashed keys (``spi_in`` -> ``spi-in``, as in list-sa): str values become bytes, lists lists
    of bytes, dicts stay sections. A leading ``_`` keeps the rest of the key as is."""
    return _section(kv, dash=True)


def u(**kv: Any) -> OrderedDict[str, Any]:
    """A section with keys as given (list-conn's ``local_addrs``, ``dpd_action``)."""
    return _section(kv, dash=False)


def _section(kv: dict[str, Any], *, dash: bool) -> OrderedDict[str, Any]:
    out: OrderedDict[str, Any] = OrderedDict()
    for k, v in kv.items():
        key = k[1:].replace("_", "-") if k.startswith("_") else (k.replace("_", "-") if dash else k)
        if isinstance(v, dict):
            out[key] = v
        elif isinstance(v, list):
            out[key] = [str(i).encode() for i in v]
        else:
            out[key] = str(v).encode()
    return out


def child_sa(name: str = "net", uniqueid: int = 3, reqid: int = 1, spi_in: int = 0xC1A2B3C4,
             spi_out: int = 0x0D0E0F10, state: str = "INSTALLED", install_time: int = 60,
             **extra: Any) -> OrderedDict[str, Any]:
    """One ``child-sas`` entry (``spi-in`` = "%.8x" of the SPI, as vici_query.c writes it)."""
    return b(name=name, uniqueid=uniqueid, reqid=reqid, state=state, mode="TUNNEL", protocol="ESP",
             spi_in=f"{spi_in:08x}", spi_out=f"{spi_out:08x}", encr_alg="AES_CBC", encr_keysize=128,
             integ_alg="HMAC_SHA2_256_128", bytes_in=840, packets_in=10, bytes_out=840, packets_out=10,
             rekey_time=900, life_time=1200, install_time=install_time,
             local_ts=["10.10.1.0/24"], remote_ts=["10.20.1.0/24"], **extra)


def list_sa(conn: str = "gw", children: dict[str, Any] | None = None, uniqueid: int = 1,
            state: str = "ESTABLISHED", **extra: Any) -> OrderedDict[str, Any]:
    """One ``list-sa`` event: ``{<IKE_SA config name> = {...}}``."""
    kids = children if children is not None else {"net-3": child_sa()}
    body = b(uniqueid=uniqueid, version=2, state=state, local_host="192.0.2.1", local_port=500,
             local_id="192.0.2.1", remote_host="192.0.2.2", remote_port=500, remote_id="gw-b.example",
             initiator="yes", initiator_spi="1122334455667788", responder_spi="8877665544332211",
             encr_alg="AES_CBC", encr_keysize=128, integ_alg="HMAC_SHA2_256_128", prf_alg="PRF_HMAC_SHA2_256",
             dh_group="ECP_256", established=120, rekey_time=3000, reauth_time=0,
             _child_sas=OrderedDict(kids), **extra)
    body["tasks-queued"] = []
    return OrderedDict([(conn, body)])


def list_conn(conn: str = "gw", children: tuple[str, ...] = ("net",), dpd_action: str = "restart",
              local_ts: str = "10.10.1.0/24", remote_ts: str = "10.20.1.0/24") -> OrderedDict[str, Any]:
    """One ``list-conn`` event."""
    kids = OrderedDict((c, u(mode="TUNNEL", rekey_time=900, rekey_bytes=0, rekey_packets=0, dpd_action=dpd_action,
                             close_action="none", _local_ts=[local_ts], _remote_ts=[remote_ts])) for c in children)
    body = u(local_addrs=["192.0.2.1"], remote_addrs=["192.0.2.2"], local_port=500, remote_port=500,
             version="IKEv2", reauth_time=0, rekey_time=14400, unique="UNIQUE_NO", dpd_delay=3,
             _local_1=u(**{"class": "pre-shared key"}, id="192.0.2.1"),
             _remote_1=u(**{"class": "pre-shared key"}, id="gw-b.example"),
             _children=kids)
    return OrderedDict([(conn, body)])


def kernel_tunnel(reqid: int = 1, spis: tuple[int, ...] = (0xC1A2B3C4, 0x0D0E0F10), state: str = "up",
                  added: float = 1000.0, netns: str = "default") -> dict[str, Any]:
    """The correlator's public JSON of a tunnel, the fields the join reads."""
    dirs = ("in", "out")
    return {"id": f"{netns}:{reqid}:192.0.2.1-192.0.2.2", "netns": netns, "reqid": reqid, "if_id": 0, "mark": 0,
            "local": "192.0.2.1", "remote": "192.0.2.2", "state": state,
            "reasons": [{"code": "established", "text": "x"}], "hints": [],
            "selectors": [{"src": "10.10.1.0/24", "dst": "10.20.1.0/24", "proto": 0, "sport": 0, "dport": 0}],
            "sas": [{"spi": f"0x{s:08x}", "direction": dirs[i % 2], "added": added} for i, s in enumerate(spis)]}
