"""The baseline: pyroute2's generic netlink machinery taught NETLINK_XFRM the idiomatic way.

pyroute2 has no XFRM message classes (``shared/reference/xfrm-netlink.md`` section 3), so this module
describes ``struct xfrm_usersa_info``, ``xfrm_user_expire``, ``xfrm_usersa_id`` and
``xfrm_aevent_id`` as ``nlmsg`` subclasses with ``fields`` and an ``nla_map``, and the attributes as
``nla`` subclasses, exactly as pyroute2's own rtnl/ifinfmsg classes are written. A ``Marshal``
subclass maps message types to classes. NLAs are decoded lazily by pyroute2; ``touch_attrs`` forces
the attributes our decoder reads, for a fair comparison.

Field layouts quote ``include/uapi/linux/xfrm.h`` (x86-64 offsets in comments).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pyroute2.netlink import nla, nlmsg
from pyroute2.netlink.marshal import Marshal

__all__ = ["ATTRS_USED", "MarshalXfrm", "parse", "touch_attrs"]

# struct xfrm_selector (56): daddr 0, saddr 16, dport 32, dport_mask 34, sport 36, sport_mask 38,
# family 40, prefixlen_d 42, prefixlen_s 43, proto 44, ifindex 48, user 52
_SELECTOR = (
    ("sel_daddr", "16s"),
    ("sel_saddr", "16s"),
    ("sel_dport", ">H"),
    ("sel_dport_mask", ">H"),
    ("sel_sport", ">H"),
    ("sel_sport_mask", ">H"),
    ("sel_family", "H"),
    ("sel_prefixlen_d", "B"),
    ("sel_prefixlen_s", "B"),
    ("sel_proto", "B"),
    ("__sel_pad", "3x"),
    ("sel_ifindex", "i"),
    ("sel_user", "I"),
)
# struct xfrm_usersa_info (224): sel 0, id 56 {daddr, spi 72, proto 76}, saddr 80, lft 96, curlft 160,
# stats 192, seq 204, reqid 208, family 212, mode 214, replay_window 215, flags 216, pad 217..223
_USERSA_INFO = (
    *_SELECTOR,
    ("id_daddr", "16s"),
    ("id_spi", ">I"),
    ("id_proto", "B"),
    ("__id_pad", "3x"),
    ("saddr", "16s"),
    ("lft_soft_byte_limit", "Q"),
    ("lft_hard_byte_limit", "Q"),
    ("lft_soft_packet_limit", "Q"),
    ("lft_hard_packet_limit", "Q"),
    ("lft_soft_add_expires_seconds", "Q"),
    ("lft_hard_add_expires_seconds", "Q"),
    ("lft_soft_use_expires_seconds", "Q"),
    ("lft_hard_use_expires_seconds", "Q"),
    ("curlft_bytes", "Q"),
    ("curlft_packets", "Q"),
    ("curlft_add_time", "Q"),
    ("curlft_use_time", "Q"),
    ("stats_replay_window", "I"),
    ("stats_replay", "I"),
    ("stats_integrity_failed", "I"),
    ("seq", "I"),
    ("reqid", "I"),
    ("family", "H"),
    ("mode", "B"),
    ("replay_window", "B"),
    ("flags", "B"),
    ("__pad", "7x"),
)


class xfrm_sa_attrs:
    """The attributes ``copy_to_user_state_extra()`` appends (shared by all SA-carrying messages)."""

    nla_map: tuple[tuple[int, str, str], ...] = (
        (0, "XFRMA_UNSPEC", "none"),
        (1, "XFRMA_ALG_AUTH", "xfrm_algo"),
        (2, "XFRMA_ALG_CRYPT", "xfrm_algo"),
        (3, "XFRMA_ALG_COMP", "xfrm_algo"),
        (4, "XFRMA_ENCAP", "xfrm_encap_tmpl"),
        (6, "XFRMA_SA", "xfrm_usersa_info_nla"),
        (10, "XFRMA_REPLAY_VAL", "xfrm_replay_state"),
        (13, "XFRMA_SRCADDR", "hex"),
        (15, "XFRMA_LASTUSED", "uint64"),
        (18, "XFRMA_ALG_AEAD", "xfrm_algo_aead"),
        (20, "XFRMA_ALG_AUTH_TRUNC", "xfrm_algo_aead"),
        (21, "XFRMA_MARK", "xfrm_mark"),
        (22, "XFRMA_TFCPAD", "uint32"),
        (23, "XFRMA_REPLAY_ESN_VAL", "xfrm_replay_state_esn"),
        (24, "XFRMA_SA_EXTRA_FLAGS", "uint32"),
        (28, "XFRMA_OFFLOAD_DEV", "xfrm_user_offload"),
        (29, "XFRMA_SET_MARK", "uint32"),
        (30, "XFRMA_SET_MARK_MASK", "uint32"),
        (31, "XFRMA_IF_ID", "uint32"),
        (32, "XFRMA_MTIMER_THRESH", "uint32"),
        (33, "XFRMA_SA_DIR", "uint8"),
        (34, "XFRMA_NAT_KEEPALIVE_INTERVAL", "uint32"),
        (35, "XFRMA_SA_PCPU", "uint32"),
    )

    class xfrm_algo(nla):  # type: ignore[misc]
        """``struct xfrm_algo { char alg_name[64]; unsigned int alg_key_len; char alg_key[]; }``"""

        fields = (("alg_name", "64s"), ("alg_key_len", "I"))

    class xfrm_algo_aead(nla):  # type: ignore[misc]
        """``struct xfrm_algo_aead`` / ``xfrm_algo_auth``: name, key_len, icv/trunc_len, key."""

        fields = (("alg_name", "64s"), ("alg_key_len", "I"), ("alg_icv_len", "I"))

    class xfrm_encap_tmpl(nla):  # type: ignore[misc]
        """``struct xfrm_encap_tmpl`` (24)."""

        fields = (("encap_type", "H"), ("encap_sport", ">H"), ("encap_dport", ">H"), ("__pad", "2x"),
                  ("encap_oa", "16s"))

    class xfrm_usersa_info_nla(nla):  # type: ignore[misc]
        """``XFRMA_SA``: a whole ``struct xfrm_usersa_info`` nested in DELSA."""

        fields = _USERSA_INFO

    class xfrm_replay_state(nla):  # type: ignore[misc]
        """``struct xfrm_replay_state { __u32 oseq, seq, bitmap; }``"""

        fields = (("oseq", "I"), ("seq", "I"), ("bitmap", "I"))

    class xfrm_replay_state_esn(nla):  # type: ignore[misc]
        """``struct xfrm_replay_state_esn`` header (the bitmap words follow)."""

        fields = (("bmp_len", "I"), ("oseq", "I"), ("seq", "I"), ("oseq_hi", "I"), ("seq_hi", "I"),
                  ("replay_window", "I"))

    class xfrm_mark(nla):  # type: ignore[misc]
        """``struct xfrm_mark { __u32 v, m; }``"""

        fields = (("value", "I"), ("mask", "I"))

    class xfrm_user_offload(nla):  # type: ignore[misc]
        """``struct xfrm_user_offload { int ifindex; __u8 flags; }``"""

        fields = (("ifindex", "i"), ("flags", "B"), ("__pad", "3x"))

    class xfrm_lifetime_cur(nla):  # type: ignore[misc]
        """``struct xfrm_lifetime_cur``: bytes, packets, add_time, use_time (u64)."""

        fields = (("bytes", "Q"), ("packets", "Q"), ("add_time", "Q"), ("use_time", "Q"))


class xfrm_usersa_msg(xfrm_sa_attrs, nlmsg):  # type: ignore[misc]
    """NEWSA / UPDSA: ``struct xfrm_usersa_info`` + attributes."""

    prefix = "XFRMA_"
    fields = _USERSA_INFO


class xfrm_user_expire_msg(xfrm_sa_attrs, nlmsg):  # type: ignore[misc]
    """EXPIRE: ``struct xfrm_user_expire { struct xfrm_usersa_info state; __u8 hard; }`` (232)."""

    prefix = "XFRMA_"
    fields = (*_USERSA_INFO, ("hard", "B"), ("__hard_pad", "7x"))


class xfrm_usersa_id_msg(xfrm_sa_attrs, nlmsg):  # type: ignore[misc]
    """DELSA: ``struct xfrm_usersa_id { daddr 0; __be32 spi 16; __u16 family 20; __u8 proto 22; }``."""

    prefix = "XFRMA_"
    fields = (("daddr", "16s"), ("spi", ">I"), ("family", "H"), ("proto", "B"), ("__pad", "x"))


class xfrm_aevent_msg(xfrm_sa_attrs, nlmsg):  # type: ignore[misc]
    """NEWAE: ``struct xfrm_aevent_id { sa_id 0; saddr 24; __u32 flags 40; __u32 reqid 44; }``."""

    prefix = "XFRMA_"
    fields = (("daddr", "16s"), ("spi", ">I"), ("family", "H"), ("proto", "B"), ("__pad", "x"),
              ("saddr", "16s"), ("flags", "I"), ("reqid", "I"))
    nla_map = (
        (0, "XFRMA_UNSPEC", "none"),
        (9, "XFRMA_LTIME_VAL", "xfrm_lifetime_cur"),
        (10, "XFRMA_REPLAY_VAL", "xfrm_replay_state"),
        (11, "XFRMA_REPLAY_THRESH", "uint32"),
        (12, "XFRMA_ETIMER_THRESH", "uint32"),
        (21, "XFRMA_MARK", "xfrm_mark"),
        (23, "XFRMA_REPLAY_ESN_VAL", "xfrm_replay_state_esn"),
        (31, "XFRMA_IF_ID", "uint32"),
    )


class xfrm_done_msg(nlmsg):  # type: ignore[misc]
    """NLMSG_DONE: one int."""

    fields = (("status", "i"),)


class MarshalXfrm(Marshal):  # type: ignore[misc]
    """Message type -> class, as pyroute2's MarshalRtnl does for rtnetlink."""

    msg_map = {  # noqa: RUF012 - pyroute2's Marshal API is a class attribute
        16: xfrm_usersa_msg,  # XFRM_MSG_NEWSA
        26: xfrm_usersa_msg,  # XFRM_MSG_UPDSA
        17: xfrm_usersa_id_msg,  # XFRM_MSG_DELSA
        24: xfrm_user_expire_msg,  # XFRM_MSG_EXPIRE
        30: xfrm_aevent_msg,  # XFRM_MSG_NEWAE
        3: xfrm_done_msg,  # NLMSG_DONE
    }


