"""Every exception the monitor raises on purpose, in one place.

    MonitorError
    ├── MalformedMessage        remote: the kernel (or a capture file) gave bytes we cannot parse
    ├── CaptureFormatError      remote: a file is not a netlink pcap we can read
    ├── SourceError             local environment: the kernel source cannot run
    │   ├── PermissionDenied        no CAP_NET_ADMIN in the target netns
    │   ├── XfrmUnsupported         the kernel has no NETLINK_XFRM (CONFIG_XFRM_USER unset)
    │   └── NetnsNotFound           a named network namespace does not exist
    ├── ConfigError             local: a bad setting, flag or config file
    └── HistoryError            local: the history store cannot be used (the monitor runs on without it)

Decoding raises ``MalformedMessage`` and nothing else, whatever the input bytes are.
"""

from __future__ import annotations


class MonitorError(Exception):
    """Base class for all errors raised by ``monitor``."""


class MalformedMessage(MonitorError, ValueError):
    """Netlink bytes that do not follow the kernel's layout (truncated, bad length, garbage)."""


class CaptureFormatError(MonitorError, ValueError):
    """A capture file that is not a pcap with link type NETLINK (253)."""


class SourceError(MonitorError):
    """The kernel event source cannot be started or has failed."""


class PermissionDenied(SourceError):
    """The process lacks CAP_NET_ADMIN, which every XFRM netlink operation needs (even GET)."""


class XfrmUnsupported(SourceError):
    """NETLINK_XFRM sockets cannot be opened: the kernel was built without CONFIG_XFRM_USER."""


class NetnsNotFound(SourceError):
    """A network namespace named on the command line or in the config does not exist."""


class ConfigError(MonitorError, ValueError):
    """An invalid setting, from flags, environment variables or the TOML config file."""


class HistoryError(MonitorError):
    """The history database cannot be opened or written: corrupt, from a newer schema, unwritable."""
