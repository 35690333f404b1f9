"""Golden NETLINK_XFRM messages built by hand, independently of ``monitor.wire.xfrm`` and ``monitor.wire.encode``.

Every builder writes fields into a zeroed ``bytearray`` at the offsets of the kernel's UAPI header
(``include/uapi/linux/xfrm.h``, x86-64; the offsets are also checked against gcc by
``tests/test_kernel_layout.py``), so the encoder and the decoder cannot share a layout mistake with
these tests. Host-order fields use ``=`` (native, little-endian here); ports and SPIs are ``>``
(``__be16`` / ``__be32``). Constants are spelled out below with the header's enum order.
"""

from __future__ import annotations

import socket
import struct

# enum { XFRM_MSG_BASE = 0x10, XFRM_MSG_NEWSA = 0x10, DELSA, GETSA, NEWPOLICY, DELPOLICY, GETPOLICY,
#        ALLOCSPI, ACQUIRE, EXPIRE, UPDPOLICY, UPDSA, POLEXPIRE, FLUSHSA, FLUSHPOLICY, NEWAE, GETAE,
#        REPORT, MIGRATE, NEWSADINFO, GETSADINFO, NEWSPDINFO, GETSPDINFO, MAPPING, ... }
NEWSA, DELSA, NEWPOLICY, DELPOLICY = 0x10, 0x11, 0x13, 0x14
ACQUIRE, EXPIRE, UPDPOLICY, UPDSA = 0x17, 0x18, 0x19, 0x1A
POLEXPIRE, FLUSHSA, FLUSHPOLICY, NEWAE = 0x1B, 0x1C, 0x1D, 0x1E
REPORT, NEWSADINFO, MAPPING = 0x20, 0x22, 0x26
NLMSG_ERROR, NLMSG_DONE = 2, 3  # include/uapi/linux/netlink.h
NLM_F_MULTI = 2

# enum xfrm_attr_type_t
ALG_AUTH, ALG_CRYPT, ALG_COMP, ENCAP, TMPL, SA, POLICY = 1, 2, 3, 4, 5, 6, 7
LTIME_VAL, REPLAY_VAL, REPLAY_THRESH, ETIMER_THRESH, SRCADDR, COADDR, LASTUSED = 9, 10, 11, 12, 13, 14, 15
POLICY_TYPE, ALG_AEAD, ALG_AUTH_TRUNC, MARK, TFCPAD, REPLAY_ESN_VAL, SA_EXTRA_FLAGS = 16, 18, 20, 21, 22, 23, 24
OFFLOAD_DEV, SET_MARK, SET_MARK_MASK, IF_ID, MTIMER_THRESH, SA_DIR = 28, 29, 30, 31, 32, 33
NAT_KEEPALIVE_INTERVAL, SA_PCPU = 34, 35
# enum xfrm_sadattr_type_t
SAD_CNT, SAD_HINFO = 1, 2

INF = 0xFFFFFFFFFFFFFFFF


def ip4(addr: str) -> bytes:
    """``xfrm_address_t`` (16 bytes) holding an IPv4 address in ``a4`` (the first 4 bytes)."""
    return socket.inet_pton(socket.AF_INET, addr) + bytes(12)


def ip6(addr: str) -> bytes:
    """``xfrm_address_t`` holding an IPv6 address."""
    return socket.inet_pton(socket.AF_INET6, addr)


def nlmsg(mtype: int, payload: bytes, flags: int = 0, seq: int = 0, pid: int = 0) -> bytes:
    """``struct nlmsghdr { __u32 nlmsg_len; __u16 nlmsg_type, nlmsg_flags; __u32 nlmsg_seq, nlmsg_pid; }``.

    ``nlmsg_len`` counts the header and payload but not the trailing NLMSG_ALIGN padding.
    """
    length = 16 + len(payload)
    return struct.pack("=IHHII", length, mtype, flags, seq, pid) + payload + bytes(-length % 4)


def nla(atype: int, payload: bytes) -> bytes:
    """``struct nlattr { __u16 nla_len; __u16 nla_type; }`` + payload + NLA_ALIGN padding."""
    length = 4 + len(payload)
    return struct.pack("=HH", length, atype) + payload + bytes(-length % 4)


