"""Scenario 3 (issue 3): the host kernel at scale, in a throwaway namespace.

20,000 larval SAs (ALLOCSPI), one dump decodes all of them; then half are deleted one by one
(DELSA) while the monitor's event loop is busy and its receive buffer is tiny, which forces
ENOBUFS; the resync dump must end with exactly the kernel's set.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from monitor.sources.items import Control, Datagram
from monitor.sources.kernel import KernelSource
from monitor.wire import xfrm as X
from monitor.wire.decode import decode_datagram
from monitor.wire.events import Done, SAAdded, SADeleted
from tests.source_helpers import Collector, RawXfrm

pytestmark = pytest.mark.hostkernel

N_SAS = 20_000
FIRST_SPI = 0x10000


class SAState:
    """A minimal reconciler: SPIs from dumps (NEWSA records between our GETSA and its DONE) and DELSA events.

    Events seen while a dump runs are applied to the dump's result too, as the pipeline does.
    """

    def __init__(self) -> None:
        self.spis: set[int] = set()
        self.building: set[int] | None = None
        self.deleted_during: set[int] = set()
        self.dump_seq: int | None = None
        self.dumps: list[tuple[int, int]] = []  # (item index of the request, SA count)
        self.delsa_events = 0
        self.req_ts = 0.0
        self.dump_seconds: list[float] = []  # request sent -> DONE received, per completed SA dump

    def feed(self, index: int, item: Datagram | Control) -> None:
        """Apply one source item."""
        if not isinstance(item, Datagram):
            return
        for ev in decode_datagram(item.data):
            if item.outgoing:
                if ev.nl.type == X.XFRM_MSG_GETSA:
                    self.dump_seq, self.building, self.deleted_during = ev.nl.seq, set(), set()
                    self.dumps.append((index, -1))
                    self.req_ts = item.ts
            elif isinstance(ev, SAAdded) and ev.nl.flags & X.NLM_F_MULTI and ev.nl.seq == self.dump_seq:
                assert self.building is not None
                self.building.add(ev.sa.spi)
            elif isinstance(ev, SADeleted):
                self.delsa_events += 1
                self.spis.discard(ev.id.spi)
                self.deleted_during.add(ev.id.spi)
            elif isinstance(ev, Done) and ev.nl.seq == self.dump_seq and self.building is not None:
                self.spis = self.building - self.deleted_during
                self.dumps[-1] = (self.dumps[-1][0], len(self.spis))
                self.dump_seconds.append(item.ts - self.req_ts)
                self.building = self.dump_seq = None


async def test_20k_larval_sas_dump_then_enobufs_resync(netns: str) -> None:
    """All 20k SAs decode from one dump; a mass delete overruns a tiny buffer; the resync equals the kernel."""
    t0 = time.monotonic()
    # larval states die after xfrm_acq_expires (30 s by default); keep them for the test
    subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-qw", "net.core.xfrm_acq_expires=3600"], check=True,
                   timeout=30)
    raw = RawXfrm(netns)
    try:
        spis = list(range(FIRST_SPI, FIRST_SPI + N_SAS))
        replies = raw.allocspi(spis)
        t_alloc = time.monotonic() - t0
        assert set(spis) == {e.sa.spi for e in replies if isinstance(e, SAAdded)}, "ALLOCSPI failed for some SPIs"

        state = SAState()
        # rcvbuf 4 KiB (the kernel makes it 8 KiB): a few DELSA notifications fill it
        source = KernelSource([netns], interval=0.5, rcvbuf=4096)
        async with Collector(source) as c:
            fed = 0

            def feed() -> None:
                nonlocal fed
                for i in range(fed, len(c.items)):
                    state.feed(i, c.items[i])
                fed = len(c.items)

            def first_dump_done() -> bool:
                feed()
                return bool(state.dumps) and state.dumps[0][1] >= 0

            await c.wait("first full dump", first_dump_done, timeout=30)
            t_dump = time.monotonic() - t0
            assert set(spis) == state.spis
            first_dump_records = [e for i in c.items[state.dumps[0][0]:] if isinstance(i, Datagram)
                                  for e in decode_datagram(i.data) if isinstance(e, SAAdded)]
            assert len(first_dump_records) >= N_SAS

            # delete every other SA while the event loop is blocked: the monitor cannot read
            gone = spis[::2]
            raw.delsa(gone)
            kernel = raw.dump_spis()
            assert kernel == set(spis) - set(gone)
            n_before = len(c.items)

            def resynced() -> bool:
                feed()
                enob = [i for i, it in enumerate(c.items) if isinstance(it, Control) and it.kind == "enobufs"]
                return bool(enob) and any(idx > enob[-1] and n >= 0 for idx, n in state.dumps)

            await c.wait("ENOBUFS and a complete dump after it", resynced, timeout=30)
            t_total = time.monotonic() - t0
            assert source.enobufs[netns] >= 1
            assert state.delsa_events < len(gone), "no notification was lost: ENOBUFS was not forced"
            assert state.spis == kernel, (len(state.spis), len(kernel))
            assert n_before < len(c.items)
    finally:
        raw.close()
    print(f"\nscale: ALLOCSPI {N_SAS} in {t_alloc:.1f} s; first dump ({state.dump_seconds[0] * 1e3:.0f} ms on the "
          f"wire, 8 KiB rcvbuf) done at {t_dump:.1f} s; "
          f"DELSA events seen {state.delsa_events}/{len(gone)}; ENOBUFS {source.enobufs[netns]}; "
          f"resynced at {t_total:.1f} s")
    assert t_total < 60
