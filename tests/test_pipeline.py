"""Pipeline: encoded datagrams through the real decoder into the correlator, dump tracking, bad input, controls."""

from __future__ import annotations

import json
import struct

from correlate_builders import dump_datagrams, make_policy, make_sa, newpolicy, newsa, updsa, with_counters
from correlate_harness import T0

from monitor.health.correlate import Correlator
from monitor.health.model import HealthConfig
from monitor.health.pipeline import Pipeline
from monitor.sources.items import Control, Datagram
from monitor.wire import xfrm as X
from monitor.wire.encode import encode_datagram, encode_dump_request
from monitor.wire.events import NetlinkError, NlHeader


def _pipe() -> tuple[Pipeline, Correlator]:
    c = Correlator(HealthConfig())
    return Pipeline(c), c


def _up(p: Pipeline, ns: str = "gw") -> None:
    i = make_sa(0x1000, inbound=True, add_time=T0)
    o = make_sa(0x2000, inbound=False, add_time=T0)
    p.feed(Datagram(ns, encode_datagram([updsa(i), newsa(o)]), T0), T0)


def test_events_reach_the_correlator_through_the_real_codec() -> None:
    """Notifications encoded as the kernel sends them come out as an up tunnel with tunnel_up."""
    p, c = _pipe()
    _up(p)
    assert c.tunnel_ids() == ["gw:1:192.0.2.1-198.51.100.7"]
    assert "tunnel_up" in [e.type for e in c.drain_events()]
    assert (p.stats.datagrams, p.stats.events) == (1, 2)


def test_dump_request_and_done_reconcile() -> None:
    """Our GETSA dump request starts a dump; the matching NLMSG_DONE ends it and removes unreported SAs."""
    p, c = _pipe()
    _up(p)
    i = make_sa(0x1000, inbound=True, add_time=T0, nbytes=500)
    for d in dump_datagrams("gw", 42, [newsa(i, dump_seq=42)], T0 + 10):
        p.feed(d, d.ts + 0.5 if not d.outgoing else d.ts)
    j = c.tunnel_json(c.tunnel_ids()[0], T0 + 11)
    assert j is not None
    assert [s["spi"] for s in j["sas"]] == ["0x00001000"]
    assert j["bytes_in"] == 500
    st = p.stats.netns["gw"]
    assert (st.dumps, st.last_dump_duration, st.last_dump_end) == (1, 0.5, T0 + 10.5)


def test_done_with_another_seq_does_not_end_our_dump() -> None:
    """An NLMSG_DONE for someone else's dump (other seq) is not ours: nothing is removed."""
    p, c = _pipe()
    _up(p)
    p.feed(Datagram("gw", encode_dump_request(X.XFRM_MSG_GETSA, 7), T0 + 1, outgoing=True), T0 + 1)
    for d in dump_datagrams("gw", 8, [], T0 + 2)[1:]:
        p.feed(d, T0 + 2)
    assert len((c.tunnel_json(c.tunnel_ids()[0], T0 + 2) or {})["sas"]) == 2
    assert "gw" not in p.stats.netns or p.stats.netns["gw"].dumps == 0


def test_policy_dump() -> None:
    """A GETPOLICY dump is a policy dump: unreported policies are removed."""
    p, c = _pipe()
    p.feed(Datagram("gw", encode_datagram([newpolicy(make_policy(d)) for d in (0, 1, 2)]), T0), T0)
    recs = [newpolicy(make_policy(1), dump_seq=5)]
    for d in dump_datagrams("gw", 5, recs, T0 + 1, msg_type=X.XFRM_MSG_GETPOLICY):
        p.feed(d, T0 + 1)
    j = c.tunnel_json(c.tunnel_ids()[0], T0 + 1)
    assert j is not None
    assert len(j["selectors"]) == 1
    removed = [e for e in c.drain_events() if e.type == "policy_removed"]
    assert sorted(e.detail["dir"] for e in removed) == [0, 2]
    assert p.stats.netns["gw"].last_policy_dump_end == T0 + 1


