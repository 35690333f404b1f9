"""Counters of the correlator (pure): bytes and packets that never go down, and drop counters.

An SA record's counters only ever raise the SA's (a record older than what was seen changes nothing);
the increase is added to the tunnel's totals, so totals continue across rekeys. Replay and integrity
failures become ``replay_errors`` / ``integrity_errors`` events and an ``errors`` window.

Values that cannot be true become a counted anomaly and a ``counter_anomaly`` event, never a broken
total: an SA counter that goes backwards (the kernel's ``curlft`` only grows; the SA was replaced
unseen, or the input is corrupt) and a tunnel total past 2^64 - 1 (the width of every kernel counter:
only a crafted or corrupt capture gets there). A total is held at ``U64_MAX`` rather than wrapped, so
it never goes down and always serialises.
"""

from __future__ import annotations

from monitor.health.engine import Engine
from monitor.health.nsstate import NetnsState
from monitor.health.sastate import DIR_IN, DIR_OUT, SAState, vol_of
from monitor.health.tunnel import TunnelState
from monitor.wire.events import (
    SA,
)

__all__ = ["Counters"]


U64_MAX = 2**64 - 1
OSEQ_LIMIT = 2**32  # a 32-bit output sequence number wraps here (the kernel refuses to: it drops)
U32_MAX = OSEQ_LIMIT - 1
XFRM_STATE_ESN = 128  # include/uapi/linux/xfrm.h, xfrm_usersa_info.flags
INF = float("inf")


class Counters(Engine):
    """SA counters into tunnel totals; drop counters into events."""

    def _anomaly(self, st: SAState, what: str, counter: str, value: int, now: float) -> None:
        t = st.tunnel
        t.anomalies += 1
        self._emit(now, "counter_anomaly", t, {"spi": f"0x{st.spi:08x}", "anomaly": what, "counter": counter,
                                               "value": value, "count": t.anomalies})
        self._dirty.add(t.id)

    def _cap_totals(self, st: SAState, now: float) -> None:
        """Hold tunnel totals past 2^64 - 1 at ``U64_MAX`` (an anomaly: no kernel counter is wider)."""
        t = st.tunnel
        for name in ("bytes_in", "bytes_out", "packets_in", "packets_out"):
            value = getattr(t, name)
            if value > U64_MAX:
                setattr(t, name, U64_MAX)
                self._anomaly(st, "total_past_u64", name, U64_MAX, now)

    def _count(self, ns: NetnsState, st: SAState, nbytes: int, npackets: int, now: float) -> None:
        """Raise the SA's counters to ``nbytes``/``npackets`` (never lower); add the increase to the tunnel."""
        db = nbytes - st.bytes
        dp = npackets - st.packets
        if db <= 0 and dp <= 0:
            return
        t = st.tunnel
        if db < 0:
            db = 0
        else:
            st.bytes = nbytes
        if dp < 0:
            dp = 0
        else:
            st.packets = npackets
        if st.dir == DIR_IN:
            if now - t.last_in_ts >= self.config.one_way_after:
                t.in_since = now  # inbound starts moving after a pause (the reverse one-way check)
            t.bytes_in += db
            t.packets_in += dp
            t.d_bi += db
            t.d_pi += dp
            t.last_in_ts = max(t.last_in_ts, now)
        else:
            t.bytes_out += db
            t.packets_out += dp
            t.d_bo += db
            t.d_po += dp
            t.last_out_ts = max(t.last_out_ts, now)
        if t.bytes_in > U64_MAX or t.bytes_out > U64_MAX or t.packets_in > U64_MAX or t.packets_out > U64_MAX:
            self._cap_totals(st, now)
        ns.changed.add(t)
        self._dirty.add(t.id)
        if t.state is not TunnelState.UP:  # idle / one-way may end with this traffic
            ns.pending.add(t)

    def _bump(self, ns: NetnsState, st: SAState, sa: SA, now: float) -> None:
        """Apply an SA record's counters, drop counters and last-use time to the SA and its tunnel."""
        cur = sa.cur
        if cur.bytes > st.bytes or cur.packets > st.packets:
            self._count(ns, st, cur.bytes, cur.packets, now)
        if cur.bytes < st.bytes or cur.packets < st.packets:
            self._anomaly(st, "went_backwards", "bytes" if cur.bytes < st.bytes else "packets",
                          cur.bytes if cur.bytes < st.bytes else cur.packets, now)
        stats = sa.stats
        replay = stats.replay + stats.replay_window
        if replay > st.replay or stats.integrity_failed > st.integrity:
            self._errors(ns, st, replay, stats.integrity_failed, now)
        if sa.lastused is not None and sa.lastused > st.lastused:
            st.lastused = sa.lastused
        self._details(ns, st, sa, now)

    def _details(self, ns: NetnsState, st: SAState, sa: SA, now: float) -> None:
        """Keep the record's sequence numbers, limits and NAT-T encapsulation (the decoder's immutable
        objects, not copies); warn once when a 32-bit output sequence number nears 2^32; re-evaluate the
        tunnel when the SA nears a hard byte/packet limit."""
        esn = sa.replay_esn
        if esn is not None:  # 64-bit values; the decoder's own int objects when the high words are 0
            st.oseq = oseq = (esn.oseq_hi << 32 | esn.oseq) if esn.oseq_hi else esn.oseq
            st.seq = (esn.seq_hi << 32 | esn.seq) if esn.seq_hi else esn.seq
            st.window = esn.replay_window
        else:
            replay = sa.replay
            if replay is not None:
                st.oseq = oseq = replay.oseq
                st.seq = replay.seq
            else:
                st.oseq = oseq = None
                st.seq = 0
            st.window = sa.replay_window
        lft = sa.lft
        if lft is not st.lft:
            st.lft = lft
            st.vol = vol_of(lft, self.config.expiring_volume)
        st.encap = sa.encap
        st.esn = bool(sa.flags & XFRM_STATE_ESN)
        t = st.tunnel
        if oseq is not None and not st.esn and st.dir == DIR_OUT and not st.oseq_warned:
            low = oseq if oseq < OSEQ_LIMIT else oseq & U32_MAX  # the record's 32-bit oseq
            if low >= OSEQ_LIMIT - self.config.oseq_margin:
                st.oseq_warned = True
                self._emit(now, "oseq_exhaustion", t, {"spi": f"0x{st.spi:08x}", "oseq": low,
                                                       "left": OSEQ_LIMIT - low})
                self._touch(ns, t)
        if st.near_volume():
            ns.pending.add(t)

    def _errors(self, ns: NetnsState, st: SAState, replay: int, integrity: int, now: float) -> None:
        t = st.tunnel
        codes = []
        for code, new, old in (("replay_errors", replay, st.replay), ("integrity_errors", integrity, st.integrity)):
            if new > old:
                if code == "replay_errors":
                    t.replay_errors += new - old
                    st.replay = new
                else:
                    t.integrity_errors += new - old
                    st.integrity = new
                codes.append(code)
                self._emit(now, code, t, {"spi": f"0x{st.spi:08x}", "delta": new - old,
                                          "total": t.replay_errors if code == "replay_errors" else t.integrity_errors})
        if not ns.quiet:
            # codes seen within the current window accumulate; a new window starts afresh
            t.err_codes = tuple(sorted(set(t.err_codes) | set(codes))) if t.err_until > now else tuple(codes)
            t.err_until = now + self.config.errors_window
            self._touch(ns, t)
        self._dirty.add(t.id)
