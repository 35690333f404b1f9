"""The prober's safety rule: a probe is sent only where a selector of the tunnel covers it (pure).

A probe is only ever emitted when one selector of the tunnel covers *both* its source (local side) and
its target (remote side), with a protocol and port the selector admits. Anything else is refused with a
reason; it is never sent. Without this rule a probe that matches no IPsec policy would leave the host in
the clear, towards an arbitrary address. Selectors are read from the tunnel's public JSON (schema 1).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from monitor.probe.targets import IPAddress, IPNetwork, ProbeKind

IPPROTO_ICMP = 1
IPPROTO_UDP = 17
IPPROTO_ICMPV6 = 58
ICMP_ECHO_REQUEST = 8
ICMPV6_ECHO_REQUEST = 128

@dataclass(frozen=True, slots=True)
class SelectorView:
    """One traffic selector, oriented from this host: ``local`` side and ``remote`` side."""

    local: IPNetwork
    remote: IPNetwork
    proto: int = 0
    rport: int = 0
    rport_mask: int = 0
    lport: int = 0
    lport_mask: int = 0

    def admits(self, source: IPAddress, target: IPAddress, proto: int, dport: int) -> bool:
        """True if a packet source->target (proto, destination port) falls under this selector."""
        if source.version != self.local.version or target.version != self.remote.version:
            return False
        if source not in self.local or target not in self.remote:
            return False
        if self.proto not in (0, proto):
            return False
        if proto == IPPROTO_UDP:
            # the probe leaves from an ephemeral source port: only a selector that leaves it open admits it
            return self.lport_mask == 0 and (dport & self.rport_mask) == (self.rport & self.rport_mask)
        # ICMP: xfrm_flowi_sport()/xfrm_flowi_dport() match the type against the selector's sport and the
        # code against its dport; an echo request is type 8 (ICMPv6: 128), code 0. Demand an open code.
        echo = ICMP_ECHO_REQUEST if target.version == 4 else ICMPV6_ECHO_REQUEST
        return self.rport_mask == 0 and (echo & self.lport_mask) == (self.lport & self.lport_mask)


@dataclass(frozen=True, slots=True)
class TunnelView:
    """What the prober needs from a tunnel's public JSON."""

    id: str
    netns: str
    reqid: int
    state: str
    bytes_in: int
    bytes_out: int
    selectors: tuple[SelectorView, ...]


def _net(v: object) -> IPNetwork:
    return ipaddress.ip_network(str(v), strict=False)


def _selector(raw: Mapping[str, Any]) -> SelectorView | None:
    """Read one entry of the tunnel JSON's ``selectors`` list (tolerant of the known spellings)."""
    direction = str(raw.get("dir", raw.get("direction", "out")))
    if "local" in raw and "remote" in raw:
        local, remote = _net(raw["local"]), _net(raw["remote"])
    elif "src" in raw and "dst" in raw:
        src, dst = _net(raw["src"]), _net(raw["dst"])
        local, remote = (dst, src) if direction == "in" else (src, dst)
    elif "saddr" in raw and "daddr" in raw:
        src = _net(f"{raw['saddr']}/{raw.get('prefixlen_s', 0)}")
        dst = _net(f"{raw['daddr']}/{raw.get('prefixlen_d', 0)}")
        local, remote = (dst, src) if direction == "in" else (src, dst)
    else:
        return None
    remote_key, local_key = ("sport", "dport") if direction == "in" else ("dport", "sport")
    rport, rmask = _port(raw, remote_key)
    lport, lmask = _port(raw, local_key)
    return SelectorView(local, remote, int(raw.get("proto", 0) or 0), rport, rmask, lport, lmask)


def _port(raw: Mapping[str, Any], key: str) -> tuple[int, int]:
    """``(port, mask)`` of one side; a port given without a mask is an exact match (mask 0xffff)."""
    port, mask = int(raw.get(key, 0)), int(raw.get(f"{key}_mask", 0))
    return port, (0xFFFF if mask == 0 and port else mask)


def tunnel_view(tunnel: Mapping[str, Any]) -> TunnelView:
    """Extract a ``TunnelView`` from one tunnel of the public JSON (schema 1).

    Selectors that cannot be read are skipped: fewer selectors only means fewer allowed probes.
    """
    sels: list[SelectorView] = []
    for raw in tunnel.get("selectors") or ():
        if isinstance(raw, Mapping):
            try:
                sel = _selector(raw)
            except (ValueError, TypeError):
                sel = None
            if sel is not None:
                sels.append(sel)
    reqid = tunnel.get("reqid")
    return TunnelView(
        id=str(tunnel["id"]),
        netns=str(tunnel.get("netns", "")),
        reqid=int(reqid) if isinstance(reqid, int) else -1,
        state=str(tunnel.get("state", "")),
        bytes_in=int(tunnel.get("bytes_in") or 0),
        bytes_out=int(tunnel.get("bytes_out") or 0),
        selectors=tuple(sels),
    )


def pick_source(local_addrs: Iterable[IPAddress], view: TunnelView, target: IPAddress) -> IPAddress | None:
    """The first local address that a selector covering ``target`` admits as source, or None."""
    addrs = list(local_addrs)
    for sel in view.selectors:
        if sel.remote.version != target.version or target not in sel.remote:
            continue
        for a in addrs:
            if a.version == sel.local.version and a in sel.local:
                return a
    return None


def check_probe(view: TunnelView, source: IPAddress, target: IPAddress, kind: ProbeKind, port: int) -> str | None:
    """The safety rule. None if some selector of the tunnel admits the probe, else the refusal reason."""
    proto = IPPROTO_UDP if kind == "udp" else (IPPROTO_ICMP if target.version == 4 else IPPROTO_ICMPV6)
    if not view.selectors:
        return f"refused: tunnel {view.id} has no traffic selectors, a probe to {target} would not be protected"
    if any(sel.admits(source, target, proto, port) for sel in view.selectors):
        return None
    if not any(target in sel.remote for sel in view.selectors if sel.remote.version == target.version):
        return f"refused: target {target} is outside the tunnel's remote selectors"
    if not any(source in sel.local for sel in view.selectors if sel.local.version == source.version):
        return f"refused: source {source} is outside the tunnel's local selectors"
    return f"refused: no selector of the tunnel admits {kind} {source} -> {target}"
