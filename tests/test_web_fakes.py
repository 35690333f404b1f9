"""Fakes for the serve unit tests (hub, web, metrics): a scripted correlator, pipeline and source.

Only unit tests use these; the functional tests run the real pipeline and correlator.
Also: the JSON Schema validator over ``docs/schema`` shared by the serve tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, NamedTuple

import jsonschema
from referencing import Registry, Resource

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "docs" / "schema"
BASE = "https://ipsec-monitor.invalid/schema/1/"


def _registry() -> Registry[Any]:
    resources = []
    for p in SCHEMA_DIR.glob("*.json"):
        doc = json.loads(p.read_text())
        resources.append((doc["$id"], Resource.from_contents(doc)))
    return Registry().with_resources(resources)


REGISTRY = _registry()


def validate(name: str, instance: Any) -> None:
    """Validate ``instance`` against ``docs/schema/<name>`` (raises jsonschema.ValidationError)."""
    schema = REGISTRY.contents(BASE + name)
    jsonschema.Draft202012Validator(schema, registry=REGISTRY).validate(instance)


def tunnel_doc(tid: str, netns: str = "default", state: str = "up", n: int = 0, now: float = 1e9) -> dict[str, Any]:
    """A tunnel in the public JSON shape (schema 1)."""
    return {
        "id": tid, "netns": netns, "reqid": n + 1, "if_id": 0, "mark": 0,
        "local": "192.0.2.1", "remote": f"198.51.100.{(n % 250) + 1}", "state": state, "since": now,
        "reasons": [], "bytes_in": 0, "bytes_out": 0, "packets_in": 0, "packets_out": 0,
        "rate_in_bps": 0.0, "rate_out_bps": 0.0, "rate_in_pps": 0.0, "rate_out_pps": 0.0,
        "rekeys": 0, "rekey_failures": 0, "last_rekey": None, "hard_expires_in": 3600.0,
        "selectors": [{"src": "10.0.0.0/24", "dst": "10.1.0.0/24", "proto": 0, "sport": 0, "dport": 0}],
        "sas": [{"spi": "0xc0000001", "direction": "in", "bytes": 0, "packets": 0, "added": now,
                 "soft_expires_in": 3000.0, "hard_expires_in": 3600.0, "enc": "cbc(aes)",
                 "auth": "hmac(sha256)", "aead": None}],
        "hints": [], "replay_errors": 0, "integrity_errors": 0,
    }


class FakeEvent(NamedTuple):
    """A health event with the real HealthEvent's shape."""

    seq: int
    ts: float
    type: str
    tunnel: str | None
    netns: str | None
    detail: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """The public dict."""
        return dict(self._asdict())


class FakeCorrelator:
    """The correlator's contract (ARCHITECTURE.md), scripted by the test."""

    def __init__(self) -> None:
        self.tunnels: dict[str, dict[str, Any]] = {}
        self._seq = 0
        self.events: list[FakeEvent] = []
        self.dirty: set[str] = set()
        self.deadline: float | None = None
        self.timer_calls: list[float] = []

    @property
    def seq(self) -> int:
        """Newest event seq."""
        return self._seq

    def emit(self, etype: str, tid: str | None, netns: str | None = "default", now: float = 1e9,
             **detail: Any) -> int:
        """Append a health event; returns its seq."""
        self._seq += 1
        self.events.append(FakeEvent(self._seq, now, etype, tid, netns, detail))
        return self._seq

    def add(self, tid: str, netns: str = "default", state: str = "up", n: int = 0) -> None:
        """A new tunnel (with a ``tunnel_up`` event)."""
        self.tunnels[tid] = tunnel_doc(tid, netns, state, n)
        self.dirty.add(tid)
        self.emit("tunnel_up", tid, netns)

    def update(self, tid: str, **fields: Any) -> None:
        """Change fields of a tunnel (no event)."""
        self.tunnels[tid].update(fields)
        self.dirty.add(tid)

    def remove(self, tid: str) -> None:
        """Forget a tunnel."""
        netns = self.tunnels.pop(tid)["netns"]
        self.dirty.add(tid)
        self.emit("tunnel_down", tid, netns)

    def drain_events(self) -> list[FakeEvent]:
        """New events."""
        out, self.events = self.events, []
        return out

    def take_dirty(self) -> set[str]:
        """Changed ids."""
        out, self.dirty = self.dirty, set()
        return out

    def tunnel_ids(self) -> list[str]:
        """All ids, sorted."""
        return sorted(self.tunnels)

    def tunnel_json(self, tid: str, now: float) -> dict[str, Any] | None:
        """A copy of one tunnel."""
        t = self.tunnels.get(tid)
        return None if t is None else dict(t)

    def counters_row(self, tid: str) -> list[Any] | None:
        """Same layout as the real correlator."""
        t = self.tunnels.get(tid)
        if t is None:
            return None
        return [tid, t["bytes_in"], t["bytes_out"], t["packets_in"], t["packets_out"],
                t["rate_in_bps"], t["rate_out_bps"], t["state"]]

    def next_deadline(self) -> float | None:
        """Scripted deadline."""
        return self.deadline

    def on_timer(self, now: float) -> None:
        """Record the call."""
        self.timer_calls.append(now)
        self.deadline = None


