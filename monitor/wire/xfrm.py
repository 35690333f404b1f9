"""Kernel constants and struct layouts for NETLINK_XFRM (data only, no logic).

Everything here mirrors ``include/uapi/linux/xfrm.h`` and ``include/uapi/linux/netlink.h``
for x86-64 (the sizes were checked against gcc; see ``shared/reference/xfrm-netlink.md``).
Multi-byte fields are host order except ports and SPIs, which are big-endian on the wire.
"""

from __future__ import annotations

import struct
from typing import Final

# --- netlink (include/uapi/linux/netlink.h) -------------------------------------------------
NETLINK_XFRM: Final = 6
NLMSG_ERROR: Final = 2
NLMSG_DONE: Final = 3
NLM_F_REQUEST: Final = 0x01
NLM_F_MULTI: Final = 0x02
NLM_F_ACK: Final = 0x04
NLM_F_ROOT: Final = 0x100
NLM_F_MATCH: Final = 0x200
NLM_F_DUMP: Final = NLM_F_ROOT | NLM_F_MATCH
NLM_F_REPLACE: Final = 0x100
NLA_TYPE_MASK: Final = ~(0x8000 | 0x4000) & 0xFFFF  # drop NLA_F_NESTED / NLA_F_NET_BYTEORDER

# struct nlmsghdr { __u32 nlmsg_len; __u16 nlmsg_type; __u16 nlmsg_flags; __u32 nlmsg_seq; __u32 nlmsg_pid; }
NLMSGHDR: Final = struct.Struct("=IHHII")
# struct nlattr { __u16 nla_len; __u16 nla_type; }
NLATTR: Final = struct.Struct("=HH")

# --- message types (enum XFRM_MSG_*, base 0x10) ---------------------------------------------
XFRM_MSG_NEWSA: Final = 16
XFRM_MSG_DELSA: Final = 17
XFRM_MSG_GETSA: Final = 18
XFRM_MSG_NEWPOLICY: Final = 19
XFRM_MSG_DELPOLICY: Final = 20
XFRM_MSG_GETPOLICY: Final = 21
XFRM_MSG_ALLOCSPI: Final = 22
XFRM_MSG_ACQUIRE: Final = 23
XFRM_MSG_EXPIRE: Final = 24
XFRM_MSG_UPDPOLICY: Final = 25
XFRM_MSG_UPDSA: Final = 26
XFRM_MSG_POLEXPIRE: Final = 27
XFRM_MSG_FLUSHSA: Final = 28
XFRM_MSG_FLUSHPOLICY: Final = 29
XFRM_MSG_NEWAE: Final = 30
XFRM_MSG_GETAE: Final = 31
XFRM_MSG_REPORT: Final = 32
XFRM_MSG_MIGRATE: Final = 33
XFRM_MSG_NEWSADINFO: Final = 34
XFRM_MSG_GETSADINFO: Final = 35
XFRM_MSG_MAPPING: Final = 38

# --- multicast groups (enum xfrm_nlgroups) --------------------------------------------------
XFRMNLGRP_ACQUIRE: Final = 1
XFRMNLGRP_EXPIRE: Final = 2
XFRMNLGRP_SA: Final = 3
XFRMNLGRP_POLICY: Final = 4
XFRMNLGRP_AEVENTS: Final = 5
XFRMNLGRP_REPORT: Final = 6
XFRMNLGRP_MIGRATE: Final = 7
XFRMNLGRP_MAPPING: Final = 8

# --- attributes (enum xfrm_attr_type_t) ------------------------------------------------------
XFRMA_ALG_AUTH: Final = 1  # struct xfrm_algo
XFRMA_ALG_CRYPT: Final = 2  # struct xfrm_algo
XFRMA_ALG_COMP: Final = 3  # struct xfrm_algo
XFRMA_ENCAP: Final = 4  # struct xfrm_encap_tmpl
XFRMA_TMPL: Final = 5  # array of struct xfrm_user_tmpl
XFRMA_SA: Final = 6  # struct xfrm_usersa_info (DELSA only)
XFRMA_POLICY: Final = 7  # struct xfrm_userpolicy_info (DELPOLICY only)
XFRMA_SEC_CTX: Final = 8
XFRMA_LTIME_VAL: Final = 9  # struct xfrm_lifetime_cur
XFRMA_REPLAY_VAL: Final = 10  # struct xfrm_replay_state
XFRMA_REPLAY_THRESH: Final = 11  # u32
XFRMA_ETIMER_THRESH: Final = 12  # u32, 100 ms units
XFRMA_SRCADDR: Final = 13
XFRMA_COADDR: Final = 14
XFRMA_LASTUSED: Final = 15  # u64 seconds
XFRMA_POLICY_TYPE: Final = 16  # struct xfrm_userpolicy_type
XFRMA_MIGRATE: Final = 17
XFRMA_ALG_AEAD: Final = 18  # struct xfrm_algo_aead
XFRMA_KMADDRESS: Final = 19
XFRMA_ALG_AUTH_TRUNC: Final = 20  # struct xfrm_algo_auth
XFRMA_MARK: Final = 21  # struct xfrm_mark
XFRMA_TFCPAD: Final = 22  # u32
XFRMA_REPLAY_ESN_VAL: Final = 23  # struct xfrm_replay_state_esn
XFRMA_SA_EXTRA_FLAGS: Final = 24  # u32
XFRMA_PROTO: Final = 25  # u8 (dump filter)
XFRMA_ADDRESS_FILTER: Final = 26
XFRMA_PAD: Final = 27
XFRMA_OFFLOAD_DEV: Final = 28  # struct xfrm_user_offload
XFRMA_SET_MARK: Final = 29  # u32
XFRMA_SET_MARK_MASK: Final = 30  # u32
XFRMA_IF_ID: Final = 31  # u32
XFRMA_MTIMER_THRESH: Final = 32  # u32
XFRMA_SA_DIR: Final = 33  # u8: XFRM_SA_DIR_IN=1, XFRM_SA_DIR_OUT=2
XFRMA_NAT_KEEPALIVE_INTERVAL: Final = 34  # u32
XFRMA_SA_PCPU: Final = 35  # u32

