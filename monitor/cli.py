"""``monitor`` command line: a thin dispatcher over ``monitor.commands.*``."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from types import ModuleType

from monitor import __version__

# Subcommand modules, in --help order. Each has add_parser(subparsers) and run(args) -> int.
COMMANDS = ("demo", "serve", "tail", "check", "record", "replay", "decode")


def _load() -> list[ModuleType]:
    mods = []
    for name in COMMANDS:
        try:
            mods.append(importlib.import_module(f"monitor.commands.{name}"))
        except ModuleNotFoundError as exc:
            if exc.name != f"monitor.commands.{name}":
                raise
    return mods


def build_parser() -> argparse.ArgumentParser:
    """The full parser with every available subcommand."""
    parser = argparse.ArgumentParser(prog="monitor", description="IPsec (XFRM) tunnel health monitor")
    parser.add_argument("--version", action="version", version=f"monitor {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in _load():
        mod.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``monitor`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
