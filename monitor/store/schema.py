"""The history database: where it lives, its schema and migrations, and opening it safely.

One SQLite file (standard library ``sqlite3``) in WAL mode with ``synchronous=NORMAL``: a commit is durable
against a killed process (the WAL is in the file system), only a power cut may lose the last commits, and a
reader never blocks the writer. The schema version is SQLite's ``user_version``; ``MIGRATIONS[n]`` takes a
database from version ``n - 1`` to ``n``. A file from a newer monitor is refused, never rewritten.

Tables (instants are wall-clock seconds; totals past SQLite's signed 64 bits live only in the JSON blobs):

``events``     every health event: ``seq`` (primary key), ``ts``, ``type``, ``tunnel``, ``netns``, ``detail``
``intervals``  per tunnel the state intervals ``[start, end)`` (``end`` NULL: still open) and their reasons
``tunnels``    per tunnel its latest checkpoint (``monitor.health.checkpoint.TunnelCheckpoint`` as JSON),
               ``removed`` when it left the kernel
``rates``      per tunnel and 5 minutes (``minute``: the first) the byte totals at the last checkpoint in them
``meta``       key/value: ``last_seq``, ``seq_reserved`` (what a restart continues above)
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Mapping
from pathlib import Path

from monitor.errors import HistoryError

__all__ = ["DB_NAME", "SCHEMA_VERSION", "connect", "default_state_dir", "open_readonly"]

DB_NAME = "history.sqlite3"
SCHEMA_VERSION = 1
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "CREATE TABLE events (seq INTEGER PRIMARY KEY, ts REAL NOT NULL, type TEXT NOT NULL, tunnel TEXT,"
        " netns TEXT NOT NULL, detail BLOB NOT NULL)",
        "CREATE INDEX events_ts ON events (ts)",
        "CREATE INDEX events_tunnel ON events (tunnel, ts) WHERE tunnel IS NOT NULL",
        "CREATE TABLE intervals (id INTEGER PRIMARY KEY, tunnel TEXT NOT NULL, state TEXT NOT NULL,"
        " start REAL NOT NULL, end REAL, reasons TEXT NOT NULL)",
        "CREATE INDEX intervals_tunnel ON intervals (tunnel, start)",
        "CREATE INDEX intervals_open ON intervals (tunnel) WHERE end IS NULL",
        "CREATE INDEX intervals_end ON intervals (end)",
        "CREATE TABLE tunnels (id TEXT PRIMARY KEY, netns TEXT NOT NULL, checkpoint BLOB NOT NULL,"
        " updated REAL NOT NULL, removed REAL)",
        "CREATE TABLE rates (tunnel TEXT NOT NULL, minute INTEGER NOT NULL, bytes_in INTEGER NOT NULL,"
        " bytes_out INTEGER NOT NULL, PRIMARY KEY (tunnel, minute)) WITHOUT ROWID",
        "CREATE INDEX rates_minute ON rates (minute)",
    ),
}


def default_state_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$MONITOR_STATE_DIR``, else systemd's ``$STATE_DIRECTORY`` (its first entry), else
    ``/var/lib/ipsec-monitor`` as root, else ``$XDG_STATE_HOME/ipsec-monitor`` (``~/.local/state``)."""
    env = os.environ if env is None else env
    if env.get("MONITOR_STATE_DIR"):
        return Path(env["MONITOR_STATE_DIR"])
    if env.get("STATE_DIRECTORY"):
        return Path(env["STATE_DIRECTORY"].split(":")[0])
    if os.geteuid() == 0:
        return Path("/var/lib/ipsec-monitor")
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "ipsec-monitor"


def _pragmas(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA busy_timeout = 5000")
    conn.execute("PRAGMA foreign_keys = OFF")


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating if needed) the database at ``path`` for writing, migrated to ``SCHEMA_VERSION``.

    Raises ``HistoryError`` with a one-line reason: the directory cannot be created or written, the file
    is not a database (corrupt), or its schema is newer than this monitor's."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except (OSError, sqlite3.Error) as exc:
        raise HistoryError(f"cannot open the history database {path}: {exc}") from None
    try:
        _pragmas(conn)
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise HistoryError(f"the history database {path} has schema {version}, newer than this monitor's "
                               f"{SCHEMA_VERSION}: left untouched")
        if version == 0:
            # before the first table: free pages go back to the file system when retention deletes rows
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise HistoryError(f"the history database {path} cannot use WAL mode (journal_mode is {mode})")
        conn.execute("PRAGMA synchronous = NORMAL")
        for target in range(version + 1, SCHEMA_VERSION + 1):
            conn.execute("BEGIN IMMEDIATE")
            for stmt in MIGRATIONS[target]:
                conn.execute(stmt)
            conn.execute(f"PRAGMA user_version = {target}")
            conn.execute("COMMIT")
    except HistoryError:
        conn.close()
        raise
    except sqlite3.Error as exc:
        conn.close()
        raise HistoryError(f"cannot use the history database {path}: {exc}") from None
    return conn


def open_readonly(path: Path) -> sqlite3.Connection:
    """Open the database for queries only (``monitor report``, REST history): never creates or migrates."""
    if not path.exists():
        raise HistoryError(f"no history database at {path}")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False)
        _pragmas(conn)
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.Error as exc:
        raise HistoryError(f"cannot read the history database {path}: {exc}") from None
    if version != SCHEMA_VERSION:
        conn.close()
        raise HistoryError(f"the history database {path} has schema {version}, this monitor reads {SCHEMA_VERSION}")
    return conn
