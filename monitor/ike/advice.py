"""Configuration advice from ``list-conns`` (PURE; the rules are DATA).

Each configured child is a :class:`Subject`: its connection and child config as parsed, the IKE_SAs charon
lists for the connection, the connection's last failure, the other children whose traffic selectors overlap
its own, and what we assume of the peer (:class:`AdviceConfig`, the ``[ike]`` table). Every row of
:data:`HINT_RULES` whose predicate holds gives one hint ``{code, severity, conn, child, text}``; the text is a
``str.format`` template over the subject (``{s.child.dpd_action}``, ``{s.config.peer_idle_timeout:g}`` ...).
Add a row to teach it a new piece of advice; nothing else changes.

What VICI cannot say: ``list-conns`` exports ``dpd_action``, ``close_action``, ``dpd_delay`` and ``rekey_time``
but not ``start_action`` (strongSwan 5.9 ``vici_query.c``), so "nothing starts this connection" is inferred:
charon lists no IKE_SA for it and saw no failure of it (nothing tried).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from monitor.errors import ConfigError
from monitor.ike.records import Conn, ConnChild, IkeSa
from monitor.ike.rules import IkeError

__all__ = ["HINT_RULES", "AdviceConfig", "HintRule", "Subject", "conn_hints", "overlaps"]

Net = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True, kw_only=True)
class AdviceConfig:
    """What the advice assumes of the peer (``[ike]`` in the config file; docs/configuration.md)."""

    #: Seconds the peer waits without traffic or DPD before it drops the tunnel (AWS: a DPD timeout of 30 s).
    peer_idle_timeout: float = 30.0
    #: The peer's CHILD_SA (phase 2) lifetime in seconds (AWS's default: 3600).
    peer_child_lifetime: float = 3600.0
    #: The peer's IKE_SA (phase 1) lifetime in seconds (AWS's default: 28800).
    peer_ike_lifetime: float = 28800.0

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any]) -> AdviceConfig:
        """The ``[ike]`` table (raises ConfigError on an unknown key or a value that is not a positive number)."""
        known = {f.name for f in fields(cls)}
        values: dict[str, float] = {}
        for key, raw in m.items():
            if key not in known:
                raise ConfigError(f"[ike]: unknown setting {key!r} (known: {', '.join(sorted(known))})")
            if isinstance(raw, bool) or not isinstance(raw, int | float) or not 0 < raw < float("inf"):
                raise ConfigError(f"[ike] {key} must be a positive number of seconds, got {raw!r}")
            values[key] = float(raw)
        return cls(**values)


@dataclass(frozen=True, slots=True, kw_only=True)
class Subject:
    """One configured child, with what the rules look at."""

    conn: Conn
    child: ConnChild
    sas: tuple[IkeSa, ...]  #: charon's IKE_SAs of this connection
    error: IkeError | None  #: the connection's last failure
    overlapping: tuple[str, ...]  #: ``conn/child`` of other children whose selectors overlap this one's
    config: AdviceConfig

    @property
    def ike_rekey(self) -> int | None:
        """Seconds between IKE_SA rekeys (or reauthentications); 0 = never; None = charon did not say."""
        if self.conn.rekey_time is None and self.conn.reauth_time is None:
            return None
        return self.conn.rekey_time or self.conn.reauth_time or 0

    @property
    def overlapping_text(self) -> str:
        """``overlapping`` as one string."""
        return ", ".join(self.overlapping)


@dataclass(frozen=True, slots=True)
class HintRule:
    """A piece of advice: when it applies, how bad it is, and what to do."""

    code: str
    severity: str  #: ``warning`` (the tunnel will go down or stay down) or ``info``
    applies: Callable[[Subject], bool]
    text: str  #: ``str.format`` template; the subject is ``s``


_RESPONDER = "A responder-only peer (most cloud VPN gateways) never initiates"

#: The advice table; every row that applies gives a hint (docs/api.md "Configuration hints").
HINT_RULES: tuple[HintRule, ...] = (
    HintRule("start_action", "warning",
             lambda s: not s.sas and s.error is None,
             "Nothing starts this connection: charon has no IKE_SA for it and never tried (start_action = none, "
             "or trap with no traffic yet). " + _RESPONDER + ": set start_action = start (or trap) and "
             "dpd_action = restart."),
    HintRule("dpd_action", "warning",
             lambda s: s.child.dpd_action not in ("restart", "trap", None),
             "dpd_action = {s.child.dpd_action}: when DPD finds the peer dead the CHILD_SA is closed and nothing "
             "brings it back. " + _RESPONDER + ": set dpd_action = restart (or trap)."),
    HintRule("dpd_off", "warning",
             lambda s: s.conn.dpd_delay == 0,
             "DPD is off (dpd_delay = 0): a dead peer is seen only at the next rekey, and a peer that drops idle "
             "tunnels after {s.config.peer_idle_timeout:g} s ([ike] peer_idle_timeout) closes this one when no "
             "traffic flows. Set dpd_delay below that."),
    HintRule("dpd_delay", "warning",
             lambda s: bool(s.conn.dpd_delay) and (s.conn.dpd_delay or 0) >= s.config.peer_idle_timeout,
             "dpd_delay = {s.conn.dpd_delay} s is not below the peer's idle timeout "
             "({s.config.peer_idle_timeout:g} s, [ike] peer_idle_timeout): with no traffic the peer drops the "
             "tunnel before our first DPD. Set dpd_delay to at most a third of it."),
    HintRule("close_action", "info",
             lambda s: s.child.close_action in ("clear", "none"),
             "close_action = {s.child.close_action}: when the peer deletes the CHILD_SA (its idle timeout, a "
             "restart) charon does not bring it back. Set close_action = start (or trap) if it must stay up."),
    HintRule("rekey_time", "warning",
             lambda s: s.child.rekey_time is not None
             and (s.child.rekey_time == 0 or s.child.rekey_time > s.config.peer_child_lifetime),
             "CHILD_SA rekey_time = {s.child.rekey_time} s (0: never) is longer than the peer's lifetime "
             "({s.config.peer_child_lifetime:g} s, [ike] peer_child_lifetime): the peer's SA expires first and "
             "traffic stops until one side renegotiates. Set rekey_time below it."),
    HintRule("ike_rekey_time", "warning",
             lambda s: s.ike_rekey is not None and (s.ike_rekey == 0 or s.ike_rekey > s.config.peer_ike_lifetime),
             "IKE_SA rekey_time = {s.ike_rekey} s (0: never) is longer than the peer's IKE lifetime "
             "({s.config.peer_ike_lifetime:g} s, [ike] peer_ike_lifetime): the peer's IKE_SA expires first. Set "
             "rekey_time below it."),
    HintRule("overlapping_ts", "warning",
             lambda s: bool(s.overlapping),
             "Its traffic selectors overlap those of {s.overlapping_text}: the kernel picks one policy for the "
             "shared traffic, so one of them carries nothing (or the wrong traffic). Make them disjoint."),
)


def _net(ts: str) -> Net | None:
    """``10.1.0.0/24[udp/500]`` as a network; None for ``dynamic``, ranges and anything else."""
    try:
        return ipaddress.ip_network(ts.split("[", 1)[0].strip(), strict=False)
    except ValueError:
        return None


def _nets(tss: Iterable[str]) -> list[Net]:
    return [n for n in (_net(t) for t in tss) if n is not None]


def _meet(a: Sequence[Net], b: Sequence[Net]) -> bool:
    return any(x.version == y.version and x.overlaps(y) for x in a for y in b)


def overlaps(conns: Sequence[Conn]) -> dict[tuple[str, str], tuple[str, ...]]:
    """For each ``(conn, child)``, the other children (``conn/child``) whose local and remote selectors both
    overlap its own. A sweep over the remote ranges (usually distinct per connection), so a fleet of
    connections costs about n log n, not n^2."""
    items = [((c.name, ch.name), _nets(ch.local_ts), _nets(ch.remote_ts)) for c in conns for ch in c.children]
    spans = sorted((int(n.network_address) | (n.version << 128), int(n.broadcast_address) | (n.version << 128), i)
                   for i, (_, _, remote) in enumerate(items) for n in remote)
    found: dict[int, set[int]] = {}
    active: list[tuple[int, int]] = []  # (end, item) of spans that may still overlap the next one
    for start, end, i in spans:
        active = [(e, j) for e, j in active if e >= start]
        for _, j in active:
            if j != i and _meet(items[i][1], items[j][1]):
                found.setdefault(i, set()).add(j)
                found.setdefault(j, set()).add(i)
        active.append((end, i))
    return {items[i][0]: tuple(sorted("/".join(items[j][0]) for j in js)) for i, js in found.items()}


def conn_hints(conns: Sequence[Conn], sas: Sequence[IkeSa], errors: Mapping[str, IkeError],
               config: AdviceConfig, rules: Sequence[HintRule] = HINT_RULES
               ) -> dict[tuple[str, str], tuple[dict[str, str], ...]]:
    """Every configured child's hints, by ``(conn, child)`` (children with none are left out)."""
    by_conn: dict[str, list[IkeSa]] = {}
    for ike in sas:
        by_conn.setdefault(ike.conn, []).append(ike)
    over = overlaps(conns)
    out: dict[tuple[str, str], tuple[dict[str, str], ...]] = {}
    for conn in conns:
        for child in conn.children:
            s = Subject(conn=conn, child=child, sas=tuple(by_conn.get(conn.name, ())), error=errors.get(conn.name),
                        overlapping=over.get((conn.name, child.name), ()), config=config)
            hints = tuple({"code": r.code, "severity": r.severity, "conn": conn.name, "child": child.name,
                           "text": r.text.format(s=s)} for r in rules if r.applies(s))
            if hints:
                out[(conn.name, child.name)] = hints
    return out

