"""The VM tier's monitor assertions, re-run in the fast tier on a committed, key-free VM run.

``tests/data/vm-run-2026-11-26/`` is the artifact folder of one real run of ``tests/vm/scenario.sh``
(Debian 6.1 kernel under QEMU, two strongSwan 5.9.8 gateways, rekeys, the prober phase, a peer death),
as the VM fixture keeps it: ``monitor-a.pcap`` is what ``monitor record`` wrote inside the guest,
``nlmon-a.pcap`` the key-scrubbed nlmon capture of the same netns, and the ``ip``/``swanctl`` references
were taken in the same run with their keys redacted. Every change to the decoder or the correlator is thus
checked against real kernel data on every test run, not only when the VM boots.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.wire.pcap import read_pcap
from monitor.wire.scrub import scrub_keys
from tests.vm.keys import hand_keys
from tests.vm.test_monitor_vm import (  # noqa: F401 - fixtures and tests re-collected here on the recorded run
    dump_point,
    run,
    test_dump_point_matches_swanctl_and_policies,
    test_dump_point_sas_equal_kernel,
    test_every_sa_add_delete_expire_seen,
    test_peer_death_seen,
    test_prober_keeps_idle_tunnel_up,
    test_rekeys_counted,
)

RUN = Path(__file__).parent / "data" / "vm-run-2026-11-26"


@pytest.fixture(scope="module")
def vm_ok() -> Path:
    """The committed run folder stands in for a fresh VM run."""
    assert (RUN / "done").read_text().strip() == "ok"
    return RUN


@pytest.mark.parametrize("name", ["monitor-a.pcap", "nlmon-a.pcap"])
def test_committed_captures_key_fields_are_zero(name: str) -> None:
    """Walked by hand (not with ``scrub_keys``): the captures carry SA messages with key fields, and every
    byte of every key field is zero."""
    keys = [k for r in read_pcap(RUN / name) for k in hand_keys(r.data)]
    assert len(keys) > 10, f"only {len(keys)} key fields found in {name}"
    assert sum(len(k) for k in keys) > 100
    nonzero = [i for i, k in enumerate(keys) if any(k)]
    assert nonzero == [], f"{len(nonzero)} of {len(keys)} key fields in {name} hold non-zero bytes"


@pytest.mark.parametrize("name", ["monitor-a.pcap", "nlmon-a.pcap"])
def test_committed_captures_hold_no_key_bytes(name: str) -> None:
    """Every record of the committed captures is already scrubbed: scrubbing it again changes nothing,
    so no key byte is in the file (the run's own key check, keys-check.txt, also found none)."""
    records = list(read_pcap(RUN / name))
    assert len(records) > 100
    dirty = [i for i, r in enumerate(records) if scrub_keys(r.data) != r.data]
    assert dirty == [], f"records with key bytes in {name}: {dirty[:10]}"
    assert (RUN / "keys-check.txt").read_text().splitlines()[-1] == "found 0"


def test_monitor_check_on_the_real_run_reports_the_dead_peer() -> None:
    """`monitor check` replaying the guest's recording ends CRITICAL with the strongSwan tunnel down because its
    SAs were deleted: the tunnel (reqid and addresses from the run's own `ip -s xfrm state`) is the one reported,
    and the run's after-death reference shows no SA left."""
    import json
    import os
    import subprocess
    import sys

    from tests.vm.references import parse_ip_xfrm_state

    kernel = parse_ip_xfrm_state((RUN / "xfrm-state-a.txt").read_text())
    assert (RUN / "after-peer-death-a.txt").read_text().strip() == ""
    (reqid,) = {sa.reqid for sa in kernel}
    ends = {frozenset((sa.src, sa.dst)) for sa in kernel}
    assert len(ends) == 1
    p = subprocess.run([sys.executable, "-m", "monitor", "check", "--source", f"replay:{RUN / 'monitor-a.pcap'}",
                        "--json"], capture_output=True, text=True, timeout=120, check=False,
                       env={**os.environ, "NO_COLOR": "1"})
    assert p.returncode == 2, p.stdout + p.stderr
    doc = json.loads(p.stdout)
    [tunnel] = doc["tunnels"]
    assert (tunnel["reqid"], frozenset((tunnel["local"], tunnel["remote"])), tunnel["state"]) == (
        reqid, next(iter(ends)), "down")
    assert [r["code"] for r in tunnel["reasons"]] == ["sa_deleted"]