def selector(daddr: bytes, saddr: bytes, *, dport: int = 0, dmask: int = 0, sport: int = 0, smask: int = 0,
             family: int = 2, plen_d: int = 0, plen_s: int = 0, proto: int = 0, ifindex: int = 0,
             user: int = 0) -> bytes:
    """``struct xfrm_selector`` (56): daddr 0, saddr 16, dport 32, dport_mask 34, sport 36,
    sport_mask 38 (all __be16), family 40, prefixlen_d 42, prefixlen_s 43, proto 44, ifindex 48, user 52."""
    b = bytearray(56)
    b[0:16] = daddr
    b[16:32] = saddr
    struct.pack_into(">HHHH", b, 32, dport, dmask, sport, smask)
    struct.pack_into("=H", b, 40, family)
    b[42], b[43], b[44] = plen_d, plen_s, proto
    struct.pack_into("=iI", b, 48, ifindex, user)
    return bytes(b)


def lifetime_cfg(*v: int) -> bytes:
    """``struct xfrm_lifetime_cfg`` (64): soft/hard byte, soft/hard packet, soft/hard add, soft/hard use."""
    return struct.pack("=8Q", *v)


def usersa_info(*, sel: bytes, daddr: bytes, spi: int, proto: int, saddr: bytes, lft: bytes,
                cur: tuple[int, int, int, int], stats: tuple[int, int, int], seq: int, reqid: int, family: int,
                mode: int, replay_window: int, flags: int) -> bytes:
    """``struct xfrm_usersa_info`` (224): sel 0, id{daddr 56, spi 72 (__be32), proto 76}, saddr 80,
    lft 96, curlft 160 {bytes, packets, add_time, use_time}, stats 192 {replay_window, replay,
    integrity_failed}, seq 204, reqid 208, family 212, mode 214, replay_window 215, flags 216."""
    b = bytearray(224)
    b[0:56] = sel
    b[56:72] = daddr
    struct.pack_into(">I", b, 72, spi)
    b[76] = proto
    b[80:96] = saddr
    b[96:160] = lft
    struct.pack_into("=4Q", b, 160, *cur)
    struct.pack_into("=3I", b, 192, *stats)
    struct.pack_into("=IIH", b, 204, seq, reqid, family)
    b[214], b[215], b[216] = mode, replay_window, flags
    return bytes(b)


def algo(name: str, key: bytes, key_bits: int | None = None) -> bytes:
    """``struct xfrm_algo { char alg_name[64]; unsigned int alg_key_len; char alg_key[]; }`` (68 + key)."""
    n = name.encode().ljust(64, b"\0")
    return n + struct.pack("=I", len(key) * 8 if key_bits is None else key_bits) + key


def algo_icv(name: str, key: bytes, icv_bits: int, key_bits: int | None = None) -> bytes:
    """``struct xfrm_algo_aead`` / ``xfrm_algo_auth``: name[64], key_len 64, icv/trunc_len 68, key 72."""
    n = name.encode().ljust(64, b"\0")
    return n + struct.pack("=II", len(key) * 8 if key_bits is None else key_bits, icv_bits) + key


def encap_tmpl(etype: int, sport: int, dport: int, oa: bytes) -> bytes:
    """``struct xfrm_encap_tmpl`` (24): encap_type 0 (u16), sport 2, dport 4 (__be16), encap_oa 8."""
    b = bytearray(24)
    struct.pack_into("=H", b, 0, etype)
    struct.pack_into(">HH", b, 2, sport, dport)
    b[8:24] = oa
    return bytes(b)


def replay_esn(bmp: list[int], oseq: int, seq: int, oseq_hi: int, seq_hi: int, window: int) -> bytes:
    """``struct xfrm_replay_state_esn { bmp_len, oseq, seq, oseq_hi, seq_hi, replay_window; __u32 bmp[]; }``."""
    return struct.pack("=6I", len(bmp), oseq, seq, oseq_hi, seq_hi, window) + struct.pack(f"={len(bmp)}I", *bmp)


def usersa_id(daddr: bytes, spi: int, family: int, proto: int) -> bytes:
    """``struct xfrm_usersa_id`` (24): daddr 0, spi 16 (__be32), family 20, proto 22."""
    b = bytearray(24)
    b[0:16] = daddr
    struct.pack_into(">I", b, 16, spi)
    struct.pack_into("=H", b, 20, family)
    b[22] = proto
    return bytes(b)


