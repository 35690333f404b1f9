"""monitor.serve.config: precedence flags > env > TOML > defaults, validation with clear errors, docs in sync."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from monitor.cli import build_parser
from monitor.commands.serve import settings_from_args
from monitor.errors import ConfigError
from monitor.ike.advice import AdviceConfig
from monitor.serve.config import Settings, is_loopback, load_settings
from monitor.serve.web import CORRELATOR, create_app

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def test_defaults_listen_on_loopback_8787() -> None:
    """Without any input, serve listens on 127.0.0.1:8787 with the kernel source and no token."""
    s = load_settings({}, env={})
    assert (s.host, s.port, s.source, s.token) == ("127.0.0.1", 8787, "kernel", None)


def test_precedence_flags_over_env_over_file(tmp_path: Path) -> None:
    """A flag beats MONITOR_*, which beats the TOML file, which beats the default."""
    cfg = tmp_path / "m.toml"
    cfg.write_text('port = 9000\ninterval = 2.5\nsource = "simulate"\nring_size = 50\n')
    env = {"MONITOR_PORT": "9100", "MONITOR_INTERVAL": "3", "MONITOR_CONFIG": str(cfg)}
    s = load_settings({"port": 9200}, env=env)
    assert (s.port, s.interval, s.source, s.ring_size, s.client_queue) == (9200, 3.0, "simulate", 50, 1000)


def test_env_types_lists_and_bools() -> None:
    """Environment values are parsed into the field types: comma lists, booleans, floats."""
    s = load_settings({}, env={"MONITOR_NETNS": "red, blue", "MONITOR_AEVENTS": "yes",
                               "MONITOR_STALE_AFTER": "12"})
    assert (s.netns, s.aevents, s.stale_after) == (("red", "blue"), True, 12.0)


def test_rcvbuf_reaches_the_kernel_source() -> None:
    """MONITOR_RCVBUF sets the event socket's receive buffer of the kernel source serve builds (the storm VM
    scenario forces overruns with it); the default stays 32 MiB."""
    from monitor.serve.web import build_source

    src = build_source(load_settings({}, env={"MONITOR_RCVBUF": "262144"}))
    assert src.rcvbuf == 262144  # type: ignore[attr-defined]
    assert build_source(load_settings({}, env={})).rcvbuf == 32 << 20  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"MONITOR_PORT": "http"}, "MONITOR_PORT"),
        ({"MONITOR_PORT": "70000"}, "port must be 0..65535"),
        ({"MONITOR_AEVENTS": "maybe"}, "expected a boolean"),
        ({"MONITOR_SOURCE": "kernal"}, "source must be"),
        ({"MONITOR_SOURCE": "replay:"}, "source must be"),
        ({"MONITOR_INTERVAL": "0"}, "interval must be > 0"),
        ({"MONITOR_RCVBUF": "1024"}, "rcvbuf must be >= 4096"),
        ({"MONITOR_LOG_LEVEL": "loud"}, "log_level"),
        ({"MONITOR_TOKEN": "short"}, "at least 8"),
    ],
)
def test_bad_values_name_their_origin(env: dict[str, str], needle: str) -> None:
    """Each bad value raises ConfigError with a message saying what is wrong."""
    with pytest.raises(ConfigError, match=re.escape(needle)):
        load_settings({}, env=env)


def test_non_loopback_requires_token() -> None:
    """Binding 0.0.0.0 without a token is refused with a message naming MONITOR_TOKEN; with one it is fine."""
    with pytest.raises(ConfigError, match="MONITOR_TOKEN"):
        load_settings({"host": "0.0.0.0"}, env={})
    s = load_settings({"host": "0.0.0.0"}, env={"MONITOR_TOKEN": "s3cret-token"})
    assert s.token == "s3cret-token"
    assert "s3cret" not in repr(s)


def test_token_file(tmp_path: Path) -> None:
    """token_file is read and stripped; a missing file is a clear error."""
    f = tmp_path / "tok"
    f.write_text("abcdefgh12345\n")
    assert load_settings({"token_file": str(f)}, env={}).token == "abcdefgh12345"
    with pytest.raises(ConfigError, match="cannot read token file"):
        load_settings({"token_file": str(tmp_path / "nope")}, env={})


def test_toml_errors(tmp_path: Path) -> None:
    """Unknown keys, bad TOML and wrong types in the file are reported with the file name."""
    bad = tmp_path / "bad.toml"
    bad.write_text("prot = 1\n")
    with pytest.raises(ConfigError, match=r"unknown setting 'prot'"):
        load_settings({}, env={}, config=bad)
    bad.write_text("port = [\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings({}, env={}, config=bad)
    bad.write_text('port = "x"\n')
    with pytest.raises(ConfigError, match=r"bad\.toml"):
        load_settings({}, env={}, config=bad)
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings({}, env={}, config=tmp_path / "missing.toml")


def test_health_table_passed_through(tmp_path: Path) -> None:
    """The [health] table becomes a read-only mapping for the correlator's HealthConfig."""
    f = tmp_path / "h.toml"
    f.write_text("[health]\nidle_after = 120\n")
    s = load_settings({}, env={}, config=f)
    assert dict(s.health) == {"idle_after": 120}


def test_ike_table_checked_and_reaches_the_view(tmp_path: Path) -> None:
    """The [ike] table (what the configuration hints assume of the peer) is validated at load and given to
    the IKE view by create_app."""
    f = tmp_path / "i.toml"
    f.write_text("[ike]\npeer_idle_timeout = 10\n")
    s = load_settings({"vici": str(tmp_path / "vici"), "source": "simulate"}, env={}, config=f)
    assert dict(s.ike) == {"peer_idle_timeout": 10}
    app = create_app(s)
    assert app[CORRELATOR].advice == AdviceConfig(peer_idle_timeout=10.0)
    f.write_text("[ike]\npeer_idle_timeout = -1\n")
    with pytest.raises(ConfigError, match="peer_idle_timeout"):
        load_settings({}, env={}, config=f)


def test_loopback_detection() -> None:
    """127/8, ::1 and localhost are loopback; wildcard and public addresses are not."""
    assert all(map(is_loopback, ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "192.0.2.1", "example.org"]))


def test_cli_flags_reach_settings() -> None:
    """`monitor serve` flags override, and flags not given leave lower layers alone."""
    args = build_parser().parse_args(["serve", "--source", "replay:x.pcap", "--speed", "4", "--netns", "a",
                                      "--netns", "b", "--port", "0"])
    s = settings_from_args(args)
    assert (s.source, s.speed, s.netns, s.port, s.replay_path) == ("replay:x.pcap", 4.0, ("a", "b"), 0,
                                                                     Path("x.pcap"))


def test_every_setting_documented() -> None:
    """docs/configuration.md has a row for every Settings field with its MONITOR_ variable."""
    text = DOC.read_text()
    for f in dataclasses.fields(Settings):
        assert f"`{f.name}`" in text, f"{f.name} missing from docs/configuration.md"
        if f.name not in ("health", "prober", "ike"):  # TOML tables only
            assert f"MONITOR_{f.name.upper()}" in text, f"MONITOR_{f.name.upper()} missing"


def test_ike_view_joins_the_one_watched_namespace() -> None:
    """charon in a namespace, the monitor watching that namespace (``--netns X --vici SOCKET``): the IKE view
    joins X's tunnels; before, it joined only ``default`` and named nothing."""
    assert Settings(netns=("gw-x",)).ike_netns == "gw-x"
    assert Settings().ike_netns == "default"
    assert Settings(netns=("a", "b")).ike_netns == "default"
    assert Settings(source="simulate").ike_netns is None