# attributes whose payload starts with `char alg_name[64]; unsigned int alg_key_len;` and ends in key bytes
ALGO_ATTRS: Final = frozenset({XFRMA_ALG_AUTH, XFRMA_ALG_CRYPT, XFRMA_ALG_COMP, XFRMA_ALG_AEAD, XFRMA_ALG_AUTH_TRUNC})
# where the key starts inside each algorithm attribute's payload
ALGO_KEY_OFFSET: Final = {
    XFRMA_ALG_AUTH: 68,  # struct xfrm_algo { char alg_name[64]; unsigned int alg_key_len; char alg_key[]; }
    XFRMA_ALG_CRYPT: 68,
    XFRMA_ALG_COMP: 68,
    XFRMA_ALG_AEAD: 72,  # struct xfrm_algo_aead { ...; unsigned int alg_icv_len; char alg_key[]; }
    XFRMA_ALG_AUTH_TRUNC: 72,  # struct xfrm_algo_auth { ...; unsigned int alg_trunc_len; char alg_key[]; }
}

# XFRMNLGRP_SADATTR: enum xfrm_sadattr_type_t
XFRMA_SAD_CNT: Final = 1
XFRMA_SAD_HINFO: Final = 2

XFRM_SA_DIR_IN: Final = 1
XFRM_SA_DIR_OUT: Final = 2
XFRM_INF: Final = 0xFFFFFFFFFFFFFFFF

AF_INET: Final = 2
AF_INET6: Final = 10

IPPROTO_ESP: Final = 50
IPPROTO_AH: Final = 51
IPPROTO_COMP: Final = 108

