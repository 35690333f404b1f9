"""Builders of XFRM events for the correlator and pipeline tests (a strongSwan-like gateway).

The local gateway is ``192.0.2.1``; peers are in ``198.51.100.0/24``. SAs carry real algorithm
names (so they are not larval) and ``SA_DIR`` unless told otherwise.
"""

from __future__ import annotations

from monitor.sources.items import Datagram
from monitor.wire import xfrm as X
from monitor.wire.encode import encode_datagram, encode_dump_request
from monitor.wire.events import (
    SA,
    Acquire,
    Algo,
    Done,
    Event,
    LifetimeCfg,
    LifetimeCur,
    Mark,
    NlHeader,
    Policy,
    PolicyAdded,
    PolicyDeleted,
    PolicyId,
    SAAdded,
    SADeleted,
    SAExpired,
    SAId,
    SAUpdated,
    Selector,
    Stats,
    Template,
)

LOCAL = "192.0.2.1"
PEER = "198.51.100.7"
LOCAL_NET = ("10.1.0.0", 16)
REMOTE_NET = ("10.192.0.0", 12)
ENC = Algo("cbc(aes)", 128)
AUTH = Algo("hmac(sha256)", 256, 128)
INF = X.XFRM_INF


def make_sa(spi: int, *, inbound: bool, reqid: int = 1, peer: str = PEER, local: str = LOCAL,
            nbytes: int = 0, packets: int = 0, add_time: float = 0.0, soft: int = 0, hard: int = 0,
            sa_dir: bool = True, replay: int = 0, integrity: int = 0, lastused: int | None = None,
            mark: int | None = None, if_id: int | None = None, larval: bool = False) -> SA:
    """One ESP tunnel-mode SA between ``local`` and ``peer`` (``inbound``: peer -> local)."""
    src, dst = (peer, local) if inbound else (local, peer)
    sel = Selector(daddr="0.0.0.0", saddr="0.0.0.0", family=X.AF_INET)
    return SA(
        sel=sel, daddr=dst, spi=spi, proto=X.IPPROTO_ESP, saddr=src,
        lft=LifetimeCfg(INF, INF, INF, INF, soft, hard, 0, 0),
        cur=LifetimeCur(nbytes, packets, int(add_time), 0),
        stats=Stats(0, replay, integrity), seq=0, reqid=0 if larval else reqid, family=X.AF_INET, mode=1,
        replay_window=32, flags=0,
        enc=None if larval else ENC, auth_trunc=None if larval else AUTH,
        lastused=lastused, mark=Mark(mark, 0xFFFFFFFF) if mark is not None else None, if_id=if_id,
        sa_dir=(X.XFRM_SA_DIR_IN if inbound else X.XFRM_SA_DIR_OUT) if sa_dir else None,
    )


def newsa(sa: SA, *, dump_seq: int | None = None) -> SAAdded:
    """A NEWSA notification, or a dump record when ``dump_seq`` is given."""
    if dump_seq is not None:
        return SAAdded(NlHeader(X.XFRM_MSG_NEWSA, X.NLM_F_MULTI, dump_seq, 1), sa)
    return SAAdded(NlHeader(X.XFRM_MSG_NEWSA), sa)


def updsa(sa: SA) -> SAUpdated:
    """An UPDSA notification (how strongSwan installs inbound SAs)."""
    return SAUpdated(NlHeader(X.XFRM_MSG_UPDSA), sa)


def delsa(sa: SA) -> SADeleted:
    """A DELSA notification with the full SA (final counters) in ``XFRMA_SA``."""
    return SADeleted(NlHeader(X.XFRM_MSG_DELSA), SAId(sa.daddr, sa.spi, sa.family, sa.proto), sa)


def expire(sa: SA, *, hard: bool) -> SAExpired:
    """A soft or hard EXPIRE carrying ``sa`` (with its counters)."""
    return SAExpired(NlHeader(X.XFRM_MSG_EXPIRE), sa, hard)


