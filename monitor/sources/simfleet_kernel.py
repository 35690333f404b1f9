"""The simulated fleet as the kernel shows it: SA and policy records, counters and dumps (pure).

``monitor.sources.simfleet`` scripts what happens to each tunnel and when; this module turns the
fleet's state into the structs the kernel would report (``struct xfrm_usersa_info``, ``struct
xfrm_userpolicy_info`` and their attributes, as ``monitor.wire.events`` records) and a dump into the
datagrams a NETLINK_XFRM socket would receive, encoded with ``monitor.wire.encode``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from monitor.sources.items import Datagram
from monitor.wire import xfrm as X
from monitor.wire.encode import encode, encode_dump_request
from monitor.wire.events import (
    SA,
    Algo,
    Done,
    Encap,
    LifetimeCfg,
    LifetimeCur,
    NlHeader,
    Policy,
    Replay,
    ReplayEsn,
    Selector,
    Stats,
    Template,
)

# include/uapi/linux/xfrm.h: enum { XFRM_POLICY_IN = 0, XFRM_POLICY_OUT = 1, XFRM_POLICY_FWD = 2 };
POLICY_IN, POLICY_OUT, POLICY_FWD = 0, 1, 2
MODE_TUNNEL = 1  # XFRM_MODE_TUNNEL
XFRM_STATE_ESN = 128
UDP_ENCAP_ESPINUDP = 2
CHARON_PID = 4242  # the IKE daemon's netlink port id: notifications caused by its requests carry it
MONITOR_PID = 7777  # our own socket's port id: dump replies are addressed to it
MAX_DATAGRAM = 32768  # netlink_dump() fills skbs of about 32 KiB
LOCAL = "192.0.2.1"
ANY = "0.0.0.0"  # noqa: S104 - an address field in a struct, nothing binds to it

_GCM = Algo("rfc4106(gcm(aes))", 160, 128)
_CBC = Algo("cbc(aes)", 256)
_SHA256 = Algo("hmac(sha256)", 256)
_SHA256_TRUNC = Algo("hmac(sha256)", 256, 128)



@dataclass
class SimSA:
    """One simulated SA: its lifetimes, traffic rate and counters integrated so far."""

    spi: int
    inbound: bool
    add_time: float
    soft: float  # seconds after add_time
    hard: float
    rate: float  # bytes per second while current
    pkt_size: int
    larval: bool = False
    bytes: float = 0.0
    packets: float = 0.0
    last: float = 0.0  # counters integrated up to here
    use_time: float = 0.0
    lastused: float = 0.0
    replay_errs: int = 0
    integrity_errs: int = 0
    alive: bool = True
    current: bool = True  # carries the tunnel's traffic


@dataclass
class SimTunnel:
    """One simulated CHILD_SA pair and its policies, with its scripted role."""

    index: int
    role: str
    reqid: int
    remote: str
    local_net: str
    remote_net: str
    aead: bool
    encap_sport: int | None  # peer's NAT-T source port, None without UDP encap
    if_id: int | None
    rate_in: float
    rate_out: float
    sas: list[SimSA] = field(default_factory=list)
    rekeying: bool = False
    up: bool = True
    rekeys: int = 0
    larval: SimSA | None = None
    policy_added: float = 0.0


def touch(sa: SimSA, t: float) -> None:
    """Integrate traffic counters up to ``t``."""
    if t <= sa.last:
        return
    if sa.current and sa.rate > 0:
        sa.bytes += sa.rate * (t - sa.last)
        sa.packets += sa.rate * (t - sa.last) / sa.pkt_size
        sa.lastused = t
        if not sa.use_time:
            sa.use_time = sa.last
    sa.last = t



def sa_record(tun: SimTunnel, sa: SimSA, t: float, acqseq: int) -> SA:
    """The kernel's view of one SA (``struct xfrm_usersa_info`` plus attributes); ``acqseq`` for a larval SA."""
    touch(sa, t)
    src, dst = (tun.remote, LOCAL) if sa.inbound else (LOCAL, tun.remote)
    packets = int(sa.packets)
    cur = LifetimeCur(int(sa.bytes), packets, int(sa.add_time), int(sa.use_time))
    stats = Stats(0, sa.replay_errs, sa.integrity_errs)
    sel = Selector(ANY, ANY, family=X.AF_INET)  # tunnel-mode SAs carry no selector
    if sa.larval:
        return SA(sel, dst, 0, X.IPPROTO_ESP, src, LifetimeCfg(), cur, stats, acqseq, tun.reqid,
                  X.AF_INET, MODE_TUNNEL, 0, 0, replay=Replay(0, 0, 0))
    lft = LifetimeCfg(soft_add_expires_seconds=int(sa.soft), hard_add_expires_seconds=int(sa.hard))
    aead = enc = auth = auth_trunc = None
    replay: Replay | None = None
    esn: ReplayEsn | None = None
    if tun.aead:
        aead = _GCM
        esn = (ReplayEsn(0, packets, 0, 0, 32, (0xFFFFFFFF,)) if sa.inbound
               else ReplayEsn(packets, 0, 0, 0, 32, (0,)))
    else:
        enc, auth, auth_trunc = _CBC, _SHA256, _SHA256_TRUNC
        replay = (Replay(0, packets & 0xFFFFFFFF, 0xFFFFFFFF) if sa.inbound
                  else Replay(packets & 0xFFFFFFFF, 0, 0))
    encap = None
    if tun.encap_sport is not None:
        sport, dport = (tun.encap_sport, 4500) if sa.inbound else (4500, tun.encap_sport)
        encap = Encap(UDP_ENCAP_ESPINUDP, sport, dport, ANY)
    return SA(sel, dst, sa.spi, X.IPPROTO_ESP, src, lft, cur, stats, 0, tun.reqid, X.AF_INET, MODE_TUNNEL,
              0 if tun.aead else 32, XFRM_STATE_ESN if tun.aead else 0, enc=enc, auth=auth,
              auth_trunc=auth_trunc, aead=aead, encap=encap, replay=replay, replay_esn=esn,
              lastused=int(sa.lastused) if sa.lastused else None, if_id=tun.if_id,
              sa_dir=X.XFRM_SA_DIR_IN if sa.inbound else X.XFRM_SA_DIR_OUT)



