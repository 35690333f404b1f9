"""Policy, ACQUIRE and NAT-mapping handlers of the correlator (pure).

Policies tie a tunnel to its selectors (the template's reqid and outer addresses name the tunnel, as
for SAs); an ACQUIRE is traffic that hit a policy with no SA (a trap: the IKE daemon is asked to
negotiate); a MAPPING is a NAT-T peer whose outer address or port changed.
"""

from __future__ import annotations

from typing import Any

from monitor.health.engine import NLM_MULTI, ZERO_ADDRESSES, Engine, intern_str
from monitor.health.model import (
    hint,
)
from monitor.health.nsstate import NetnsState
from monitor.health.sastate import PolicyInfo
from monitor.health.tunnel import Tunnel
from monitor.wire import xfrm as X
from monitor.wire.events import (
    Acquire,
    NatMapping,
    Policy,
    PolicyAdded,
    PolicyDeleted,
    PolicyExpired,
    PolicyFlushed,
    PolicyUpdated,
)

__all__ = ["Policies"]


def _sel_key(info: PolicyInfo) -> tuple[Any, ...]:
    """A policy's direction and selector: what a successor tunnel must install again."""
    return (info.dir, info.src, info.dst, info.proto, info.sport, info.dport)


class Policies(Engine):
    """Applies policy, ACQUIRE and MAPPING events to tunnels."""

    def _ev_acquire(self, ns: NetnsState, ev: Acquire, now: float) -> None:
        tmpl = next((tp for tp in ev.templates if tp.proto in (X.IPPROTO_ESP, X.IPPROTO_AH)),
                    ev.templates[0] if ev.templates else None)
        reqid = tmpl.reqid if tmpl is not None else 0
        local, remote = ev.saddr, ev.daddr
        if tmpl is not None and tmpl.saddr not in ZERO_ADDRESSES and tmpl.daddr not in ZERO_ADDRESSES:
            local, remote = tmpl.saddr, tmpl.daddr
        if local in ZERO_ADDRESSES or remote in ZERO_ADDRESSES:
            local, remote = ev.sel.saddr, ev.sel.daddr
        mark = ev.mark.value if ev.mark else (ev.policy.mark.value if ev.policy.mark else 0)
        t = self._tunnel(ns, reqid, if_id=ev.if_id or 0, mark=mark, a=local, b=remote, now=now)
        self._learn_local(ns, t, local)
        t.acq_count += 1
        if t.acq_deadline is None and not self._established(t):
            t.acq_deadline = now + self.config.acquire_grace
        self._emit(now, "acquire", t, {"count": t.acq_count, "src": ev.sel.saddr, "dst": ev.sel.daddr,
                                       "proto": ev.sel.proto, "seq": ev.seq})
        self._touch(ns, t)

    def _ev_mapping(self, ns: NetnsState, ev: NatMapping, now: float) -> None:
        st = ns.sas.get((ev.id.spi, ev.id.daddr, ev.id.proto))
        if st is None:
            return
        t = st.tunnel
        self._emit(now, "nat_mapping_changed", t, {"spi": f"0x{st.spi:08x}", "old": f"{ev.old_saddr}:{ev.old_sport}",
                                                   "new": f"{ev.new_saddr}:{ev.new_sport}"})
        if t.hints is None:
            t.hints = {}
        t.hints["nat_mapping"] = (hint("nat_mapping"), now + self.config.hint_ttl)
        self._touch(ns, t)

    # ------------------------------------------------------------------ policies

    def _ev_policy(self, ns: NetnsState, ev: PolicyAdded | PolicyUpdated, now: float) -> None:
        self._policy_upsert(ns, ev.policy, now, record=bool(ev.nl.flags & NLM_MULTI))

    def _policy_upsert(self, ns: NetnsState, p: Policy, now: float, record: bool) -> None:
        tmpl = next((tp for tp in p.templates if tp.proto in (X.IPPROTO_ESP, X.IPPROTO_AH)),
                    p.templates[0] if p.templates else None)
        if tmpl is None:
            return  # not an IPsec policy (allow/block/bypass): no tunnel
        a, b = tmpl.saddr, tmpl.daddr  # the SA's source and destination
        if a in ZERO_ADDRESSES or b in ZERO_ADDRESSES:  # transport mode: the SA runs between the selector's hosts
            a, b = p.sel.saddr, p.sel.daddr
        t = self._tunnel(ns, tmpl.reqid, if_id=p.if_id or 0, mark=p.mark.value if p.mark else 0, a=a, b=b, now=now)
        self._learn_local(ns, t, a if p.dir == 1 else b)
        sel = p.sel
        old = ns.policies.get(p.index)
        if old is not None and old.tunnel is not t:
            prev = old.tunnel
            if prev.reqid != t.reqid and (prev.lo, prev.hi) == (t.lo, t.hi):
                # the same selectors between the same gateways under a new reqid (libreswan replaces a first
                # CHILD_SA so): once ``prev`` has neither SA nor policy left, it is superseded (Engine._settle)
                prev.successor = t.id
            self._remove_policy(ns, old, now)
            old = None
        if old is None:
            info = PolicyInfo(p.index, p.dir, src=intern_str(f"{sel.saddr}/{sel.prefixlen_s}") or "",
                              dst=intern_str(f"{sel.daddr}/{sel.prefixlen_d}") or "", proto=sel.proto,
                              sport=sel.sport, dport=sel.dport, tunnel=t)
            ns.policies[p.index] = info
            t.policies.append(info)
            ns.lint_dirty = True
            self._emit(now, "policy_added", t, {"index": p.index, "dir": p.dir, **info.selector_json()})
            self._touch(ns, t)
            if self._orphans:
                self._take_over(ns, t, _sel_key(info), now)
        else:
            info = old
        if ns.pol_dump_begin is not None and info.gen != ns.pgen:
            info.gen = ns.pgen
            ns.pseen += 1

    def _take_over(self, ns: NetnsState, t: Tunnel, key: tuple[Any, ...], now: float) -> None:
        """``t`` installed selector ``key``: a tunnel between the same gateways, under another reqid, that had
        SAs, has nothing left and once had that selector is superseded by ``t`` (libreswan 4.10 replaces a first
        Child SA so: its SAs and policies go, then the new reqid's SAs and policies come with new indexes)."""
        ids = self._orphans.get((ns.name, t.lo, t.hi))
        for oid in list(ids or ()):
            old = self._tunnels.get(oid)
            if old is None or old is t or old.sas or old.policies or old.reqid == t.reqid:
                if ids is not None:
                    ids.discard(oid)
                continue
            if old.gone_sels is not None and key in old.gone_sels:
                old.successor = t.id
                self._supersede(old, now, False)

    def _remove_policy(self, ns: NetnsState, info: PolicyInfo, now: float) -> None:
        ns.policies.pop(info.index, None)
        t = info.tunnel
        if info in t.policies:
            t.policies.remove(info)
            if t.had_sa:
                t.gone_sels = (t.gone_sels or frozenset()) | {_sel_key(info)}
            if not t.policies:
                t.policies_gone = now  # a down tunnel with nothing left is forgotten forget_after from here
        ns.lint_dirty = True
        self._emit(now, "policy_removed", t, {"index": info.index, "dir": info.dir, **info.selector_json()})
        self._touch(ns, t)
        if not t.policies and not t.sas and not t.had_sa:
            # a policy-only tunnel that never had an SA (libreswan's placeholder policy while it negotiates,
            # a connection removed before it came up) has nothing left to watch: it leaves at once
            self._drop_tunnel(ns, t)

    def _ev_policy_deleted(self, ns: NetnsState, ev: PolicyDeleted, now: float) -> None:
        index = ev.policy.index if ev.policy is not None and ev.policy.index else ev.id.index
        info = ns.policies.get(index)
        if info is None:  # deleted by selector: find it by the whole selector (not only its ranges) and direction
            sel = ev.id.sel
            src, dst = f"{sel.saddr}/{sel.prefixlen_s}", f"{sel.daddr}/{sel.prefixlen_d}"
            info = next((i for i in ns.policies.values() if i.dir == ev.id.dir and i.src == src and i.dst == dst
                         and i.proto == sel.proto and i.sport == sel.sport and i.dport == sel.dport), None)
        if info is not None:
            self._remove_policy(ns, info, now)

    def _ev_policy_expired(self, ns: NetnsState, ev: PolicyExpired, now: float) -> None:
        if ev.hard:
            info = ns.policies.get(ev.policy.index)
            if info is not None:
                self._remove_policy(ns, info, now)

    def _ev_policy_flushed(self, ns: NetnsState, ev: PolicyFlushed, now: float) -> None:
        for info in list(ns.policies.values()):
            self._remove_policy(ns, info, now)