def userpolicy_info(*, sel: bytes, lft: bytes, cur: tuple[int, int, int, int], priority: int, index: int,
                    pdir: int, action: int, flags: int, share: int) -> bytes:
    """``struct xfrm_userpolicy_info`` (168): sel 0, lft 56, curlft 120, priority 152, index 156,
    dir 160, action 161, flags 162, share 163."""
    b = bytearray(168)
    b[0:56] = sel
    b[56:120] = lft
    struct.pack_into("=4Q", b, 120, *cur)
    struct.pack_into("=II", b, 152, priority, index)
    b[160], b[161], b[162], b[163] = pdir, action, flags, share
    return bytes(b)


def user_tmpl(*, daddr: bytes, spi: int, proto: int, family: int, saddr: bytes, reqid: int, mode: int,
              share: int = 0, optional: int = 0, aalgos: int = 0xFFFFFFFF, ealgos: int = 0xFFFFFFFF,
              calgos: int = 0xFFFFFFFF) -> bytes:
    """``struct xfrm_user_tmpl`` (64): id{daddr 0, spi 16, proto 20}, family 24, saddr 28, reqid 44,
    mode 48, share 49, optional 50, aalgos 52, ealgos 56, calgos 60."""
    b = bytearray(64)
    b[0:16] = daddr
    struct.pack_into(">I", b, 16, spi)
    b[20] = proto
    struct.pack_into("=H", b, 24, family)
    b[28:44] = saddr
    struct.pack_into("=I", b, 44, reqid)
    b[48], b[49], b[50] = mode, share, optional
    struct.pack_into("=III", b, 52, aalgos, ealgos, calgos)
    return bytes(b)


def userpolicy_type(ptype: int) -> bytes:
    """``struct xfrm_userpolicy_type { __u8 type; __u16 reserved1; __u8 reserved2; }`` (6): type 0,
    reserved1 2, reserved2 4."""
    return bytes([ptype]) + bytes(5)


# --- the golden cases: (name, wire bytes, the event a correct decoder must return) --------------
# Expected events are written out literally from the same numbers used to build the bytes.

from monitor.wire.events import (  # noqa: E402 - the builders above must not depend on monitor
    SA as _SA,
)
from monitor.wire.events import (  # noqa: E402
    Acquire,
    Algo,
    AsyncEvent,
    Done,
    Encap,
    Event,
    LifetimeCfg,
    LifetimeCur,
    Mark,
    NatMapping,
    NetlinkError,
    NlHeader,
    Offload,
    Policy,
    PolicyAdded,
    PolicyDeleted,
    PolicyExpired,
    PolicyFlushed,
    PolicyId,
    PolicyUpdated,
    Replay,
    ReplayEsn,
    Report,
    SAAdded,
    SADeleted,
    SADInfo,
    SAExpired,
    SAFlushed,
    SAId,
    SAUpdated,
    Selector,
    Stats,
    Template,
    Unknown,
)

# Distinctive printable key bytes: if any were copied into an event, repr() would show them.
GCM_KEY = b"GCMKEY<0123456789>S4"  # rfc4106: 128-bit key + 32-bit salt = 160 bits
HMAC_KEY = b"HMACKEY<abcdefghijklmnopqrstuvw>"  # 256 bits
CBC_KEY = b"CBCKEY<ABCDEFGHIJKLMNOPQRSTUVWX>"  # 256 bits
ALL_KEYS = (GCM_KEY, HMAC_KEY, CBC_KEY)
KEY_MARKERS = (b"GCMKEY", b"HMACKEY", b"CBCKEY")

_LFT = (INF, INF, INF, INF, 3240, 3960, 0, 0)
_LFT_EV = LifetimeCfg(INF, INF, INF, INF, 3240, 3960, 0, 0)
_SEL4 = selector(ip4("10.1.0.0"), ip4("10.2.0.0"), family=2, plen_d=16, plen_s=16)
_SEL4_EV = Selector("10.1.0.0", "10.2.0.0", 0, 0, 0, 0, 2, 16, 16, 0, 0, 0)
_SEL6 = selector(ip6("2001:db8:1::"), ip6("2001:db8:2::"), family=10, plen_d=48, plen_s=48, proto=6,
                 dport=443, dmask=0xFFFF)
_SEL6_EV = Selector("2001:db8:1::", "2001:db8:2::", 443, 0xFFFF, 0, 0, 10, 48, 48, 6, 0, 0)