# --- struct layouts (x86-64) -----------------------------------------------------------------
# struct xfrm_selector { xfrm_address_t daddr, saddr; __be16 dport, dport_mask, sport, sport_mask;
#   __u16 family; __u8 prefixlen_d, prefixlen_s, proto; int ifindex; __kernel_uid32_t user; }  (56)
# Ports are big-endian: the `4s4s` carve-out is unpacked with SEL_PORTS.
SELECTOR: Final = struct.Struct("=16s16s8xHBBB3xiI")
SEL_PORTS: Final = struct.Struct(">HHHH")  # at selector offset 32
# struct xfrm_lifetime_cfg: 8 x __u64 (64); struct xfrm_lifetime_cur: 4 x __u64 (32)
LIFETIME_CFG: Final = struct.Struct("=8Q")
LIFETIME_CUR: Final = struct.Struct("=4Q")
# struct xfrm_usersa_info (224): sel 0, id{daddr 56, spi 72, proto 76}, saddr 80, lft 96, curlft 160,
#   stats{replay_window, replay, integrity_failed} 192, seq 204, reqid 208, family 212, mode 214,
#   replay_window 215, flags 216, pad 217..223.  Selector and SPI are decoded separately.
USERSA_INFO: Final = struct.Struct("=56x16s4xB3x16s8Q4Q3IIIHBBB7x")
USERSA_INFO_SIZE: Final = 224
BE32: Final = struct.Struct(">I")
# struct xfrm_usersa_id { xfrm_address_t daddr; __be32 spi; __u16 family; __u8 proto; } (24)
USERSA_ID: Final = struct.Struct("=16s4sHB1x")
# struct xfrm_user_expire { struct xfrm_usersa_info state; __u8 hard; } (232)
USER_EXPIRE_SIZE: Final = 232
# struct xfrm_userpolicy_info { sel; lft; curlft; __u32 priority, index; __u8 dir, action, flags, share; } (168)
USERPOLICY_INFO: Final = struct.Struct("=56x8Q4QIIBBBB4x")
USERPOLICY_INFO_SIZE: Final = 168
# struct xfrm_userpolicy_id { struct xfrm_selector sel; __u32 index; __u8 dir; } (64)
USERPOLICY_ID: Final = struct.Struct("=56xIB3x")
# struct xfrm_user_polexpire { struct xfrm_userpolicy_info pol; __u8 hard; } (176)
USER_POLEXPIRE_SIZE: Final = 176
# struct xfrm_user_tmpl { struct xfrm_id id; __u16 family; xfrm_address_t saddr; __u32 reqid;
#   __u8 mode, share, optional; __u32 aalgos, ealgos, calgos; } (64)
USER_TMPL: Final = struct.Struct("=16s4sB3xH2x16sIBBB1xIII")
# struct xfrm_user_acquire { id; saddr; sel; policy; __u32 aalgos, ealgos, calgos, seq; } (280)
USER_ACQUIRE: Final = struct.Struct("=16s4sB3x16s")  # id + saddr; sel at 40, policy at 96
USER_ACQUIRE_TAIL: Final = struct.Struct("=IIII")  # at 264
USER_ACQUIRE_SIZE: Final = 280
# struct xfrm_aevent_id { struct xfrm_usersa_id sa_id; xfrm_address_t saddr; __u32 flags; __u32 reqid; } (48)
AEVENT_ID: Final = struct.Struct("=16s4sHB1x16sII")
# struct xfrm_user_mapping { struct xfrm_usersa_id id; __u32 reqid; xfrm_address_t old_saddr, new_saddr;
#   __be16 old_sport, new_sport; } (64)
USER_MAPPING: Final = struct.Struct("=16s4sHB1xI16s16s")
MAPPING_PORTS: Final = struct.Struct(">HH")  # at 60
# struct xfrm_user_report { __u8 proto; struct xfrm_selector sel; } (60)
USER_REPORT_SIZE: Final = 60
# struct xfrm_usersa_flush { __u8 proto; }
# struct xfrm_userpolicy_type { __u8 type; __u16 reserved1; __u8 reserved2; } (6)
USERPOLICY_TYPE: Final = struct.Struct("=B1xHB1x")
# struct xfrm_algo / xfrm_algo_auth / xfrm_algo_aead headers
ALGO_HDR: Final = struct.Struct("=64sI")
ALGO_HDR2: Final = struct.Struct("=64sII")
# struct xfrm_encap_tmpl { __u16 encap_type; __be16 encap_sport, encap_dport; xfrm_address_t encap_oa; } (24)
ENCAP_TMPL: Final = struct.Struct("=H2s2s2x16s")
BE16: Final = struct.Struct(">H")
# struct xfrm_mark { __u32 v, m; }
MARK: Final = struct.Struct("=II")
# struct xfrm_replay_state { __u32 oseq, seq, bitmap; }
REPLAY: Final = struct.Struct("=III")
# struct xfrm_replay_state_esn { unsigned int bmp_len; __u32 oseq, seq, oseq_hi, seq_hi, replay_window; __u32 bmp[]; }
REPLAY_ESN: Final = struct.Struct("=IIIIII")
# struct xfrm_user_offload { int ifindex; __u8 flags; } (8)
USER_OFFLOAD: Final = struct.Struct("=iB3x")
# struct xfrmu_sadhinfo { __u32 sadhcnt, sadhmcnt; }
SADHINFO: Final = struct.Struct("=II")
U8: Final = struct.Struct("=B")
U32: Final = struct.Struct("=I")
U64: Final = struct.Struct("=Q")
I32: Final = struct.Struct("=i")

MSG_NAMES: Final = {
    NLMSG_ERROR: "ERROR",
    NLMSG_DONE: "DONE",
    XFRM_MSG_NEWSA: "NEWSA",
    XFRM_MSG_DELSA: "DELSA",
    XFRM_MSG_GETSA: "GETSA",
    XFRM_MSG_NEWPOLICY: "NEWPOLICY",
    XFRM_MSG_DELPOLICY: "DELPOLICY",
    XFRM_MSG_GETPOLICY: "GETPOLICY",
    XFRM_MSG_ALLOCSPI: "ALLOCSPI",
    XFRM_MSG_ACQUIRE: "ACQUIRE",
    XFRM_MSG_EXPIRE: "EXPIRE",
    XFRM_MSG_UPDPOLICY: "UPDPOLICY",
    XFRM_MSG_UPDSA: "UPDSA",
    XFRM_MSG_POLEXPIRE: "POLEXPIRE",
    XFRM_MSG_FLUSHSA: "FLUSHSA",
    XFRM_MSG_FLUSHPOLICY: "FLUSHPOLICY",
    XFRM_MSG_NEWAE: "NEWAE",
    XFRM_MSG_GETAE: "GETAE",
    XFRM_MSG_REPORT: "REPORT",
    XFRM_MSG_MIGRATE: "MIGRATE",
    XFRM_MSG_NEWSADINFO: "NEWSADINFO",
    XFRM_MSG_GETSADINFO: "GETSADINFO",
    XFRM_MSG_MAPPING: "MAPPING",
}


def align4(n: int) -> int:
    """NLMSG_ALIGN / NLA_ALIGN: round up to a multiple of 4."""
    return (n + 3) & ~3