class Op(NamedTuple):
    """A source item that runs ``fn(correlator, now)`` inside ``FakePipeline.feed``."""

    netns: str
    fn: Callable[[FakeCorrelator, float], None]


class FakePipeline:
    """Applies ``Op`` items to the fake correlator; ignores everything else."""

    def __init__(self, correlator: FakeCorrelator) -> None:
        self.correlator = correlator
        self.fed: list[Any] = []

    def feed(self, item: Any, now: float) -> None:
        """Run an Op."""
        self.fed.append(item)
        if isinstance(item, Op):
            item.fn(self.correlator, now)


class QueueSource:
    """A source the test pushes items into; ``None`` ends it."""

    kind = "fake"

    def __init__(self) -> None:
        self.q: asyncio.Queue[Any] = asyncio.Queue()

    def push(self, fn: Callable[[FakeCorrelator, float], None], netns: str = "default") -> None:
        """Queue one Op."""
        self.q.put_nowait(Op(netns, fn))

    async def items(self) -> AsyncIterator[Any]:
        """Yield pushed items until None."""
        while True:
            item = await self.q.get()
            if item is None:
                return
            yield item


def test_fake_tunnel_matches_schema() -> None:
    """The fake's tunnel JSON is a valid schema-1 tunnel, so the unit tests exercise realistic shapes."""
    validate("tunnel.json", tunnel_doc("t1"))


def test_fake_correlator_contract() -> None:
    """Events get increasing seqs and dirty ids are taken once."""
    c = FakeCorrelator()
    c.add("a")
    c.add("b")
    assert [e.seq for e in c.drain_events()] == [1, 2]
    assert c.take_dirty() == {"a", "b"}
    assert c.take_dirty() == set()


class LoopTicks:
    """Counts the event loop's turns, so a test can see where a long job let other tasks run.

    A task increments ``n`` and yields with ``sleep(0)``, over and over: it runs once per loop
    iteration. ``record(fn)`` wraps a per-item function (e.g. a view's ``tunnel_json``) so that every
    call notes the tick it ran at; ``longest_run()`` is then the most items handled without the
    loop running anything else in between. This replaces wall-clock lag bounds, which flake on a
    loaded machine: it measures the mechanism (where the job yields), not how long a turn took.
    """

    def __init__(self) -> None:
        self.n = 0
        self.seen: list[int] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self.n += 1
            await asyncio.sleep(0)

    def start(self) -> None:
        """Start counting on the running loop."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop counting."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def record(self, fn: Callable[..., Any], into: list[int] | None = None) -> Callable[..., Any]:
        """``fn``, noting the current tick at each call (in ``seen``, or in ``into`` if given)."""
        seen = self.seen if into is None else into

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            seen.append(self.n)
            return fn(*args, **kwargs)
        return wrapped

    def longest_run(self, seen: list[int] | None = None) -> int:
        """The most consecutive recorded calls made at the same tick (0 if none were recorded)."""
        best = run = 0
        prev: int | None = None
        for t in self.seen if seen is None else seen:
            run = run + 1 if t == prev else 1
            prev = t
            best = max(best, run)
        return best


def no_write_backpressure(app: Any) -> None:
    """Make the app's responses never wait on the transport (a huge write-buffer high-water mark).

    aiohttp's ``write``/``send`` only yields to the loop while the transport is paused; with this
    hook every yield seen during a response comes from the handler itself.
    """
    async def hook(request: Any, response: Any) -> None:
        if request.transport is not None:
            request.transport.set_write_buffer_limits(high=1 << 30)

    app.on_response_prepare.append(hook)