def _sa_ev(**kw: object) -> _SA:
    base: dict[str, object] = dict(
        sel=_SEL4_EV, daddr="203.0.113.5", spi=0xC0FFEE01, proto=50, saddr="198.51.100.7", lft=_LFT_EV,
        cur=LifetimeCur(123456, 789, 1700000000, 1700000005), stats=Stats(0, 1, 2), seq=0, reqid=7,
        family=2, mode=1, replay_window=0, flags=0,
    )
    base.update(kw)
    return _SA(**base)  # type: ignore[arg-type]


def _sa4_info(**kw: object) -> bytes:
    args: dict[str, object] = dict(
        sel=_SEL4, daddr=ip4("203.0.113.5"), spi=0xC0FFEE01, proto=50, saddr=ip4("198.51.100.7"),
        lft=lifetime_cfg(*_LFT), cur=(123456, 789, 1700000000, 1700000005), stats=(0, 1, 2), seq=0,
        reqid=7, family=2, mode=1, replay_window=0, flags=0,
    )
    args.update(kw)
    return usersa_info(**args)  # type: ignore[arg-type]


def newsa_gcm() -> tuple[bytes, Event]:
    """A dump record of an AES-GCM SA: ESN, NAT-T, IF_ID, SA_DIR, LASTUSED (424 bytes, as measured)."""
    body = _sa4_info(flags=128)
    # copy_to_user_state_extra() order: LASTUSED, AEAD, ENCAP, REPLAY_ESN_VAL, IF_ID, SA_DIR
    body += nla(LASTUSED, struct.pack("=Q", 1700000100))
    body += nla(ALG_AEAD, algo_icv("rfc4106(gcm(aes))", GCM_KEY, 128))
    body += nla(ENCAP, encap_tmpl(2, 4500, 4500, ip4("0.0.0.0")))
    body += nla(REPLAY_ESN_VAL, replay_esn([0xFFFFFFFF], 1000, 0, 0, 0, 32))
    body += nla(IF_ID, struct.pack("=I", 42))
    body += nla(SA_DIR, bytes([2]))
    sa = _sa_ev(
        flags=128, lastused=1700000100, aead=Algo("rfc4106(gcm(aes))", 160, 128),
        encap=Encap(2, 4500, 4500, "0.0.0.0"), replay_esn=ReplayEsn(1000, 0, 0, 0, 32, (0xFFFFFFFF,)),
        if_id=42, sa_dir=2,
    )
    return nlmsg(NEWSA, body, NLM_F_MULTI, 42, 1234), SAAdded(NlHeader(NEWSA, NLM_F_MULTI, 42, 1234), sa)


def newsa_cbc() -> tuple[bytes, Event]:
    """AES-CBC-256 + HMAC-SHA256: LASTUSED, AUTH, AUTH_TRUNC, CRYPT, REPLAY_VAL (584 bytes)."""
    body = _sa4_info(spi=0x0000BEEF, replay_window=32)
    body += nla(LASTUSED, struct.pack("=Q", 1700000200))
    body += nla(ALG_AUTH, algo("hmac(sha256)", HMAC_KEY))
    body += nla(ALG_AUTH_TRUNC, algo_icv("hmac(sha256)", HMAC_KEY, 128))
    body += nla(ALG_CRYPT, algo("cbc(aes)", CBC_KEY))
    body += nla(REPLAY_VAL, struct.pack("=3I", 77, 66, 0xFFFFFFFF))
    sa = _sa_ev(
        spi=0x0000BEEF, replay_window=32, lastused=1700000200, auth=Algo("hmac(sha256)", 256),
        auth_trunc=Algo("hmac(sha256)", 256, 128), enc=Algo("cbc(aes)", 256), replay=Replay(77, 66, 0xFFFFFFFF),
    )
    return nlmsg(NEWSA, body, NLM_F_MULTI, 42, 1234), SAAdded(NlHeader(NEWSA, NLM_F_MULTI, 42, 1234), sa)