def test_error_reply_ends_dump_without_removing() -> None:
    """An NLMSG_ERROR answering our dump ends it with an error noted; no SA is removed."""
    p, c = _pipe()
    _up(p)
    p.feed(Datagram("gw", encode_dump_request(X.XFRM_MSG_GETSA, 9), T0 + 1, outgoing=True), T0 + 1)
    err = NetlinkError(NlHeader(X.NLMSG_ERROR, 0, 9, 1), -16, NlHeader(X.XFRM_MSG_GETSA, X.NLM_F_DUMP, 9, 0))
    p.feed(Datagram("gw", encode_datagram([err]), T0 + 2), T0 + 2)
    assert len((c.tunnel_json(c.tunnel_ids()[0], T0 + 2) or {})["sas"]) == 2
    st = p.stats.netns["gw"]
    assert (st.dumps, st.dump_errors) == (0, 1)
    assert "errno 16" in (st.last_error or "")


def test_outgoing_non_dump_requests_are_ignored() -> None:
    """An outgoing request that is not a dump (e.g. an IKE daemon's NEWSA in an nlmon capture) changes nothing."""
    p, c = _pipe()
    p.feed(Datagram("gw", encode_datagram([newsa(make_sa(0x1000, inbound=True))]), T0, outgoing=True), T0)
    assert c.tunnel_ids() == []
    assert (p.stats.datagrams, p.stats.events, p.stats.malformed) == (1, 0, 0)


def test_malformed_datagram_is_counted_and_feeding_goes_on() -> None:
    """Garbage bytes are counted with their error text; the next good datagram is processed."""
    p, c = _pipe()
    p.feed(Datagram("gw", b"\x05\x00\x00", T0), T0)
    p.feed(Datagram("gw", b"\xff\x00\x00\x00" + bytes(12), T0), T0)
    p.feed(Datagram("gw", b"\x01", T0, outgoing=True), T0)
    assert p.malformed == 3
    assert p.last_error is not None
    assert p.last_error.startswith("gw: ")
    _up(p)
    assert len(c.tunnel_ids()) == 1


def test_controls() -> None:
    """enobufs -> resync, xfrm_stat -> hints, source_error noted, netns_removed drops the netns."""
    p, c = _pipe()
    _up(p)
    p.feed(Control("gw", "enobufs", T0 + 1), T0 + 1)
    assert (p.stats.enobufs, p.stats.resyncs) == (1, 1)
    i = make_sa(0x1000, inbound=True, add_time=T0)
    o = make_sa(0x2000, inbound=False, add_time=T0)
    c.drain_events()
    for d in dump_datagrams("gw", 3, [newsa(i, dump_seq=3), newsa(o, dump_seq=3)], T0 + 2):
        p.feed(d, T0 + 2)
    assert [e.type for e in c.drain_events()] == ["resync"]
    p.feed(Control("gw", "xfrm_stat", T0 + 3, counters={"XfrmInNoPols": 1}), T0 + 3)
    p.feed(Control("gw", "xfrm_stat", T0 + 4, counters={"XfrmInNoPols": 2}), T0 + 4)
    assert [h["code"] for h in (c.netns_json("gw", T0 + 4) or {})["hints"]] == ["XfrmInNoPols"]
    p.feed(Control("gw", "source_error", T0 + 5, message="permission denied"), T0 + 5)
    assert (p.stats.source_errors, p.stats.last_source_error) == (1, "gw: permission denied")
    p.feed(Control("gw", "netns_removed", T0 + 6), T0 + 6)
    assert c.tunnel_ids() == []
    assert json.dumps(p.stats.to_json())


