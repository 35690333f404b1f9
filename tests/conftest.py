"""Shared pytest fixtures (keep small; append yours below)."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Callable, Iterator

import pytest

NETNS_DIR = "/var/run/netns"


def host_netns_skip_reason() -> str | None:
    """Why host-kernel netns tests cannot run here, or None if they can."""
    if os.geteuid() != 0:
        return "needs root (creates throwaway network namespaces)"
    if shutil.which("ip") is None:
        return "needs iproute2's `ip`"
    return None


def netns_exists(name: str) -> bool:
    """True if ``ip netns`` knows a namespace called ``name``."""
    return os.path.exists(os.path.join(NETNS_DIR, name))


@pytest.fixture
def make_netns() -> Iterator[Callable[[], str]]:
    """Factory of throwaway namespaces ``mon-test-<random>``; all are deleted at teardown."""
    reason = host_netns_skip_reason()
    if reason:
        pytest.skip(reason)
    made: list[str] = []

    def make() -> str:
        name = f"mon-test-{secrets.token_hex(4)}"
        subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
        made.append(name)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, timeout=30)
        return name

    yield make
    for name in made:
        if netns_exists(name):
            subprocess.run(["ip", "netns", "del", name], check=False, timeout=30)


@pytest.fixture
def netns(make_netns: Callable[[], str]) -> str:
    """One throwaway namespace (deleted at teardown)."""
    return make_netns()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """In CI every tier must really run: a test that skips (a missing tool, no root, no VM harness) fails
    there, with its skip reason, instead of passing silently. Locally, skips stay skips."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where every test tier must run: {reason}"


@pytest.fixture(autouse=True)
def _own_state_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test (and every ``monitor`` process it starts) gets a fresh, empty history directory: no test
    writes /var/lib/ipsec-monitor or sees another test's history. systemd's ``STATE_DIRECTORY`` (the
    default's first choice after ``MONITOR_STATE_DIR``) survives the tests' removal of ``MONITOR_*``."""
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path_factory.mktemp("state")))