def updsa_ipv6_extras() -> tuple[bytes, Event]:
    """UPDSA of an IPv6 SA carrying the rarer attributes, in copy_to_user_state_extra() order."""
    body = usersa_info(
        sel=_SEL6, daddr=ip6("2001:db8::1"), spi=0x00000102, proto=50, saddr=ip6("2001:db8::2"),
        lft=lifetime_cfg(*_LFT), cur=(1, 2, 3, 4), stats=(5, 6, 7), seq=8, reqid=9, family=10, mode=0,
        replay_window=64, flags=1,
    )
    body += nla(SA_EXTRA_FLAGS, struct.pack("=I", 3))
    body += nla(ALG_AUTH, algo("hmac(sha1)", HMAC_KEY[:20]))
    body += nla(ALG_AUTH_TRUNC, algo_icv("hmac(sha1)", HMAC_KEY[:20], 96))
    body += nla(ALG_CRYPT, algo("cbc(aes)", CBC_KEY[:16]))
    body += nla(ALG_COMP, algo("deflate", b""))
    body += nla(TFCPAD, struct.pack("=I", 1400))
    body += nla(MARK, struct.pack("=II", 0x10, 0xFF))
    body += nla(SET_MARK, struct.pack("=I", 5))
    body += nla(SET_MARK_MASK, struct.pack("=I", 0xF0))
    body += nla(REPLAY_VAL, struct.pack("=3I", 0, 0, 0))
    body += nla(OFFLOAD_DEV, struct.pack("=iB3x", 3, 2))
    body += nla(IF_ID, struct.pack("=I", 9))
    body += nla(MTIMER_THRESH, struct.pack("=I", 30))
    body += nla(SA_PCPU, struct.pack("=I", 1))
    body += nla(SA_DIR, bytes([1]))
    body += nla(NAT_KEEPALIVE_INTERVAL, struct.pack("=I", 20))
    sa = _SA(
        sel=_SEL6_EV, daddr="2001:db8::1", spi=0x102, proto=50, saddr="2001:db8::2", lft=_LFT_EV,
        cur=LifetimeCur(1, 2, 3, 4), stats=Stats(5, 6, 7), seq=8, reqid=9, family=10, mode=0, replay_window=64,
        flags=1, enc=Algo("cbc(aes)", 128), auth=Algo("hmac(sha1)", 160), auth_trunc=Algo("hmac(sha1)", 160, 96),
        comp=Algo("deflate", 0), replay=Replay(0, 0, 0), mark=Mark(0x10, 0xFF), if_id=9, sa_dir=1,
        offload=Offload(3, 2), set_mark=5, set_mark_mask=0xF0, extra_flags=3, tfcpad=1400, mtimer_thresh=30,
        nat_keepalive_interval=20, pcpu=1,
    )
    return nlmsg(UPDSA, body, 0, 5, 0), SAUpdated(NlHeader(UPDSA, 0, 5, 0), sa)


def delsa_larval() -> tuple[bytes, Event]:
    """DELSA of a larval SA: usersa_id + XFRMA_SA (full usersa_info) + REPLAY_VAL (284 bytes, as measured)."""
    info = _sa4_info(spi=0x00001000, cur=(0, 0, 1700000000, 0), stats=(0, 0, 0))
    body = usersa_id(ip4("203.0.113.5"), 0x00001000, 2, 50)
    body += nla(SA, info) + nla(REPLAY_VAL, struct.pack("=3I", 0, 0, 0))
    sa = _sa_ev(spi=0x1000, cur=LifetimeCur(0, 0, 1700000000, 0), stats=Stats(0, 0, 0), replay=Replay(0, 0, 0))
    ev = SADeleted(NlHeader(DELSA, 0, 9, 77), SAId("203.0.113.5", 0x1000, 2, 50), sa, None)
    return nlmsg(DELSA, body, 0, 9, 77), ev


def delsa_request_srcaddr() -> tuple[bytes, Event]:
    """A DELSA request as an IKE daemon sends it (seen in captures): usersa_id + SRCADDR, no SA."""
    body = usersa_id(ip6("2001:db8::1"), 0xDEADBEEF, 10, 50) + nla(SRCADDR, ip6("2001:db8::2"))
    ev = SADeleted(NlHeader(DELSA, 5, 3, 0), SAId("2001:db8::1", 0xDEADBEEF, 10, 50), None, "2001:db8::2")
    return nlmsg(DELSA, body, 5, 3, 0), ev


def expire_soft() -> tuple[bytes, Event]:
    """Soft EXPIRE: xfrm_user_expire (state 0, hard 224, pad to 232) + SA_DIR (256 bytes, as measured)."""
    body = _sa4_info() + bytes([0]) + bytes(7) + nla(SA_DIR, bytes([2]))
    return nlmsg(EXPIRE, body), SAExpired(NlHeader(EXPIRE), _sa_ev(sa_dir=2), False)


