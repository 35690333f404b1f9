"""A receive error other than ENOBUFS is reported as a source_error note; nothing escapes into the loop."""

from __future__ import annotations

import asyncio
import contextlib
import errno
from typing import Any

from monitor.sources.items import Control, Datagram
from monitor.sources.kernel import KernelSource
from tests.test_source import FakeKernel


class ErrOnce(FakeKernel):
    """A fake kernel whose next read fails once with EIO (a pending socket error)."""

    fail_next = False

    def recv_into(self, buf: bytearray) -> int:
        """Fail once when armed, else behave like the fake kernel."""
        if self.fail_next:
            self.fail_next = False
            self.a.recv(65536)  # the wake-up byte
            raise OSError(errno.EIO, "Input/output error")
        return super().recv_into(buf)


async def test_recv_error_is_a_note_and_reading_goes_on() -> None:
    """The error becomes Control('source_error') naming it; the loop's exception handler sees nothing, and
    the next dump's replies are still read."""
    loop = asyncio.get_running_loop()
    escaped: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, ctx: escaped.append(ctx))
    fake = ErrOnce()
    src = KernelSource(interval=0.05, socket_factory=lambda name: fake)  # type: ignore[arg-type,return-value]
    seen: list[Any] = []
    try:
        async with contextlib.aclosing(src.items()) as gen, asyncio.timeout(10):
            async for item in gen:
                seen.append(item)
                if len(seen) == 3:
                    fake.fail_next = True
                    fake.b.send(b"x")
                errs = [i for i in seen if isinstance(i, Control) and i.kind == "source_error"]
                if errs and sum(1 for i in seen[seen.index(errs[0]):] if isinstance(i, Datagram)
                                and not i.outgoing) >= 2:
                    break
    finally:
        loop.set_exception_handler(None)
    assert escaped == []
    errs = [i for i in seen if isinstance(i, Control) and i.kind == "source_error"]
    assert len(errs) == 1
    assert "Input/output error" in errs[0].message
