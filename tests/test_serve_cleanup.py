"""``monitor serve``'s runner leaves the loop as it found it when the source fails at start."""

from __future__ import annotations

import asyncio
import signal

from monitor.commands.serve import serve
from monitor.serve.config import Settings


async def test_failed_start_removes_signal_handlers_and_tasks() -> None:
    """A netns that does not exist: exit 2 (a start-up error), no signal handler and no task left behind."""
    before = asyncio.all_tasks()
    code = await asyncio.wait_for(serve(Settings(port=0, netns=("monitor-test-no-such-netns",))), 30)
    assert code == 2
    loop = asyncio.get_running_loop()
    assert not loop.remove_signal_handler(signal.SIGTERM), "SIGTERM handler left installed"
    assert not loop.remove_signal_handler(signal.SIGINT), "SIGINT handler left installed"
    await asyncio.sleep(0)
    left = [t for t in asyncio.all_tasks() - before if not t.done() and t is not asyncio.current_task()]
    assert not left, f"tasks left running: {left}"