def expire_hard_acquire_state() -> tuple[bytes, Event]:
    """Hard EXPIRE of an SPI-0 acquire placeholder, IPv6, no attributes (248 bytes)."""
    info = usersa_info(
        sel=_SEL6, daddr=ip6("2001:db8::1"), spi=0, proto=50, saddr=ip6("2001:db8::2"), lft=lifetime_cfg(*_LFT),
        cur=(0, 0, 1700000000, 0), stats=(0, 0, 0), seq=99, reqid=1, family=10, mode=1, replay_window=0, flags=0,
    )
    sa = _SA(
        sel=_SEL6_EV, daddr="2001:db8::1", spi=0, proto=50, saddr="2001:db8::2", lft=_LFT_EV,
        cur=LifetimeCur(0, 0, 1700000000, 0), stats=Stats(0, 0, 0), seq=99, reqid=1, family=10, mode=1,
        replay_window=0, flags=0,
    )
    return nlmsg(EXPIRE, info + bytes([1]) + bytes(7)), SAExpired(NlHeader(EXPIRE), sa, True)


_TMPL4 = user_tmpl(daddr=ip4("203.0.113.5"), spi=0, proto=50, family=2, saddr=ip4("198.51.100.7"), reqid=7,
                   mode=1)
_TMPL4_EV = Template("203.0.113.5", 0, 50, 2, "198.51.100.7", 7, 1, 0, 0, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF)
_POL4 = userpolicy_info(sel=_SEL4, lft=lifetime_cfg(INF, INF, INF, INF, 0, 0, 0, 0), cur=(0, 0, 1700000000, 0),
                        priority=375423, index=0x201, pdir=1, action=0, flags=0, share=0)
_POL4_EV = Policy(_SEL4_EV, LifetimeCfg(INF, INF, INF, INF, 0, 0, 0, 0), LifetimeCur(0, 0, 1700000000, 0),
                  375423, 0x201, 1, 0, 0, 0)


def acquire() -> tuple[bytes, Event]:
    """ACQUIRE: xfrm_user_acquire (id 0, saddr 24, sel 40, policy 96, aalgos 264 .. seq 276) + TMPL +
    POLICY_TYPE (376 bytes, as measured)."""
    b = bytearray(280)
    b[0:16] = ip4("203.0.113.5")
    struct.pack_into(">I", b, 16, 0)
    b[20] = 50
    b[24:40] = ip4("198.51.100.7")
    b[40:96] = selector(ip4("10.2.0.9"), ip4("10.1.0.3"), family=2, plen_d=32, plen_s=32, proto=1)
    b[96:264] = _POL4
    struct.pack_into("=IIII", b, 264, 0xFFFFFFFF, 0xFFFFFFFE, 0xFFFFFFFD, 0x10001)
    body = bytes(b) + nla(TMPL, _TMPL4) + nla(POLICY_TYPE, userpolicy_type(0))
    ev = Acquire(
        NlHeader(ACQUIRE), "203.0.113.5", 0, 50, "198.51.100.7",
        Selector("10.2.0.9", "10.1.0.3", 0, 0, 0, 0, 2, 32, 32, 1, 0, 0), _POL4_EV,
        0xFFFFFFFF, 0xFFFFFFFE, 0xFFFFFFFD, 0x10001, (_TMPL4_EV,), 0,
    )
    return nlmsg(ACQUIRE, body), ev


def newpolicy() -> tuple[bytes, Event]:
    """NEWPOLICY: userpolicy_info + TMPL (two templates) + POLICY_TYPE + MARK + IF_ID (dump_one_policy order)."""
    tmpl6 = user_tmpl(daddr=ip6("2001:db8::1"), spi=0x1234, proto=51, family=10, saddr=ip6("2001:db8::2"),
                      reqid=8, mode=0, share=1, optional=1, aalgos=1, ealgos=2, calgos=3)
    tmpl6_ev = Template("2001:db8::1", 0x1234, 51, 10, "2001:db8::2", 8, 0, 1, 1, 1, 2, 3)
    body = _POL4 + nla(TMPL, _TMPL4 + tmpl6) + nla(POLICY_TYPE, userpolicy_type(1))
    body += nla(MARK, struct.pack("=II", 1, 0xFFFFFFFF)) + nla(IF_ID, struct.pack("=I", 42))
    pol = _POL4_EV._replace(templates=(_TMPL4_EV, tmpl6_ev), policy_type=1, mark=Mark(1, 0xFFFFFFFF), if_id=42)
    return nlmsg(NEWPOLICY, body, NLM_F_MULTI, 1, 2), PolicyAdded(NlHeader(NEWPOLICY, NLM_F_MULTI, 1, 2), pol)


