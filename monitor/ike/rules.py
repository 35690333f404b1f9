"""Why IKE fails: charon's log lines and updown events to reason codes (PURE; the rules are DATA).

charon sends a VICI ``log`` event for every log message of level 0 or 1 (``{group, level, thread,
ikesa-name, ikesa-uniqued, msg}``). The first rule of :data:`RULES` whose pattern matches ``msg`` names the
failure. Patterns quote charon 5.9's own messages (``src/libcharon/sa/ikev2/...``: ``"giving up after %d
retransmits"``, ``"received %N notify error"``, ``"tried %d shared key%s for '%Y' - '%Y', but MAC
mismatched"``, ``"traffic selectors %#R === %#R unacceptable"`` ...). Add a row to teach it a new failure.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from monitor.ike.records import text

__all__ = ["RULES", "IkeError", "Rule", "match_log", "updown_error"]


@dataclass(frozen=True, slots=True)
class Rule:
    """A regular expression over a log message, and what it means."""

    pattern: re.Pattern[str]
    code: str
    text: str


def _r(pattern: str, code: str, advice: str) -> Rule:
    return Rule(re.compile(pattern, re.IGNORECASE), code, advice)


_UNREACHABLE = ("The peer does not answer IKE (retransmits exhausted, or DPD found it dead): check that it is up, "
                "that UDP 500/4500 pass both ways, and the remote address.")
_AUTH = ("Authentication failed: the pre-shared key, certificate or identities (local_id/remote_id) do not match "
         "the peer's.")
_PROPOSAL = ("No proposal chosen: the IKE or ESP algorithms (proposals / esp_proposals: encryption, integrity, "
             "DH group, PFS) do not match the peer's.")
_TS = ("Traffic selectors unacceptable: the local/remote subnets (local_ts/remote_ts) do not match the peer's "
       "configuration.")

#: Log rules, first match wins. Codes also used by :func:`updown_error`.
RULES: tuple[Rule, ...] = (
    _r(r"giving up after \d+ retransmits", "peer_unreachable", _UNREACHABLE),
    _r(r"peer not responding", "peer_unreachable", _UNREACHABLE),
    _r(r"received AUTHENTICATION_FAILED notify", "auth_failed", _AUTH),
    _r(r"MAC mismatched", "auth_failed", _AUTH),
    _r(r"no shared key found", "auth_failed", _AUTH + " No pre-shared key is loaded for this pair."),
    _r(r"authentication of .* failed", "auth_failed", _AUTH),
    _r(r"constraint check failed|no trusted .* public key found", "auth_failed", _AUTH),
    _r(r"received NO_PROPOSAL_CHOSEN notify", "no_proposal", _PROPOSAL),
    _r(r"no acceptable proposal found|received proposals unacceptable|no matching proposal found, sending",
       "no_proposal", _PROPOSAL),
    _r(r"received TS_UNACCEPTABLE notify", "ts_unacceptable", _TS),
    _r(r"no acceptable traffic selectors found|traffic selectors .* unacceptable", "ts_unacceptable", _TS),
    _r(r"received INVALID_KE_PAYLOAD notify|already retried with DH group", "invalid_ke",
       "The peer wants another key exchange (DH) group (INVALID_KE_PAYLOAD): put the peer's group first in "
       "the proposals."),
    _r(r"received CHILD_SA_NOT_FOUND notify|peer didn't find the CHILD_SA", "child_sa_not_found",
       "The peer does not know the CHILD_SA we rekeyed or deleted (CHILD_SA_NOT_FOUND): the two sides' views "
       "diverged, e.g. after a restart of one of them."),
    _r(r"received DELETE for IKE_SA", "deleted_by_peer",
       "The peer deleted the IKE_SA (its restart, reconfiguration or idle timeout). If it never initiates, "
       "set dpd_action = restart and start_action = start here."),
    _r(r"received (\S+ )?notify error", "notify_error", "The peer answered with an error notify."),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class IkeError:
    """The last IKE failure of a connection."""

    conn: str | None  #: the IKE_SA config name (``ikesa-name``), when charon tells it
    code: str
    text: str
    message: str  #: charon's own log line
    ts: float  #: when it was seen (wall clock)

    def to_json(self) -> dict[str, Any]:
        """``{code, text, message, ts}``."""
        return {"code": self.code, "text": self.text, "message": self.message, "ts": self.ts}


def match_log(event: Mapping[str, Any], now: float, rules: tuple[Rule, ...] = RULES) -> IkeError | None:
    """The failure a ``log`` event reports, or None when no rule matches (most lines are progress)."""
    msg = text(event.get("msg")) or ""
    for rule in rules:
        if rule.pattern.search(msg):
            return IkeError(conn=text(event.get("ikesa-name")), code=rule.code, text=rule.text, message=msg, ts=now)
    return None


def updown_error(kind: str, event: Mapping[str, Any], now: float) -> IkeError | None:
    """An ``ike-updown`` down event of an IKE_SA that was never established (``state`` not ESTABLISHED at the
    time) says nothing more than the log did; an established one going down is recorded as ``ike_down``."""
    if kind != "ike-updown" or text(event.get("up")) in ("yes", ""):
        return None
    for name, body in event.items():
        if isinstance(body, Mapping):
            state = text(body.get("state")) or "?"
            return IkeError(conn=name, code="ike_down", message=f"IKE_SA {name} went down (state {state})",
                            text="The IKE_SA went down; charon's log line before it tells why.", ts=now)
    return None