def with_counters(sa: SA, nbytes: int, packets: int, *, replay: int | None = None,
                  integrity: int | None = None) -> SA:
    """``sa`` with new counters."""
    stats = sa.stats._replace(replay=sa.stats.replay if replay is None else replay,
                              integrity_failed=sa.stats.integrity_failed if integrity is None else integrity)
    return sa._replace(cur=sa.cur._replace(bytes=nbytes, packets=packets), stats=stats)


def make_policy(pdir: int, *, reqid: int = 1, index: int = 0, peer: str = PEER, local: str = LOCAL,
                local_net: tuple[str, int] = LOCAL_NET, remote_net: tuple[str, int] = REMOTE_NET,
                mark: int | None = None, if_id: int | None = None) -> Policy:
    """A tunnel-mode policy: dir 1 (out) local_net -> remote_net, dir 0/2 (in/fwd) the reverse."""
    if pdir == 1:
        sel = Selector(daddr=remote_net[0], saddr=local_net[0], family=X.AF_INET,
                       prefixlen_d=remote_net[1], prefixlen_s=local_net[1])
        t_src, t_dst = local, peer
    else:
        sel = Selector(daddr=local_net[0], saddr=remote_net[0], family=X.AF_INET,
                       prefixlen_d=local_net[1], prefixlen_s=remote_net[1])
        t_src, t_dst = peer, local
    tmpl = Template(daddr=t_dst, spi=0, proto=X.IPPROTO_ESP, family=X.AF_INET, saddr=t_src, reqid=reqid, mode=1)
    return Policy(sel=sel, lft=LifetimeCfg(), cur=LifetimeCur(), priority=1000, index=index or (reqid * 8 + pdir),
                  dir=pdir, action=0, flags=0, share=0, templates=(tmpl,),
                  mark=Mark(mark, 0xFFFFFFFF) if mark is not None else None, if_id=if_id)


def newpolicy(p: Policy, *, dump_seq: int | None = None) -> PolicyAdded:
    """A NEWPOLICY notification or dump record."""
    if dump_seq is not None:
        return PolicyAdded(NlHeader(X.XFRM_MSG_NEWPOLICY, X.NLM_F_MULTI, dump_seq, 1), p)
    return PolicyAdded(NlHeader(X.XFRM_MSG_NEWPOLICY), p)


def delpolicy(p: Policy) -> PolicyDeleted:
    """A DELPOLICY notification with the full policy."""
    return PolicyDeleted(NlHeader(X.XFRM_MSG_DELPOLICY), PolicyId(p.sel, p.index, p.dir), p)


def acquire(*, reqid: int = 1, peer: str = PEER, local: str = LOCAL, seq: int = 1) -> Acquire:
    """An ACQUIRE for the out policy of ``reqid``."""
    p = make_policy(1, reqid=reqid, peer=peer, local=local)
    return Acquire(NlHeader(X.XFRM_MSG_ACQUIRE), daddr=peer, spi=0, proto=X.IPPROTO_ESP, saddr=local,
                   sel=Selector(daddr="10.192.0.5", saddr="10.1.0.5", family=X.AF_INET, prefixlen_d=32,
                                prefixlen_s=32),
                   policy=p._replace(templates=()), aalgos=0, ealgos=0, calgos=0, seq=seq, templates=p.templates)


def dump_datagrams(netns: str, seq: int, records: list[Event], ts: float,
                   msg_type: int = X.XFRM_MSG_GETSA) -> list[Datagram]:
    """Our dump request, then the records (encoded, as the kernel sends them), then NLMSG_DONE."""
    out = [Datagram(netns, encode_dump_request(msg_type, seq), ts, outgoing=True)]
    if records:
        out.append(Datagram(netns, encode_datagram(records), ts))
    out.append(Datagram(netns, encode_datagram([Done(NlHeader(X.NLMSG_DONE, X.NLM_F_MULTI, seq, 1))]), ts))
    return out
