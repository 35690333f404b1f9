"""/metrics at scale (issue 15): the chunked renderer, streamed gzip, and the correlator's ``metrics_row`` fast
path, each checked against the whole-body renderer (itself checked against prometheus_client)."""

from __future__ import annotations

import asyncio
import gzip
import zlib

from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.health.correlate import Correlator
from monitor.health.pipeline import Pipeline
from monitor.serve import metrics, metrics_text
from monitor.sources.simfleet import Fleet, FleetConfig
from tests.test_metrics_render import MON, mon_samples, tunnel_samples

START = 1_700_000_000.0


def sim_correlator(seconds: float, tunnels: int = 40, seed: int = 4) -> tuple[Correlator, float]:
    """A real correlator after ``seconds`` of the simulated fleet (rekeys, down, idle, expiring tunnels)."""
    c = Correlator()
    p = Pipeline(c)
    fleet = Fleet(seed, FleetConfig(tunnels=tunnels, policies=True), start=START)
    t = START
    while t <= START + seconds:
        for item in fleet.step(t):
            p.feed(item, t)
        c.on_timer(t)
        nxt = fleet.next_time()
        assert nxt is not None
        t = nxt
    return c, t


class JsonOnly:
    """The correlator seen only through its public JSON (what the IKE view and fakes offer): the slow path."""

    def __init__(self, inner: Correlator) -> None:
        self.inner = inner

    def tunnel_ids(self) -> list[str]:
        return self.inner.tunnel_ids()

    def tunnel_json(self, tid: str, now: float) -> dict[str, object] | None:
        return self.inner.tunnel_json(tid, now)


@settings(max_examples=60, deadline=None)
@given(st.lists(tunnel_samples, max_size=12), mon_samples, st.integers(1, 5), st.integers(1, 400), st.booleans())
def test_chunks_join_to_the_whole_body(tunnels: list[metrics.TunnelSample], mon: metrics.MonitorSample,
                                       chunk: int, size: int, gz: bool) -> None:
    """Any chunk size and piece size: the pieces (decompressed when gzip) are the whole body, byte for byte."""
    whole = metrics.render(tunnels, mon)
    tail = metrics._monitor_text(mon, metrics.count_states(tunnels))
    texts = metrics_text.text_chunks(metrics.columns(tunnels), tail, chunk=chunk)
    pieces = list(metrics_text.encoded_chunks(texts, gz, size=size))
    assert b"" not in pieces
    assert whole == (gzip.decompress(b"".join(pieces)) if gz else b"".join(pieces))


def test_gzip_stream_is_incremental() -> None:
    """A big body leaves as many gzip pieces, each decompressible in order (one stream, flushed at the end).
    (ISA-L's deflate holds more output than zlib's before it emits: 3,000 tunnels came out in 2 pieces.)"""
    n = 20000
    tunnels = [metrics.TunnelSample((f"ns{i % 3}", str(i), "192.0.2.1", f"198.51.100.{i % 250}", f"t{i}", "", ""),
                                    float(i), 2.0 * i, 3.0, 4.0, 5.0, 6.0, "up", 30.5, 0.0, 0.0) for i in range(n)]
    texts = metrics_text.text_chunks(metrics.columns(tunnels), ["# end\n"], chunk=100)
    pieces = list(metrics_text.encoded_chunks(texts, True, size=1 << 16))
    assert len(pieces) > 3
    d = zlib.decompressobj(31)
    out = b"".join(d.decompress(p) for p in pieces) + d.flush()
    assert d.eof
    assert out == "".join(metrics_text.text_chunks(metrics.columns(tunnels), ["# end\n"])).encode()
    assert out.count(b"\n") > n * 13  # 13 lines per tunnel: info, 2 + 2 directions, 8 more


async def test_metrics_row_fast_path_equals_the_json_path() -> None:
    """Differential: the correlator's metrics_row gives the same exposition as its public JSON, in every mode,
    on a simulated fleet that has rekeyed, expired and gone down (several states, expiries, downtime)."""
    c, now = sim_correlator(1500)
    states = {str(t["state"]) for t in c.snapshot(now)}
    assert len(states) >= 2, states
    assert getattr(type(c), "metrics_row", None) is not None
    assert getattr(type(JsonOnly(c)), "metrics_row", None) is None
    for mode in metrics.MODES:
        fast_cols, fast_counts = await metrics.gather_columns(c, now, chunk=7, mode=mode)
        slow_cols, slow_counts = await metrics.gather_columns(JsonOnly(c), now, chunk=7, mode=mode)
        assert fast_counts == slow_counts
        fast = "".join(metrics_text.text_chunks(fast_cols, metrics._monitor_text(MON, fast_counts), chunk=5))
        slow = "".join(metrics_text.text_chunks(slow_cols, metrics._monitor_text(MON, slow_counts), chunk=5))
        assert fast == slow, mode
        if mode == "all":
            assert len(fast_cols) == len(c.tunnel_ids()) > 0
            assert "ipsec_tunnel_hard_expiry_seconds{" in fast


async def test_scrape_chunks_yield_to_the_loop() -> None:
    """A scrape gathers in slices: other tasks run while it reads the correlator."""
    c, now = sim_correlator(60, tunnels=60)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.ensure_future(ticker())
    mon = MON._replace(now=now)
    cols, _ = await metrics.gather_columns(c, now, chunk=10)
    task.cancel()
    assert len(cols) == 60
    assert ticks >= 5
    body = await metrics.scrape(c, mon)
    assert body == metrics.render([metrics.sample(t) for t in c.snapshot(now)], mon)