def policy_record(tun: SimTunnel, direction: int) -> Policy:
    """strongSwan's policies for one CHILD_SA: out carries the current outbound SPI."""
    out = direction == POLICY_OUT
    local_sel, remote_sel = f"{tun.local_net}", tun.remote_net
    if out:
        sel = Selector(remote_sel, local_sel, family=X.AF_INET, prefixlen_d=24, prefixlen_s=32)
        spis = [sa.spi for sa in tun.sas if sa.alive and sa.current and not sa.inbound]
        tmpl = Template(tun.remote, spis[0] if spis else 0, X.IPPROTO_ESP, X.AF_INET, LOCAL, tun.reqid,
                        MODE_TUNNEL)
    else:
        sel = Selector(local_sel, remote_sel, family=X.AF_INET, prefixlen_d=32, prefixlen_s=24)
        tmpl = Template(LOCAL, 0, X.IPPROTO_ESP, X.AF_INET, tun.remote, tun.reqid, MODE_TUNNEL)
    return Policy(sel, LifetimeCfg(), LifetimeCur(0, 0, int(tun.policy_added), 0), 375423,
                  (tun.index + 1) * 8 + direction, direction, 0, 0, 0, (tmpl,), 0, None, tun.if_id)


def dump_datagrams(netns: str, request_type: int, seq: int, records: list[bytes], t: float) -> list[Datagram]:
    """Our dump request, then the records and NLMSG_DONE in datagrams of at most ``MAX_DATAGRAM`` bytes."""
    out = [Datagram(netns, encode_dump_request(request_type, seq), t, outgoing=True)]
    done = encode(Done(NlHeader(X.NLMSG_DONE, X.NLM_F_MULTI, seq, MONITOR_PID)))
    chunk: list[bytes] = []
    size = 0
    for rec in [*records, done]:
        if chunk and size + len(rec) > MAX_DATAGRAM:
            out.append(Datagram(netns, b"".join(chunk), t))
            chunk, size = [], 0
        chunk.append(rec)
        size += len(rec)
    out.append(Datagram(netns, b"".join(chunk), t))
    return out
