"""Differential property of the SA fast path (``monitor.wire.sa_layout``'s compiled attribute readers).

A compiled reader is chosen by attribute block length and nlattr headers only; its field values are
read from the new message. So a message whose block has the same length as a compiled one but
different bytes anywhere (headers, key lengths, ESN bitmap length, payloads) must decode exactly as
the plain attribute walk decodes it: the same events, or ``MalformedMessage`` for both.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.errors import MalformedMessage
from monitor.wire import sa_layout
from monitor.wire.decode import decode_datagram
from monitor.wire.events import Event
from tests import golden as G

_SA_GOLDEN = ["newsa_gcm", "newsa_cbc", "updsa_ipv6_extras", "delsa_larval", "expire_soft"]


def _decode(data: bytes) -> list[Event] | str:
    try:
        return decode_datagram(data)
    except MalformedMessage:
        return "MalformedMessage"


@pytest.fixture
def layouts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Private layout tables for the test (the module's are process-wide)."""
    monkeypatch.setattr(sa_layout, "LAYOUTS", {})
    monkeypatch.setattr(sa_layout, "layouts_count", [0])


def _walk_only(data: bytes) -> list[Event] | str:
    """Decode with no compiled layout and none compiled (the reference)."""
    saved, count = sa_layout.LAYOUTS, sa_layout.layouts_count
    sa_layout.LAYOUTS, sa_layout.layouts_count = {}, [sa_layout.LAYOUTS_MAX]
    try:
        return _decode(data)
    finally:
        sa_layout.LAYOUTS, sa_layout.layouts_count = saved, count


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.sampled_from(_SA_GOLDEN),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4),
)
def test_compiled_reader_decodes_like_the_walk(layouts: None, name: str, flips: list[tuple[int, int]]) -> None:
    """Compile the layout from a golden SA message, then decode a byte-mutated copy (same length):
    the result equals the attribute walk's, event for event or MalformedMessage for both."""
    sa_layout.LAYOUTS.clear()
    sa_layout.layouts_count[0] = 0
    base = G.GOLDEN[name]()[0]
    assert _decode(base) != "MalformedMessage"
    assert sa_layout.LAYOUTS, "the golden message should have compiled a layout"
    mutated = bytearray(base)
    for pos, value in flips:
        mutated[16 + pos % (len(base) - 16)] = value  # keep the nlmsghdr: the SA and its attributes vary
    data = bytes(mutated)
    assert _decode(data) == _walk_only(data)


def test_compiled_layouts_are_bounded(layouts: None) -> None:
    """Every new attribute shape compiles a reader until _LAYOUTS_MAX; after that new shapes are only
    walked (no more exec, no table growth) and still decode correctly."""
    base = G._sa4_info()
    total = sa_layout.LAYOUTS_MAX + 50
    for i in range(total):
        filler = G.nla(99, bytes(4 * i))  # an attribute the SA ignores; each length is a new shape
        data = G.nlmsg(G.NEWSA, base + filler + G.nla(G.IF_ID, i.to_bytes(4, "little")))
        ev = decode_datagram(data)[0]
        assert ev.sa.if_id == i  # type: ignore[union-attr]
    assert sum(len(v) for v in sa_layout.LAYOUTS.values()) == sa_layout.LAYOUTS_MAX
    assert sa_layout.layouts_count[0] == sa_layout.LAYOUTS_MAX