#: attribute names our decoder turns into fields, per message class (``get_attr`` forces their decoding)
ATTRS_USED: dict[type, tuple[str, ...]] = {
    xfrm_usersa_msg: ("XFRMA_ALG_CRYPT", "XFRMA_ALG_AUTH", "XFRMA_ALG_AUTH_TRUNC", "XFRMA_ALG_AEAD",
                      "XFRMA_ALG_COMP", "XFRMA_REPLAY_VAL", "XFRMA_REPLAY_ESN_VAL", "XFRMA_LASTUSED",
                      "XFRMA_ENCAP", "XFRMA_MARK", "XFRMA_IF_ID", "XFRMA_SA_DIR", "XFRMA_OFFLOAD_DEV"),
    xfrm_user_expire_msg: ("XFRMA_MARK", "XFRMA_IF_ID", "XFRMA_SA_DIR", "XFRMA_SA_PCPU"),
    xfrm_usersa_id_msg: ("XFRMA_SA", "XFRMA_SRCADDR", "XFRMA_ALG_CRYPT", "XFRMA_ALG_AUTH", "XFRMA_ALG_AUTH_TRUNC",
                         "XFRMA_ALG_AEAD", "XFRMA_REPLAY_VAL", "XFRMA_REPLAY_ESN_VAL", "XFRMA_LASTUSED",
                         "XFRMA_ENCAP", "XFRMA_IF_ID", "XFRMA_SA_DIR"),
    xfrm_aevent_msg: ("XFRMA_REPLAY_VAL", "XFRMA_REPLAY_ESN_VAL", "XFRMA_LTIME_VAL", "XFRMA_REPLAY_THRESH",
                      "XFRMA_ETIMER_THRESH", "XFRMA_MARK", "XFRMA_IF_ID"),
}


def parse(marshal: MarshalXfrm, datagram: bytes) -> Iterator[Any]:
    """All messages of one datagram, as pyroute2 ``nlmsg`` objects (NLAs not decoded yet)."""
    return marshal.parse(datagram)  # type: ignore[no-any-return]


def touch_attrs(msg: Any) -> int:
    """Force decoding of every attribute our decoder reads; returns how many were present."""
    found = 0
    for name in ATTRS_USED.get(type(msg), ()):
        value = msg.get_attr(name)
        if value is not None:
            found += 1
    return found
