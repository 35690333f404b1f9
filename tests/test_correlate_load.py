"""The quiet initial load's fast path, cycle-free tunnel drops, and the daemon's GC policy around loads."""

from __future__ import annotations

import gc
from typing import Any

import pytest

from bench.common import NOW0, dump_items, dump_records, pack_records, patch_counters
from monitor.health.correlate import Correlator
from monitor.health.nsstate import NetnsState
from monitor.health.pipeline import Pipeline
from monitor.serve.load_gc import LoadGc
from monitor.sources.items import Control
from monitor.sources.simfleet import Fleet, FleetConfig
from monitor.wire.events import SA


class GeneralPath(Correlator):
    """A correlator whose new dump records always take the general ``_upsert`` -> ``_new_sa`` path."""

    def _load_sa(self, ns: NetnsState, key: tuple[int, str, int], sa: SA, now: float) -> bool:
        self._upsert(ns, sa, now, record=True)
        return True


def _observe(c: Correlator, now: float) -> dict[str, Any]:
    events = sorted((e.type, e.tunnel or "", str(e.detail)) for e in c.drain_events())
    return {"events": events, "dirty": sorted(c.take_dirty()), "snapshot": c.snapshot(now),
            "heap": sorted(c._heap), "deadline": c.next_deadline(),
            "netns": [c.netns_json(n, now) for n in c.netns_names()]}


def _bench_run(cls: type[Correlator]) -> list[dict[str, Any]]:
    records = list(dump_records(600))  # GCM tunnels carry XFRMA_SA_DIR, CBC ones do not
    p = Pipeline(cls())
    out = []
    for it in dump_items(pack_records(records), ts=NOW0):
        p.feed(it, NOW0)
    out.append(_observe(p.correlator, NOW0))
    grown = [patch_counters(r, 5000 * (i % 4), 3 * (i % 2)) for i, r in enumerate(records[:-6])]
    for it in dump_items(pack_records(grown), ts=NOW0 + 10):
        p.feed(it, NOW0 + 10)
    out.append(_observe(p.correlator, NOW0 + 10))
    for k in range(1, 30):
        p.correlator.on_timer(NOW0 + 10 + 120 * k)
        out.append(_observe(p.correlator, NOW0 + 10 + 120 * k))
    return out


def _sim_run(cls: type[Correlator]) -> list[dict[str, Any]]:
    fleet = Fleet(5, FleetConfig(tunnels=30), start=NOW0)
    p = Pipeline(cls())
    out = []
    now = NOW0
    while now < NOW0 + 1200:
        cands = [x for x in (fleet.next_time(), p.correlator.next_deadline()) if x is not None]
        now = min(cands)
        for it in fleet.step(now):
            p.feed(it, it.ts)
        p.correlator.on_timer(now)
        out.append(_observe(p.correlator, now))
    return out


@pytest.mark.parametrize("scenario", [_bench_run, _sim_run])
def test_fast_load_path_matches_general_path(scenario: Any) -> None:
    """Loading through ``_load_sa`` leaves the same tunnels, events, deadlines and later behaviour as ``_new_sa``."""
    fast, general = scenario(Correlator), scenario(GeneralPath)
    assert len(fast) == len(general)
    assert len(fast) > 2
    assert fast[0]["snapshot"], "the first load produced no tunnels"
    for i, (a, b) in enumerate(zip(fast, general, strict=True)):
        assert a == b, f"observation {i} differs"


def test_netns_removal_leaves_no_reference_cycles() -> None:
    """Dropping a netns frees its tunnels, SAs and policies by refcounting: the cyclic GC finds nothing."""
    fleet = Fleet(2, FleetConfig(tunnels=40), start=NOW0)  # SAs and policies
    p = Pipeline(Correlator())
    for it in fleet.step(NOW0 + 30):
        p.feed(it, it.ts)
    c = p.correlator
    assert c.sa_count >= 80
    assert (c.netns_json("sim", NOW0 + 30) or {}).get("policies", 0) > 0
    c.drain_events()
    c.take_dirty()
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        p.feed(Control("sim", "netns_removed", NOW0 + 31), NOW0 + 31)
        assert c.tunnel_ids() == []
        c.drain_events()
        found = gc.collect()
    finally:
        if was_enabled:
            gc.enable()
    assert found == 0, f"{found} objects were only reclaimable by the cyclic GC"


class _Core:
    loading = False


def _state(policy: LoadGc) -> tuple[bool, bool, bool, int]:
    """(GC enabled, holding, gave up, loads) without mypy narrowing any of them between calls."""
    return gc.isenabled(), policy.holding, policy.gave_up, policy.loads


def test_load_gc_holds_gc_during_a_load_then_freezes() -> None:
    """GC is off while the core loads; afterwards it is on again and the loaded objects are frozen."""
    assert gc.isenabled()
    core, policy = _Core(), LoadGc()
    frozen0 = gc.get_freeze_count()
    try:
        policy.update(core, 0.0)
        assert _state(policy) == (True, False, False, 0)
        core.loading = True
        policy.update(core, 1.0)
        assert _state(policy) == (False, True, False, 0)
        kept = [[i] for i in range(1000)]  # "loaded state"
        policy.update(core, 2.0)
        assert _state(policy) == (False, True, False, 0)
        core.loading = False
        policy.update(core, 3.0)
        assert _state(policy) == (True, False, False, 1)
        assert gc.get_freeze_count() >= frozen0 + len(kept)
    finally:
        policy.release()
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0


def test_load_gc_gives_up_on_a_load_that_never_ends() -> None:
    """A load still in flight after ``max_hold`` gets GC back, and GC stays on until that load is over."""
    core, policy = _Core(), LoadGc(max_hold=5.0)
    try:
        core.loading = True
        policy.update(core, 100.0)
        assert _state(policy) == (False, True, False, 0)
        policy.update(core, 106.0)
        assert _state(policy) == (True, False, True, 0)
        policy.update(core, 107.0)
        assert _state(policy) == (True, False, True, 0), "GC was turned off again for the same stuck load"
        core.loading = False
        policy.update(core, 108.0)
        assert _state(policy) == (True, False, False, 0)
    finally:
        policy.release()
    assert gc.isenabled()


def test_load_gc_leaves_gc_alone_if_someone_else_disabled_it() -> None:
    """With GC already off, the policy neither turns it on nor freezes."""
    core, policy = _Core(), LoadGc()
    gc.disable()
    try:
        core.loading = True
        policy.update(core, 0.0)
        core.loading = False
        policy.update(core, 1.0)
        assert _state(policy) == (False, False, False, 0)
        policy.release()
        assert _state(policy) == (False, False, False, 0)
    finally:
        gc.enable()


def test_correlator_loading_property() -> None:
    """``Correlator.loading`` is true exactly while a first (quiet) dump is in flight."""
    p = Pipeline(Correlator())
    items = dump_items(pack_records(list(dump_records(20))), ts=NOW0)
    seen = []
    for it in items:
        p.feed(it, NOW0)
        seen.append(p.correlator.loading)
    assert seen[0] is True
    assert all(seen[:-1])
    assert seen[-1] is False
    for it in dump_items(pack_records(list(dump_records(20))), ts=NOW0 + 5):
        p.feed(it, NOW0 + 5)
        assert p.correlator.loading is False  # a later dump is no load