def test_no_key_byte_reaches_any_output() -> None:
    """SAs encoded with real key bytes: no key byte appears in events, tunnel JSON or stats."""
    from monitor.wire.encode import encode_sa
    p, c = _pipe()
    key = bytes(range(0xA0, 0xB0))
    keys = {X.XFRMA_ALG_CRYPT: key, X.XFRMA_ALG_AUTH_TRUNC: key + key}
    i = make_sa(0x1000, inbound=True, add_time=T0)
    o = make_sa(0x2000, inbound=False, add_time=T0)
    data = encode_sa(NlHeader(X.XFRM_MSG_UPDSA), i, keys) + encode_sa(NlHeader(X.XFRM_MSG_NEWSA), o, keys)
    assert key in data
    p.feed(Datagram("gw", data, T0), T0)
    out = repr(c.drain_events()) + repr(c.snapshot(T0)) + repr(p.stats.to_json())
    assert "cbc(aes)" in out
    assert key.hex() not in out
    assert repr(key)[2:-1] not in out
    assert "\\xa0\\xa1" not in out


def test_counters_survive_through_the_codec() -> None:
    """Final counters carried by an encoded DELSA reach the tunnel totals."""
    from correlate_builders import delsa
    p, c = _pipe()
    _up(p)
    o = with_counters(make_sa(0x2000, inbound=False, add_time=T0), 12345, 67)
    p.feed(Datagram("gw", encode_datagram([delsa(o)]), T0 + 5), T0 + 5)
    j = c.tunnel_json(c.tunnel_ids()[0], T0 + 5)
    assert j is not None
    assert (j["bytes_out"], j["packets_out"]) == (12345, 67)


def test_filtered_dump_does_not_reconcile() -> None:
    """A GETSA dump filtered to one protocol (XFRMA_PROTO = AH) is not a full dump: nothing is removed."""
    p, c = _pipe()
    _up(p)
    p.feed(Datagram("gw", encode_dump_request(X.XFRM_MSG_GETSA, 11, proto=X.IPPROTO_AH), T0 + 1, outgoing=True),
           T0 + 1)
    for d in dump_datagrams("gw", 11, [], T0 + 2)[1:]:
        p.feed(d, T0 + 2)
    assert len((c.tunnel_json(c.tunnel_ids()[0], T0 + 2) or {})["sas"]) == 2
    p.feed(Datagram("gw", encode_dump_request(X.XFRM_MSG_GETSA, 12, proto=255), T0 + 3, outgoing=True), T0 + 3)
    for d in dump_datagrams("gw", 12, [], T0 + 4)[1:]:
        p.feed(d, T0 + 4)
    assert (c.tunnel_json(c.tunnel_ids()[0], T0 + 4) or {})["sas"] == []


def test_dump_request_with_truncated_attribute_does_not_raise() -> None:
    """An outgoing GETSA dump whose XFRMA_PROTO attribute claims a byte past the message (a crafted
    capture) is parsed as the kernel does (parsing stops: unfiltered), not an IndexError out of feed."""
    p, c = _pipe()
    _up(p)
    attr = struct.pack("=HH", 5, X.XFRMA_PROTO)  # nla_len 5, but the message ends after the header
    msg = struct.pack("=IHHII", 16 + len(attr), X.XFRM_MSG_GETSA, X.NLM_F_REQUEST | X.NLM_F_DUMP, 13, 0) + attr
    p.feed(Datagram("gw", msg, T0 + 1, outgoing=True), T0 + 1)
    for d in dump_datagrams("gw", 13, [], T0 + 2)[1:]:
        p.feed(d, T0 + 2)
    assert p.stats.netns["gw"].dumps == 1
    assert (c.tunnel_json(c.tunnel_ids()[0], T0 + 2) or {})["sas"] == []


def test_netns_removed_drops_its_dump_stats() -> None:
    """After netns_removed the netns has no dump bookkeeping left, so /metrics does not keep exporting a
    growing last-dump age for it (which would fire the dump-age alert for a namespace that is gone)."""
    p, c = _pipe()
    for d in dump_datagrams("gone", 5, [], T0):
        p.feed(d, T0)
    assert p.stats.netns["gone"].dumps == 1
    p.feed(Control("gone", "netns_removed", T0 + 1), T0 + 1)
    assert "gone" not in p.stats.netns
    assert "gone" not in p.stats.to_json()["netns"]
    assert c.netns_names() == []
