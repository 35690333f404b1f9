"""``monitor.ike.rules``: charon 5.9's log lines (as VICI ``log`` events) to reason codes."""

from __future__ import annotations

import pytest

from monitor.ike.rules import RULES, match_log, updown_error
from tests.ike_samples import b

# Lines as charon prints them (format strings of src/libcharon/sa/ikev2/*.c filled in).
CASES = [
    ("giving up after 5 retransmits", "peer_unreachable"),
    ("establishing IKE_SA failed, peer not responding", "peer_unreachable"),
    ("received AUTHENTICATION_FAILED notify error", "auth_failed"),
    ("tried 1 shared key for '192.0.2.2' - '192.0.2.1', but MAC mismatched", "auth_failed"),
    ("no shared key found for '192.0.2.1'[192.0.2.1] - '192.0.2.2'[192.0.2.2]", "auth_failed"),
    ("received NO_PROPOSAL_CHOSEN notify error", "no_proposal"),
    ("no acceptable proposal found", "no_proposal"),
    ("received TS_UNACCEPTABLE notify, no CHILD_SA built", "ts_unacceptable"),
    ("traffic selectors 10.10.1.0/24 === 10.99.0.0/16 unacceptable", "ts_unacceptable"),
    ("received INVALID_KE_PAYLOAD notify error", "invalid_ke"),
    ("peer didn't find the CHILD_SA we tried to rekey", "child_sa_not_found"),
    ("received DELETE for IKE_SA gw[3]", "deleted_by_peer"),
    ("received INTERNAL_ADDRESS_FAILURE notify error", "notify_error"),
]


@pytest.mark.parametrize(("line", "code"), CASES)
def test_log_line_to_code(line: str, code: str) -> None:
    """Each failure line names its code, the connection from ``ikesa-name``, charon's line kept."""
    err = match_log(b(group="IKE", level=1, thread=12, ikesa_name="gw", ikesa_uniqued=3, msg=line), 5.0)
    assert err is not None
    assert (err.code, err.conn, err.message, err.ts) == (code, "gw", line, 5.0)
    assert err.text


@pytest.mark.parametrize("line", ["sending DPD request", "retransmit 1 of request with message ID 0",
                                  "IKE_SA gw[1] established between 192.0.2.1[a]...192.0.2.2[b]",
                                  "CHILD_SA net{1} established with SPIs c1a2b3c4_i 0d0e0f10_o"])
def test_progress_lines_are_no_failure(line: str) -> None:
    """Most of the log is progress."""
    assert match_log(b(group="IKE", level=1, msg=line), 0.0) is None


def test_rules_are_data() -> None:
    """Every rule carries advice text; codes are snake_case words."""
    assert all(r.text and r.code.replace("_", "").isalpha() for r in RULES)


def test_ike_down_event() -> None:
    """An ike-updown without ``up`` is a down event; an up one is nothing."""
    down = updown_error("ike-updown", {"gw": b(state="DELETING")}, 1.0)
    assert down is not None
    assert (down.conn, down.code) == ("gw", "ike_down")
    assert updown_error("ike-updown", {"up": b"yes", "gw": b(state="ESTABLISHED")}, 1.0) is None
    assert updown_error("child-updown", {"gw": b(state="ESTABLISHED")}, 1.0) is None
