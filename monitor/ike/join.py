"""The kernel's tunnels joined to charon's CHILD_SAs (PURE: records, tunnel JSON and an explicit ``now``).

A kernel tunnel (the correlator's public JSON: ``reqid``, ``sas[].spi`` as ``"0x%08x"``) belongs to the
CHILD_SAs charon lists with the same reqid; when several do (a rekey in flight, duplicates), the one whose
SPIs the kernel holds wins. A tunnel with no reqid match is tried by SPI alone. Each joined tunnel gets an
``ike`` block (:func:`ike_block`). Disagreements are findings (hint ``ike_kernel_mismatch``): an INSTALLED
CHILD_SA whose SPIs the kernel does not hold, or kernel SAs of a reqid charon does not list. Both sides
change during a rekey and are read at different instants, so SAs and CHILD_SAs younger than ``grace``
seconds are never a finding.

Connections of ``list-conns`` whose children have no kernel tunnel become tunnels of their own
(:func:`configured_tunnel`, id ``ike:<conn>:<child>``), ``down``, with the reason why.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from monitor.ike.records import ChildSa, Conn, ConnChild, IkeSa
from monitor.ike.rules import IkeError

__all__ = ["IkeState", "Index", "annotate", "configured_id", "configured_tunnel", "ike_block", "join_all", "unjoined"]

MISMATCH = "ike_kernel_mismatch"
#: Child states in which charon means its SPIs to be installed in the kernel.
INSTALLED = frozenset({"INSTALLED"})


@dataclass(frozen=True, slots=True)
class Index:
    """CHILD_SAs by reqid and by SPI (either direction)."""

    by_reqid: Mapping[int, tuple[tuple[IkeSa, ChildSa], ...]]
    by_spi: Mapping[int, tuple[IkeSa, ChildSa]]

    @classmethod
    def build(cls, sas: Iterable[IkeSa]) -> Index:
        """Index every CHILD_SA of ``sas``."""
        by_reqid: dict[int, list[tuple[IkeSa, ChildSa]]] = {}
        by_spi: dict[int, tuple[IkeSa, ChildSa]] = {}
        for ike in sas:
            for child in ike.children:
                if child.reqid:
                    by_reqid.setdefault(child.reqid, []).append((ike, child))
                for spi in (child.spi_in, child.spi_out):
                    if spi:
                        by_spi[spi] = (ike, child)
        return cls({k: tuple(v) for k, v in by_reqid.items()}, by_spi)


def _ts(v: str) -> str:
    """A traffic selector without its protocol/port suffix: ``10.1.0.0/24[udp/500]`` -> ``10.1.0.0/24``."""
    return v.split("[", 1)[0].strip()


@dataclass(frozen=True, slots=True, kw_only=True)
class IkeState:
    """What charon said last: its SAs and connections, when they were listed (wall clock), and the last
    failure per connection."""

    sas: tuple[IkeSa, ...] = ()
    conns: tuple[Conn, ...] = ()
    listed_at: float = 0.0
    errors: Mapping[str, IkeError] = field(default_factory=dict)
    index: Index = field(default_factory=lambda: Index({}, {}))
    #: configured children by each (local, remote) selector pair they cover, both orientations (match_config)
    by_ts: Mapping[tuple[str, str], frozenset[tuple[int, int]]] = field(default_factory=dict)
    #: configuration hints by ``(conn, child)`` (``monitor.ike.advice.conn_hints``; set by the view)
    hints: Mapping[tuple[str, str], tuple[dict[str, str], ...]] = field(default_factory=dict)

    @classmethod
    def of(cls, sas: Sequence[IkeSa], conns: Sequence[Conn], listed_at: float,
           errors: Mapping[str, IkeError]) -> IkeState:
        """A state with its indexes built."""
        by_ts: dict[tuple[str, str], set[tuple[int, int]]] = {}
        for i, conn in enumerate(conns):
            for j, ch in enumerate(conn.children):
                for a in ch.local_ts:
                    for b in ch.remote_ts:
                        by_ts.setdefault((_ts(a), _ts(b)), set()).add((i, j))
                        by_ts.setdefault((_ts(b), _ts(a)), set()).add((i, j))
        return cls(sas=tuple(sas), conns=tuple(conns), listed_at=listed_at, errors=dict(errors),
                   index=Index.build(sas), by_ts={k: frozenset(v) for k, v in by_ts.items()})


def _spi(v: object) -> int | None:
    if isinstance(v, int):
        return v
    if isinstance(v, str):
        try:
            return int(v, 16)
        except ValueError:
            return None
    return None


def _kernel_spis(tunnel: Mapping[str, Any]) -> set[int]:
    return {s for s in (_spi(sa.get("spi")) for sa in tunnel.get("sas") or () if isinstance(sa, Mapping)) if s}


def match(tunnel: Mapping[str, Any], index: Index) -> tuple[IkeSa, ChildSa] | None:
    """The CHILD_SA of a kernel tunnel: by reqid (preferring the one whose SPIs the kernel holds), else by SPI."""
    spis = _kernel_spis(tunnel)
    cands = index.by_reqid.get(tunnel.get("reqid") or 0, ())
    if cands:
        def score(c: tuple[IkeSa, ChildSa]) -> tuple[int, int, int]:
            ch = c[1]
            return (len({ch.spi_in, ch.spi_out} & spis), ch.state in INSTALLED, ch.uniqueid or 0)
        return max(cands, key=score)
    for spi in sorted(spis):
        if spi in index.by_spi:
            return index.by_spi[spi]
    return None


def _later(listed_at: float, seconds: int | None, now: float) -> float | None:
    """Seconds from ``now`` until ``listed_at + seconds`` (a countdown charon gave at listing time)."""
    return None if seconds is None else round(listed_at + seconds - now, 3)


def ike_block(ike: IkeSa | None, child: ChildSa | None, conn: str, child_name: str, *, state: IkeState,
              now: float) -> dict[str, Any]:
    """The ``ike`` block of a tunnel (docs/api.md). ``now`` is wall-clock time, like ``state.listed_at``."""
    err = state.errors.get(conn)
    at = state.listed_at
    return {
        "conn": conn,
        "child": child_name,
        "ike_state": ike.state if ike else None,
        "ike_uniqueid": ike.uniqueid if ike else None,
        "child_state": child.state if child else None,
        "child_uniqueid": child.uniqueid if child else None,
        "local_id": ike.local_id if ike else None,
        "remote_id": ike.remote_id if ike else None,
        "ike_proposal": ike.proposal if ike else None,
        "esp_proposal": child.proposal if child else None,
        "nat": {"local": ike.nat_local, "remote": ike.nat_remote} if ike else None,
        "established": None if ike is None or ike.established is None else at - ike.established,
        "rekey_in": _later(at, ike.rekey_time, now) if ike else None,
        "reauth_in": _later(at, ike.reauth_time, now) if ike else None,
        "child_rekey_in": _later(at, child.rekey_time, now) if child else None,
        "initiator": ike.initiator if ike else None,
        "last_error": err.to_json() if err else None,
        "hints": [dict(h) for h in state.hints.get((conn, child_name), ())],
    }


def _finding(text: str) -> dict[str, str]:
    return {"code": MISMATCH, "text": text}


def findings(tunnel: Mapping[str, Any], ike: IkeSa | None, child: ChildSa | None, *, state: IkeState, now: float,
             grace: float) -> list[dict[str, str]]:
    """Where the kernel and charon disagree about one tunnel (see the module docstring)."""
    kernel = {s: sa for sa in tunnel.get("sas") or () if (s := _spi(sa.get("spi")))}
    settled = {s for s, sa in kernel.items() if now - float(sa.get("added") or now) >= grace}
    if child is None:
        if settled:
            return [_finding(f"charon lists no CHILD_SA with reqid {tunnel.get('reqid')} or these SPIs: the kernel "
                             "holds SAs the IKE daemon does not know (left over from a crash, or installed by "
                             "another daemon).")]
        return []
    out = []
    siblings = state.index.by_reqid.get(child.reqid or 0, ((ike, child),) if ike else ())
    known = {s for _, ch in siblings for s in (ch.spi_in, ch.spi_out) if s}
    old = child.install_time is not None and child.install_time + (now - state.listed_at) >= grace
    if child.state in INSTALLED and old:
        missing = [s for s in (child.spi_in, child.spi_out) if s and s not in kernel]
        if missing:
            shown = ", ".join(f"0x{s:08x}" for s in missing)
            out.append(_finding(f"CHILD_SA {child.name} ({child.state}) has SPI {shown} that the kernel does not "
                                "hold: half-installed (a rekey collision?)."))
    extra = sorted(s for s in settled if s not in known)
    if extra:
        shown = ", ".join(f"0x{s:08x}" for s in extra)
        out.append(_finding(f"the kernel holds SA {shown} of reqid {tunnel.get('reqid')} that charon does not list."))
    return out


def match_config(tunnel: Mapping[str, Any], state: IkeState) -> tuple[Conn, ConnChild] | None:
    """The one configured child whose traffic selectors cover the tunnel's policy selectors (for a tunnel charon
    lists no CHILD_SA for, e.g. down with its policies left); None when none or several do. One dict lookup per
    selector (``state.by_ts``), so a fleet of down tunnels costs no scan of every connection."""
    pairs = {(str(s.get("src")), str(s.get("dst"))) for s in tunnel.get("selectors") or () if isinstance(s, Mapping)}
    found: frozenset[tuple[int, int]] | None = None
    for p in pairs:
        found = state.by_ts.get(p, frozenset()) if found is None else found & state.by_ts.get(p, frozenset())
        if not found:
            return None
    if found is None or len(found) != 1:
        return None
    (i, j), = found
    return state.conns[i], state.conns[i].children[j]


def annotate(tunnel: Mapping[str, Any], state: IkeState, now: float, grace: float = 10.0) -> dict[str, Any]:
    """A copy of a kernel tunnel's JSON with its ``ike`` block (None when charon knows nothing of it), the
    mismatch hints, and the connection's last failure as a reason when the tunnel is down.

    Joined by CHILD_SA (:func:`match`), else by configured traffic selectors (:func:`match_config`: a tunnel
    whose SAs are gone still has its policies), which gives names and the last failure but no SA details.
    """
    out = dict(tunnel)
    m = match(tunnel, state.index)
    ike, child = m if m else (None, None)
    found = findings(tunnel, ike, child, state=state, now=now, grace=grace) if state.listed_at else []
    if found:
        out["hints"] = [*(tunnel.get("hints") or ()), *found]
    if ike is not None and child is not None:
        conn, name = ike.conn, child.name
    elif (cfg := match_config(tunnel, state)) is not None:
        conn, name = cfg[0].name, cfg[1].name
    else:
        out["ike"] = None
        return out
    out["ike"] = ike_block(ike, child, conn, name, state=state, now=now)
    err = state.errors.get(conn)
    if err is not None and tunnel.get("state") == "down":
        out["reasons"] = [{"code": err.code, "text": err.text}, *(tunnel.get("reasons") or ())]
    return out


# ------------------------------------------------------------------ configured, never up


def configured_id(conn: str, child: str) -> str:
    """``ike:<conn>:<child>`` (URL-path safe: tunnel ids have no ``/``)."""
    return f"ike:{quote(conn, safe='')}:{quote(child, safe='')}"


def unjoined(state: IkeState, joined: set[tuple[str, str]]) -> dict[str, tuple[Conn, ConnChild]]:
    """Configured children with no kernel tunnel (``joined``: the ``(conn, child)`` names kernel tunnels carry),
    by their tunnel id."""
    return {configured_id(c.name, ch.name): (c, ch) for c in state.conns for ch in c.children
            if (c.name, ch.name) not in joined}


def _advice(child: ConnChild, active: bool) -> str:
    """What configuration makes a child come up by itself (VICI does not export ``start_action``)."""
    dpd = child.dpd_action or "?"
    if active:
        return ("charon negotiates this child but nothing is installed in the kernel yet; if it stays so, see the "
                "last error.")
    return (f"charon has no SA for it: start_action = none (or trap with no traffic yet, or start that failed) and "
            f"dpd_action = {dpd}. Nothing starts this tunnel; a responder-only peer (AWS) never initiates: set "
            "start_action = start or trap and dpd_action = restart.")


def configured_tunnel(tid: str, conn: Conn, child: ConnChild, *, state: IkeState, netns: str, since: float,
                      now: float) -> dict[str, Any]:
    """The public JSON of a configured child with no kernel tunnel: ``down``, with the connection's last failure
    as the reason, or ``not_initiated`` and what would start it."""
    live = [(ike, ch) for ike in state.sas if ike.conn == conn.name for ch in ike.children if ch.name == child.name]
    ike_sas = [ike for ike in state.sas if ike.conn == conn.name]
    ike, ch = live[0] if live else (ike_sas[0] if ike_sas else None, None)
    err = state.errors.get(conn.name)
    if err is not None:  # it was initiated, and that failed
        reasons = [{"code": err.code, "text": err.text}]
    else:
        reasons = [{"code": "not_initiated", "text": _advice(child, bool(live))}]
    return {
        "id": tid, "netns": netns, "reqid": (ch.reqid or 0) if ch else 0, "if_id": 0, "mark": 0,
        "local": conn.local_addrs[0] if conn.local_addrs else None,
        "remote": conn.remote_addrs[0] if conn.remote_addrs else None,
        "state": "down", "since": since, "reasons": reasons,
        "bytes_in": 0, "bytes_out": 0, "packets_in": 0, "packets_out": 0,
        "rate_in_bps": 0.0, "rate_out_bps": 0.0, "rate_in_pps": 0.0, "rate_out_pps": 0.0,
        "rekeys": 0, "rekey_failures": 0, "last_rekey": None, "hard_expires_in": None,
        "selectors": [], "sas": [], "hints": [],
        "ike": {**ike_block(ike, ch, conn.name, child.name, state=state, now=now),
                "local_ts": list(child.local_ts), "remote_ts": list(child.remote_ts),
                "dpd_action": child.dpd_action, "close_action": child.close_action, "dpd_delay": conn.dpd_delay},
    }


def join_all(tunnels: Iterable[Mapping[str, Any]], state: IkeState, *, now: float, netns: str | None = "default",
             grace: float = 10.0) -> list[dict[str, Any]]:
    """A one-shot join (``monitor check``): the tunnels of ``netns`` (None: all) annotated, others unchanged,
    then a configured tunnel for every child no kernel tunnel was joined to (``since`` = ``now``)."""
    out: list[dict[str, Any]] = []
    joined: set[tuple[str, str]] = set()
    for t in tunnels:
        if netns is not None and t.get("netns") != netns:
            out.append(dict(t))
            continue
        a = annotate(t, state, now, grace)
        if a.get("ike"):
            joined.add((a["ike"]["conn"], a["ike"]["child"]))
        out.append(a)
    for tid, (conn, child) in unjoined(state, joined).items():
        out.append(configured_tunnel(tid, conn, child, state=state, netns=netns or "default", since=now, now=now))
    return out