def updpolicy_ipv6() -> tuple[bytes, Event]:
    """UPDPOLICY of an IPv6 policy without attributes."""
    body = userpolicy_info(sel=_SEL6, lft=lifetime_cfg(*_LFT), cur=(10, 20, 30, 40), priority=1, index=0x10A,
                           pdir=2, action=1, flags=1, share=3)
    pol = Policy(_SEL6_EV, _LFT_EV, LifetimeCur(10, 20, 30, 40), 1, 0x10A, 2, 1, 1, 3)
    return nlmsg(UPDPOLICY, body), PolicyUpdated(NlHeader(UPDPOLICY), pol)


def delpolicy() -> tuple[bytes, Event]:
    """DELPOLICY: xfrm_userpolicy_id (sel 0, index 56, dir 60) + XFRMA_POLICY + TMPL."""
    b = bytearray(64)
    b[0:56] = _SEL4
    struct.pack_into("=I", b, 56, 0x201)
    b[60] = 1
    body = bytes(b) + nla(POLICY, _POL4) + nla(TMPL, _TMPL4)
    ev = PolicyDeleted(NlHeader(DELPOLICY), PolicyId(_SEL4_EV, 0x201, 1), _POL4_EV._replace(templates=(_TMPL4_EV,)))
    return nlmsg(DELPOLICY, body), ev


def polexpire() -> tuple[bytes, Event]:
    """POLEXPIRE: xfrm_user_polexpire (pol 0, hard 168, pad to 176) + TMPL."""
    body = _POL4 + bytes([1]) + bytes(7) + nla(TMPL, _TMPL4)
    return nlmsg(POLEXPIRE, body), PolicyExpired(NlHeader(POLEXPIRE), _POL4_EV._replace(templates=(_TMPL4_EV,)), True)


def flushsa() -> tuple[bytes, Event]:
    """FLUSHSA: struct xfrm_usersa_flush { __u8 proto; } (nlmsg_len 17, 20 on the wire)."""
    return nlmsg(FLUSHSA, bytes([50]), 0, 3, 100), SAFlushed(NlHeader(FLUSHSA, 0, 3, 100), 50)


def flushpolicy() -> tuple[bytes, Event]:
    """FLUSHPOLICY: no struct, only XFRMA_POLICY_TYPE."""
    return nlmsg(FLUSHPOLICY, nla(POLICY_TYPE, userpolicy_type(0))), PolicyFlushed(NlHeader(FLUSHPOLICY), 0)


def newae() -> tuple[bytes, Event]:
    """NEWAE: xfrm_aevent_id (sa_id 0, saddr 24, flags 40, reqid 44) + REPLAY_VAL + LTIME_VAL +
    REPLAY_THRESH + ETIMER_THRESH + MARK + IF_ID (build_aevent() order)."""
    b = bytearray(48)
    b[0:24] = usersa_id(ip4("203.0.113.5"), 0xC0FFEE01, 2, 50)
    b[24:40] = ip4("198.51.100.7")
    struct.pack_into("=II", b, 40, 16 | 4 | 8, 7)  # XFRM_AE_CR | XFRM_AE_RTHR | XFRM_AE_ETHR
    body = bytes(b) + nla(REPLAY_VAL, struct.pack("=3I", 500, 400, 0xFF))
    body += nla(LTIME_VAL, struct.pack("=4Q", 640000, 1000, 1700000000, 1700000001))
    body += nla(REPLAY_THRESH, struct.pack("=I", 2)) + nla(ETIMER_THRESH, struct.pack("=I", 10))
    body += nla(MARK, struct.pack("=II", 7, 0xFF)) + nla(IF_ID, struct.pack("=I", 42))
    ev = AsyncEvent(
        NlHeader(NEWAE), SAId("203.0.113.5", 0xC0FFEE01, 2, 50), "198.51.100.7", 28, 7, Replay(500, 400, 0xFF),
        None, LifetimeCur(640000, 1000, 1700000000, 1700000001), 2, 10, Mark(7, 0xFF), 42,
    )
    return nlmsg(NEWAE, body), ev


