"""Settings of ``monitor serve``: one frozen dataclass, loaded once at start-up.

Precedence, highest first: command-line flags > environment variables (``MONITOR_<NAME>``) > the TOML
config file (``--config`` or ``MONITOR_CONFIG``) > defaults. Every value is validated here, once, and a
bad one raises :class:`monitor.errors.ConfigError` with a message naming where it came from. Every
setting is documented in ``docs/configuration.md`` (a test checks that the two stay in sync).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from monitor.errors import ConfigError
from monitor.ike.advice import AdviceConfig
from monitor.probe.targets import ProberConfig

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8787
LOG_LEVELS = ("debug", "info", "warning", "error")
METRICS_TUNNELS = ("all", "unhealthy", "none")
ENV_PREFIX = "MONITOR_"


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Every setting of ``monitor serve`` (see ``docs/configuration.md``)."""

    #: Listen address. Anything but loopback requires ``token``.
    host: str = DEFAULT_HOST
    #: Listen port (0 picks a free one).
    port: int = DEFAULT_PORT
    #: Bearer token required on every API request when set. Never logged.
    token: str | None = field(default=None, repr=False)
    #: ``kernel``, ``simulate`` or ``replay:FILE.pcap``.
    source: str = "kernel"
    #: Kernel source: named network namespaces to watch (empty: the initial one only).
    netns: tuple[str, ...] = ()
    #: Kernel source: watch every namespace, following those that appear and disappear.
    all_netns: bool = False
    #: Kernel source: seconds between counter dumps.
    interval: float = 5.0
    #: Kernel source: join XFRMNLGRP_AEVENTS (per-packet async events; expensive).
    aevents: bool = False
    #: Kernel source: receive buffer in bytes of each namespace's event socket (SO_RCVBUFFORCE; the kernel
    #: doubles it). Smaller means overruns (ENOBUFS, then one resync dump) sooner under an event storm.
    rcvbuf: int = 32 << 20
    #: Replay and simulator: time acceleration (2.0 = twice as fast; 0 = as fast as possible for replay).
    speed: float = 1.0
    #: Simulator: number of tunnels.
    tunnels: int = 24
    #: Simulator: random seed.
    seed: int = 1
    #: Health events kept for ``?since=`` resume and ``/api/v1/events``.
    ring_size: int = 10_000
    #: Events queued per websocket client before they are dropped (with a ``gap`` message).
    client_queue: int = 1_000
    #: Pending coalesced tunnel updates per client before a fresh snapshot replaces them.
    client_max_updates: int = 10_000
    #: Seconds a client may make no progress before it is closed with code 4008.
    stall_timeout: float = 30.0
    #: Seconds a stalled client gets to take the close frame before its TCP connection is aborted.
    close_grace: float = 5.0
    #: Seconds between ``counters`` frames.
    counters_interval: float = 1.0
    #: Tunnels per snapshot chunk (the loop serves others between chunks).
    snapshot_chunk: int = 500
    #: Seconds: the longest an event broadcast to idle websocket clients is held back so that later events
    #: share its write (the hold is twice what the previous broadcast took to write, capped by this; 0: never).
    flush_tick: float = 0.01
    #: ``/healthz`` is degraded when a netns's last dump is older than this (default 3 x interval).
    stale_after: float | None = None
    #: Extra origins (``https://host:port``) allowed to open the websocket.
    allowed_origins: tuple[str, ...] = ()
    #: Extra names the monitor may be reached by (the ``Host`` header; loopback names and ``host`` are always
    #: allowed; a wildcard ``host`` with no list allows any name). Refuses DNS rebinding.
    allowed_hosts: tuple[str, ...] = ()
    #: Per-tunnel series on ``/metrics``: ``all``, ``unhealthy`` (only tunnels not up/rekeying) or ``none``;
    #: ``ipsec_tunnels{netns,state}`` counts every tunnel whatever this says.
    metrics_tunnels: str = "all"
    #: Log level: debug, info, warning, error.
    log_level: str = "info"
    #: TLS: a PEM certificate chain and its private key; both set = HTTPS and WSS (reloaded on SIGHUP).
    tls_cert: str | None = None
    tls_key: str | None = None
    #: Write every health event as one JSON line to this file (``-``: standard output) for log pipelines.
    events_log: str | None = None
    #: History store: ``auto`` (on for the kernel source, and for any source given a ``state_dir``), ``on``, ``off``.
    history: str = "auto"
    #: Directory of the history database (default: systemd's ``$STATE_DIRECTORY``, else
    #: ``/var/lib/ipsec-monitor`` as root, else ``~/.local/state/ipsec-monitor``).
    state_dir: str | None = None
    #: History retention: seconds kept (default 30 days) and the database's size cap in bytes (default 1 GiB).
    history_max_age: float = 30 * 86_400.0
    history_max_bytes: int = 1 << 30
    #: strongSwan's VICI socket for the IKE view: ``auto`` (kernel source: /var/run/charon.vici or /run/charon.vici,
    #: retried until charon is there; other sources: off), ``off``, or a socket path (any source).
    vici: str = "auto"
    #: libreswan's pluto control socket for the IKE view (names from ``whack --showstates``): ``auto`` (kernel
    #: source, ``vici`` auto, no charon socket but /run/pluto/pluto.ctl there at start), ``off``, or a path.
    whack: str = "auto"
    #: What the IKE view's configuration hints assume of the peer (TOML ``[ike]`` table only;
    #: ``monitor.ike.advice.AdviceConfig``: ``peer_idle_timeout``, ``peer_child_lifetime``, ``peer_ike_lifetime``).
    ike: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    #: Keyword arguments for the correlator's ``HealthConfig`` (TOML ``[health]`` table only).
    health: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    #: The keepalive prober's ``[prober]`` table (TOML only; off by default; ``monitor.probe.prober.ProberConfig``).
    prober: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def source_kind(self) -> str:
        """``kernel``, ``simulate`` or ``replay``."""
        return self.source.split(":", 1)[0]

    @property
    def replay_path(self) -> Path | None:
        """The capture file of a ``replay:FILE`` source, else None."""
        kind, _, rest = self.source.partition(":")
        return Path(rest) if kind == "replay" else None

    @property
    def history_enabled(self) -> bool:
        """Whether the history store is used (``auto``: for a live kernel, or wherever ``state_dir`` is set)."""
        if self.history == "auto":
            return self.source_kind == "kernel" or self.state_dir is not None
        return self.history == "on"

    @property
    def ike_netns(self) -> str | None:
        """The namespace whose tunnels the IKE view joins: charon sees one. A kernel source watching one named
        namespace (``--netns X``, charon running in X) joins X; otherwise ``default``; other sources: all."""
        if self.source_kind != "kernel":
            return None
        return self.netns[0] if len(self.netns) == 1 else "default"

    @property
    def vici_socket(self) -> tuple[bool, str | None]:
        """``(enabled, path)`` of the IKE view: path None = auto-detect."""
        if self.vici == "off":
            return False, None
        if self.vici == "auto":
            return self.source_kind == "kernel", None
        return True, self.vici

    @property
    def ike_source(self) -> tuple[str, str | None]:
        """``(kind, path)`` of the IKE view: ``("vici", socket or None = auto-detect)``, ``("whack", ctl)`` or
        ``("off", None)``. An explicit ``whack`` path wins; ``auto`` picks libreswan only on a kernel source
        with ``vici`` auto, no charon socket and pluto's control socket present."""
        from monitor.ike.client import find_socket  # noqa: PLC0415 - a path probe, no vici import
        from monitor.ike.whack import DEFAULT_CTL  # noqa: PLC0415

        if self.whack not in ("auto", "off"):
            return "whack", self.whack
        on, path = self.vici_socket
        if self.whack == "auto" and self.vici == "auto" and self.source_kind == "kernel" \
                and find_socket(None) is None and os.path.exists(DEFAULT_CTL):
            return "whack", DEFAULT_CTL
        return ("vici", path) if on else ("off", None)

    @property
    def effective_stale_after(self) -> float:
        """``stale_after``, or 3 x ``interval`` when unset."""
        return self.stale_after if self.stale_after is not None else 3.0 * self.interval


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
#: Settings whose values are never shown in a message.
SECRET_FIELDS = frozenset({"token"})

