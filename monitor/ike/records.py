"""strongSwan's VICI answers as typed immutable records (PURE: dicts in, records out).

The ``vici`` package returns every message as nested ``OrderedDict``s whose values are ``bytes`` (VICI's
"non-null terminated strings as values only; numbers get encoded as strings") and whose lists are lists of
``bytes``. These functions take exactly that (``str`` values are accepted too) and never raise on a missing
or malformed field: it becomes ``None`` (or empty), so a newer or older charon cannot break the monitor.

Shapes, from ``src/libcharon/plugins/vici/README.md`` (strongSwan):

``list-sa`` event (one per IKE_SA)::

    { <IKE_SA config name> = { uniqueid, version, state, local-host, local-id, remote-host, remote-id,
        initiator = <yes, if initiator of IKE_SA>, nat-local, nat-remote, encr-alg, encr-keysize, integ-alg,
        prf-alg, dh-group, established = <seconds the IKE_SA has been established>,
        rekey-time = <seconds before IKE_SA gets rekeyed>, reauth-time = <seconds before ... re-authenticated>,
        child-sas = { <unique child-sa-name>* = { name, uniqueid, reqid, state, mode, protocol, encap,
            spi-in = <hex encoded inbound SPI>, spi-out, mark-in, mark-out, if-id-in, if-id-out, encr-alg,
            encr-keysize, integ-alg, dh-group, bytes-in, packets-in, bytes-out, packets-out,
            rekey-time, life-time, install-time = <seconds the CHILD_SA has been installed>,
            local-ts = [...], remote-ts = [...] } } } }

``list-conn`` event (one per connection)::

    { <IKE_SA connection name> = { local_addrs = [...], remote_addrs = [...], version, reauth_time,
        rekey_time, dpd_delay, local*/remote* = { class, id, ... },
        children = { <CHILD_SA config name>* = { mode, rekey_time, dpd_action, close_action,
            local-ts = [...], remote-ts = [...] } } } }

(``dpd_delay``, ``dpd_action`` and ``close_action`` are written by ``vici_query.c`` although the README does
not list them; ``start_action`` is not exported at all.)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["ChildSa", "Conn", "ConnChild", "IkeSa", "parse_list_conn", "parse_list_sa", "text"]


def text(v: object) -> str | None:
    """A VICI value as text (``bytes`` decoded as UTF-8, replacing bad bytes); None when absent."""
    if isinstance(v, bytes | bytearray):
        return bytes(v).decode("utf-8", "replace")
    if isinstance(v, str):
        return v
    return None


def _int(v: object, base: int = 10) -> int | None:
    s = text(v)
    if s is None:
        return None
    try:
        return int(s.strip(), base)
    except ValueError:
        return None


def _yes(v: object) -> bool:
    return (text(v) or "").strip().lower() in ("yes", "1", "true")


def _list(v: object) -> tuple[str, ...]:
    if isinstance(v, list | tuple):
        return tuple(t for t in (text(i) for i in v) if t is not None)
    return ()


def _section(v: object) -> Mapping[str, Any]:
    return v if isinstance(v, Mapping) else {}


def _alg(m: Mapping[str, Any], alg: str, size: str) -> str | None:
    """``encr-alg`` + ``encr-keysize`` as swanctl prints them: ``AES_CBC-128``."""
    name = text(m.get(alg))
    if name is None:
        return None
    ks = _int(m.get(size))
    return f"{name}-{ks}" if ks else name


@dataclass(frozen=True, slots=True, kw_only=True)
class ChildSa:
    """One CHILD_SA of ``list-sas``. SPIs are integers (VICI sends them as 8 hex digits)."""

    key: str  #: the section name (``<name>-<uniqueid>`` in strongSwan >= 5.6; the name before)
    name: str
    uniqueid: int | None
    reqid: int | None
    state: str | None  #: INSTALLED, REKEYING, REKEYED, DELETING, ...
    mode: str | None
    protocol: str | None
    encap: bool
    spi_in: int | None
    spi_out: int | None
    if_id_in: int | None
    if_id_out: int | None
    mark_in: int | None
    mark_out: int | None
    encr: str | None  #: ``AES_GCM_16-128`` (algorithm and key size)
    integ: str | None
    dh_group: str | None
    esn: bool
    bytes_in: int | None
    bytes_out: int | None
    packets_in: int | None
    packets_out: int | None
    install_time: int | None  #: seconds installed, at listing time
    rekey_time: int | None  #: seconds until rekey, at listing time
    life_time: int | None  #: seconds until expiry, at listing time
    local_ts: tuple[str, ...]
    remote_ts: tuple[str, ...]

    @property
    def proposal(self) -> str | None:
        """The ESP proposal as swanctl shows it: ``AES_CBC-128/HMAC_SHA2_256_128[/MODP_2048]``."""
        parts = [p for p in (self.encr, self.integ, self.dh_group) if p]
        return "/".join(parts) or None


@dataclass(frozen=True, slots=True, kw_only=True)
class IkeSa:
    """One IKE_SA of ``list-sas`` with its CHILD_SAs."""

    conn: str  #: the IKE_SA config name
    uniqueid: int | None
    version: int | None
    state: str | None  #: ESTABLISHED, CONNECTING, REKEYING, DELETING, ...
    local_host: str | None
    remote_host: str | None
    local_id: str | None
    remote_id: str | None
    initiator: bool
    nat_local: bool
    nat_remote: bool
    encr: str | None
    integ: str | None
    prf: str | None
    dh_group: str | None
    established: int | None  #: seconds established, at listing time
    rekey_time: int | None
    reauth_time: int | None
    children: tuple[ChildSa, ...]

    @property
    def proposal(self) -> str | None:
        """The IKE proposal as swanctl shows it: ``AES_CBC-128/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/ECP_256``."""
        parts = [p for p in (self.encr, self.integ, self.prf, self.dh_group) if p]
        return "/".join(parts) or None


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnChild:
    """One child config of ``list-conns``."""

    name: str
    mode: str | None
    rekey_time: int | None
    dpd_action: str | None  #: as swanctl.conf spells it: ``clear``, ``trap``, ``restart``
    close_action: str | None  #: same
    local_ts: tuple[str, ...]
    remote_ts: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Conn:
    """One connection (IKE config) of ``list-conns``."""

    name: str
    local_addrs: tuple[str, ...]
    remote_addrs: tuple[str, ...]
    version: str | None
    rekey_time: int | None
    reauth_time: int | None
    dpd_delay: int | None
    local_ids: tuple[str, ...]
    remote_ids: tuple[str, ...]
    children: tuple[ConnChild, ...]


def _child(key: str, m: Mapping[str, Any]) -> ChildSa:
    return ChildSa(
        key=key, name=text(m.get("name")) or key, uniqueid=_int(m.get("uniqueid")), reqid=_int(m.get("reqid")),
        state=text(m.get("state")), mode=text(m.get("mode")), protocol=text(m.get("protocol")),
        encap=_yes(m.get("encap")),
        spi_in=_int(m.get("spi-in"), 16), spi_out=_int(m.get("spi-out"), 16),
        if_id_in=_int(m.get("if-id-in"), 16), if_id_out=_int(m.get("if-id-out"), 16),
        mark_in=_int(m.get("mark-in"), 16), mark_out=_int(m.get("mark-out"), 16),
        encr=_alg(m, "encr-alg", "encr-keysize"), integ=_alg(m, "integ-alg", "integ-keysize"),
        dh_group=text(m.get("dh-group")), esn=_yes(m.get("esn")),
        bytes_in=_int(m.get("bytes-in")), bytes_out=_int(m.get("bytes-out")),
        packets_in=_int(m.get("packets-in")), packets_out=_int(m.get("packets-out")),
        install_time=_int(m.get("install-time")), rekey_time=_int(m.get("rekey-time")),
        life_time=_int(m.get("life-time")),
        local_ts=_list(m.get("local-ts")), remote_ts=_list(m.get("remote-ts")),
    )


def ike_sa(conn: str, m: Mapping[str, Any]) -> IkeSa:
    """One IKE_SA section (also the body of ``ike-updown``/``child-updown`` events)."""
    children = _section(m.get("child-sas"))
    return IkeSa(
        conn=conn, uniqueid=_int(m.get("uniqueid")), version=_int(m.get("version")), state=text(m.get("state")),
        local_host=text(m.get("local-host")), remote_host=text(m.get("remote-host")),
        local_id=text(m.get("local-id")), remote_id=text(m.get("remote-id")),
        initiator=_yes(m.get("initiator")), nat_local=_yes(m.get("nat-local")), nat_remote=_yes(m.get("nat-remote")),
        encr=_alg(m, "encr-alg", "encr-keysize"), integ=_alg(m, "integ-alg", "integ-keysize"),
        prf=text(m.get("prf-alg")), dh_group=text(m.get("dh-group")),
        established=_int(m.get("established")), rekey_time=_int(m.get("rekey-time")),
        reauth_time=_int(m.get("reauth-time")),
        children=tuple(_child(k, c) for k, c in children.items() if isinstance(c, Mapping)),
    )


def parse_list_sa(msg: Mapping[str, Any]) -> list[IkeSa]:
    """The IKE_SAs of one ``list-sa`` event (normally one; sections that are not IKE_SAs are skipped)."""
    return [ike_sa(name, body) for name, body in msg.items() if isinstance(body, Mapping)]


def _ids(m: Mapping[str, Any], side: str) -> tuple[str, ...]:
    """``id`` of every ``local*``/``remote*`` auth section (``local-1``, ``remote`` ...)."""
    out = []
    for key, sec in m.items():
        if key.startswith(side) and isinstance(sec, Mapping):
            ident = text(sec.get("id"))
            if ident:
                out.append(ident)
    return tuple(out)


#: VICI writes actions with charon's internal names (``action_names``: none, trap, start); swanctl.conf spells
#: ``dpd_action``/``close_action`` clear, trap, restart (``start`` in 5.9 ``vici_query.c`` means restart).
SWANCTL_ACTION = {"none": "clear", "start": "restart"}


def _action(v: object) -> str | None:
    a = text(v)
    return SWANCTL_ACTION.get(a, a) if a is not None else None


def _conn_child(name: str, m: Mapping[str, Any]) -> ConnChild:
    return ConnChild(name=name, mode=text(m.get("mode")), rekey_time=_int(m.get("rekey_time")),
                     dpd_action=_action(m.get("dpd_action")), close_action=_action(m.get("close_action")),
                     local_ts=_list(m.get("local-ts")), remote_ts=_list(m.get("remote-ts")))


def parse_list_conn(msg: Mapping[str, Any]) -> list[Conn]:
    """The connections of one ``list-conn`` event (normally one)."""
    out = []
    for name, m in msg.items():
        if not isinstance(m, Mapping):
            continue
        children = _section(m.get("children"))
        out.append(Conn(
            name=name, local_addrs=_list(m.get("local_addrs")), remote_addrs=_list(m.get("remote_addrs")),
            version=text(m.get("version")), rekey_time=_int(m.get("rekey_time")),
            reauth_time=_int(m.get("reauth_time")), dpd_delay=_int(m.get("dpd_delay")),
            local_ids=_ids(m, "local"), remote_ids=_ids(m, "remote"),
            children=tuple(_conn_child(k, c) for k, c in children.items() if isinstance(c, Mapping)),
        ))
    return out


def parse_all(messages: Iterable[Mapping[str, Any]], parse: Any) -> list[Any]:
    """Every record of a streamed answer (``parse``: :func:`parse_list_sa` or :func:`parse_list_conn`)."""
    return [rec for msg in messages for rec in parse(msg)]