def newae_esn_ipv6() -> tuple[bytes, Event]:
    """NEWAE of an IPv6 ESN SA: REPLAY_ESN_VAL (two bitmap words) + LTIME_VAL."""
    b = bytearray(48)
    b[0:24] = usersa_id(ip6("2001:db8::1"), 0x0000000A, 10, 50)
    b[24:40] = ip6("2001:db8::2")
    struct.pack_into("=II", b, 40, 32, 3)  # XFRM_AE_CE
    body = bytes(b) + nla(REPLAY_ESN_VAL, replay_esn([1, 2], 10, 11, 12, 13, 64))
    body += nla(LTIME_VAL, struct.pack("=4Q", 1, 2, 3, 4))
    ev = AsyncEvent(
        NlHeader(NEWAE), SAId("2001:db8::1", 10, 10, 50), "2001:db8::2", 32, 3, None,
        ReplayEsn(10, 11, 12, 13, 64, (1, 2)), LifetimeCur(1, 2, 3, 4),
    )
    return nlmsg(NEWAE, body), ev


def mapping() -> tuple[bytes, Event]:
    """MAPPING: xfrm_user_mapping (id 0, reqid 24, old_saddr 28, new_saddr 44, old_sport 60, new_sport 62)."""
    b = bytearray(64)
    b[0:24] = usersa_id(ip4("203.0.113.5"), 0xC0FFEE01, 2, 50)
    struct.pack_into("=I", b, 24, 7)
    b[28:44] = ip4("198.51.100.7")
    b[44:60] = ip4("198.51.100.8")
    struct.pack_into(">HH", b, 60, 4500, 61000)
    ev = NatMapping(NlHeader(MAPPING), SAId("203.0.113.5", 0xC0FFEE01, 2, 50), 7, "198.51.100.7", "198.51.100.8",
                    4500, 61000)
    return nlmsg(MAPPING, bytes(b)), ev


def report() -> tuple[bytes, Event]:
    """REPORT: xfrm_user_report (proto 0, sel 4; 60) + COADDR."""
    body = bytes([43]) + bytes(3) + _SEL6 + nla(COADDR, ip6("2001:db8::99"))
    return nlmsg(REPORT, body), Report(NlHeader(REPORT), 43, _SEL6_EV, "2001:db8::99")


def sadinfo() -> tuple[bytes, Event]:
    """NEWSADINFO: u32 flags + SAD_CNT + SAD_HINFO {sadhcnt, sadhmcnt} (build_sadinfo() order)."""
    body = struct.pack("=I", 0) + nla(SAD_CNT, struct.pack("=I", 50000))
    body += nla(SAD_HINFO, struct.pack("=II", 65536, 1048576))
    return nlmsg(NEWSADINFO, body, 0, 4, 0), SADInfo(NlHeader(NEWSADINFO, 0, 4, 0), 0, 50000, 65536, 1048576)


def error_eexist() -> tuple[bytes, Event]:
    """NLMSG_ERROR: struct nlmsgerr { int error; struct nlmsghdr msg; } with -EEXIST for a NEWSA."""
    body = struct.pack("=i", -17) + struct.pack("=IHHII", 16, NEWSA, 5, 11, 99)
    return nlmsg(NLMSG_ERROR, body, 0, 11, 99), NetlinkError(NlHeader(NLMSG_ERROR, 0, 11, 99), -17,
                                                             NlHeader(NEWSA, 5, 11, 99))


def done() -> tuple[bytes, Event]:
    """NLMSG_DONE closing a dump: payload is one int (0)."""
    return nlmsg(NLMSG_DONE, struct.pack("=i", 0), NLM_F_MULTI, 42, 1234), Done(NlHeader(NLMSG_DONE, NLM_F_MULTI,
                                                                                        42, 1234))


def unknown_spdinfo() -> tuple[bytes, Event]:
    """XFRM_MSG_NEWSPDINFO (36) is not decoded: it must come back as Unknown with its payload."""
    payload = struct.pack("=I", 0) + nla(1, bytes(24))
    return nlmsg(0x24, payload), Unknown(NlHeader(0x24), payload)


GOLDEN = {
    f.__name__: f
    for f in (
        newsa_gcm, newsa_cbc, updsa_ipv6_extras, delsa_larval, delsa_request_srcaddr, expire_soft,
        expire_hard_acquire_state, acquire, newpolicy, updpolicy_ipv6, delpolicy, polexpire, flushsa,
        flushpolicy, newae, newae_esn_ipv6, mapping, report, sadinfo, error_eexist, done, unknown_spdinfo,
    )
}