# Names accepted besides the fields themselves: read and turned into ``token``.
_EXTRA = ("token_file",)


def is_loopback(host: str) -> bool:
    """True when ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _validate(s: Settings) -> None:
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ConfigError(msg)

    need(0 <= s.port <= 65535, f"port must be 0..65535, got {s.port}")
    need(bool(s.host), "host must not be empty")
    kind, sep, rest = s.source.partition(":")
    need(
        (kind in ("kernel", "simulate") and not sep) or (kind == "replay" and bool(rest)),
        f"source must be 'kernel', 'simulate' or 'replay:FILE.pcap', got {s.source!r}",
    )
    need(s.interval > 0, f"interval must be > 0 seconds, got {s.interval}")
    need(s.rcvbuf >= 4096, f"rcvbuf must be >= 4096 bytes, got {s.rcvbuf}")
    need(s.speed >= 0, f"speed must be >= 0, got {s.speed}")
    need(s.tunnels >= 1, f"tunnels must be >= 1, got {s.tunnels}")
    for name in ("ring_size", "client_queue", "client_max_updates", "snapshot_chunk"):
        need(getattr(s, name) >= 1, f"{name} must be >= 1, got {getattr(s, name)}")
    for name in ("stall_timeout", "close_grace", "counters_interval"):
        need(getattr(s, name) > 0, f"{name} must be > 0 seconds, got {getattr(s, name)}")
    need(0 <= s.flush_tick <= 1, f"flush_tick must be 0..1 seconds, got {s.flush_tick}")
    need(s.stale_after is None or s.stale_after > 0, f"stale_after must be > 0, got {s.stale_after}")
    need(s.metrics_tunnels in METRICS_TUNNELS,
         f"metrics_tunnels must be one of {', '.join(METRICS_TUNNELS)}, got {s.metrics_tunnels!r}")
    need(s.log_level in LOG_LEVELS, f"log_level must be one of {', '.join(LOG_LEVELS)}, got {s.log_level!r}")
    need(s.token is None or (len(s.token) >= 8 and not any(c.isspace() for c in s.token)),
         "token must be at least 8 characters without whitespace")
    need(bool(s.vici.strip()), "vici must be 'auto', 'off' or a socket path")
    need(bool(s.whack.strip()), "whack must be 'auto', 'off' or pluto's control socket path")
    need(not (s.all_netns and s.netns), "netns and all_netns are mutually exclusive")
    need(s.history in ("auto", "on", "off"), f"history must be auto, on or off, got {s.history!r}")
    need(s.history_max_age > 0, f"history_max_age must be > 0 seconds, got {s.history_max_age}")
    need(s.history_max_bytes >= 1 << 20, f"history_max_bytes must be at least 1 MiB, got {s.history_max_bytes}")
    need((s.tls_cert is None) == (s.tls_key is None), "tls_cert and tls_key go together: set both or neither")
    for o in s.allowed_origins:
        need("://" in o, f"allowed_origins entries look like 'https://host:port', got {o!r}")
    ProberConfig.from_mapping(s.prober)  # raises ConfigError on a bad [prober] table
    AdviceConfig.from_mapping(s.ike)  # and on a bad [ike] table
    if s.token is None and not is_loopback(s.host):
        raise ConfigError(
            f"refusing to listen on {s.host!r} without a token: binding to a non-loopback address exposes "
            "tunnel data; set MONITOR_TOKEN (or --token-file / token_file in the config file)"
        )


def _convert(name: str, raw: Any, origin: str) -> Any:  # noqa: PLR0911 - one return per type
    """Convert ``raw`` (a string from the environment, or a TOML value) to the type of field ``name``."""
    ftype = str(_FIELDS[name].type)
    try:
        if ftype == "bool":
            if isinstance(raw, bool):
                return raw
            if isinstance(raw, str) and raw.strip().lower() in ("1", "true", "yes", "on"):
                return True
            if isinstance(raw, str) and raw.strip().lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError("expected a boolean (true/false, 1/0, yes/no)")
        if ftype == "int":
            if isinstance(raw, bool) or not isinstance(raw, int | str):
                raise ValueError("expected an integer")
            return int(raw)
        if ftype.startswith("float"):
            if raw is None or (ftype.endswith("None") and raw == ""):
                return None
            if isinstance(raw, bool) or not isinstance(raw, int | float | str):
                raise ValueError("expected a number")
            value = float(raw)
            if not math.isfinite(value):
                raise ValueError("expected a finite number")
            return value
        if ftype.startswith("tuple"):
            items = raw.split(",") if isinstance(raw, str) else raw
            if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
                raise ValueError("expected a list of strings")
            return tuple(i.strip() for i in items if i.strip())
        if ftype.startswith("Mapping"):
            if not isinstance(raw, Mapping):
                raise ValueError("expected a table")
            return MappingProxyType(dict(raw))
        if not isinstance(raw, str):
            raise ValueError("expected a string")
        return raw
    except ValueError as exc:
        shown = "(hidden)" if name in SECRET_FIELDS else repr(raw)  # a mistyped secret is still a secret
        raise ConfigError(f"{origin}: bad value {shown} for {name}: {exc}") from None


def _read_token_file(path: str, origin: str) -> str:
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{origin}: cannot read token file {path!r}: {exc.strerror}") from None
    if not token:
        raise ConfigError(f"{origin}: token file {path!r} is empty")
    return token


def _layer(values: Mapping[str, Any], origin: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, raw in values.items():
        name = key.replace("-", "_")
        if name == "token_file":
            out["token"] = _read_token_file(str(raw), origin)
        elif name in _FIELDS:
            out[name] = _convert(name, raw, origin)
        else:
            known = ", ".join(sorted([*_FIELDS, *_EXTRA]))
            raise ConfigError(f"{origin}: unknown setting {key!r} (known: {known})")
    return out


def read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse a config file into a ``{setting: value}`` layer (raises ConfigError)."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not UTF-8 text (byte {exc.start}); TOML files are UTF-8"
                          ) from None
    return _layer(data, f"config file {str(path)!r}")


def read_env(env: Mapping[str, str]) -> dict[str, Any]:
    """The ``MONITOR_*`` layer (``MONITOR_CONFIG`` is handled by :func:`load_settings`)."""
    layer: dict[str, Any] = {}
    for name in (*_FIELDS, *_EXTRA):
        if name in ("health", "prober", "ike"):
            continue
        var = ENV_PREFIX + name.upper()
        if var in env:
            layer.update(_layer({name: env[var]}, f"environment variable {var}"))
    return layer


def load_settings(
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config: str | os.PathLike[str] | None = None,
) -> Settings:
    """Merge defaults < TOML file < environment < flags into validated Settings.

    Args:
        flags: values given on the command line; ``None`` values mean "not given".
        env: the environment (default ``os.environ``).
        config: path of the TOML file; default ``$MONITOR_CONFIG`` (no file if neither).

    Raises:
        ConfigError: on an unreadable file, unknown key, bad type or invalid value.
    """
    env = os.environ if env is None else env
    path = config if config is not None else env.get(ENV_PREFIX + "CONFIG") or None
    merged: dict[str, Any] = {}
    if path is not None:
        merged.update(read_toml(path))
    merged.update(read_env(env))
    merged.update(_layer({k: v for k, v in (flags or {}).items() if v is not None}, "command line"))
    return Settings(**merged)
