"""Secrets never reach a log line: a logging filter that redacts tokens from every record (I/O shell).

aiohttp logs what it cannot parse, and a request line over 8,190 bytes is logged whole by its server
logger, ``?token=`` included. Rather than chase each logger, the filter sits on the root handlers and
rewrites every record before it is formatted: the message, its arguments and any exception text. It
redacts ``token=…`` query values, ``Bearer …`` credentials and every configured token string itself.
"""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Iterable

REDACTED = "<redacted>"
_PATTERNS = (
    re.compile(r"(?i)(token=)[^&\s\"'<>]+"),
    re.compile(r"(?i)(bearer\s+)[^\s\"'<>]+"),
)


class SecretFilter(logging.Filter):
    """Rewrites each record so that no token survives (always lets the record through)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def redact(self, text: str) -> str:
        """``text`` with token values, bearer credentials and the configured secrets replaced."""
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        for pattern in _PATTERNS:
            text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a record whose args do not fit its format: keep what it has, redacted
            message = f"{record.msg} {record.args}"
        record.msg, record.args = self.redact(message), ()
        if record.exc_info:
            record.exc_text = self.redact("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))
            record.exc_info = None
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


def install(secrets: Iterable[str] = ()) -> SecretFilter:
    """Put one ``SecretFilter`` on every handler of the root logger (call after logging is configured)."""
    f = SecretFilter(secrets)
    for handler in logging.getLogger().handlers:
        handler.addFilter(f)
    return f
