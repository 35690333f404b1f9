"""The hub's memory stays bounded under tunnel churn: removed tunnels are forgotten once no resume needs them."""

from __future__ import annotations

import asyncio
import contextlib

from monitor.serve import session as hub_session
from monitor.serve.hub import Hub
from monitor.serve.protocol import Filters
from tests.test_hub import Sink, wait_for
from tests.test_web_fakes import FakeCorrelator


def churn(c: FakeCorrelator, hub: Hub, first: int, n: int) -> None:
    """Add and remove ``n`` tunnels with fresh ids, publishing like the daemon does."""
    for i in range(first, first + n):
        tid = f"gone{i}"
        c.add(tid)
        hub.publish_events(c.drain_events())
        hub.publish_tunnels(c.take_dirty(), 1e9)
        c.remove(tid)
        hub.publish_events(c.drain_events())
        hub.publish_tunnels(c.take_dirty(), 1e9)


def test_removed_tunnels_do_not_pile_up() -> None:
    """10,000 short-lived tunnels with a 10-event ring: the per-tunnel bookkeeping stays small."""
    c = FakeCorrelator()
    c.add("keep")
    hub = Hub(c, clock=lambda: 1e9, ring_size=10)
    hub.publish_events(c.drain_events())
    hub.publish_tunnels(c.take_dirty(), 1e9)
    churn(c, hub, 0, 10_000)
    assert len(hub.upd_seq) < 20, f"{len(hub.upd_seq)} entries kept for 1 live tunnel and a 10-event ring"
    assert "keep" in hub.upd_seq


async def test_resume_still_sees_a_removal_inside_the_ring() -> None:
    """A client resuming from a seq the ring still holds is told about a tunnel removed after it."""
    c = FakeCorrelator()
    hub = Hub(c, clock=lambda: 1e9, ring_size=10)
    churn(c, hub, 0, 50)
    since = c.seq
    churn(c, hub, 50, 2)
    cl = hub.attach(Filters())
    sink = Sink()
    task = asyncio.create_task(hub_session.serve(hub, cl, sink, since=since, snapshot=None))
    await wait_for(lambda: sum(m["type"] == "tunnel_removed" for m in sink.msgs) >= 2, "two removals")
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert sink.msgs[0]["resumed"] is True
    assert sorted(m["id"] for m in sink.msgs if m["type"] == "tunnel_removed") == ["gone50", "gone51"]
