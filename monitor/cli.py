"""``monitor`` command line: a thin dispatcher over ``monitor.commands.*``.

Only the chosen subcommand's module is imported, so ``monitor record`` does not pay for aiohttp:
start-up time matters under QEMU emulation and in cron jobs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from types import ModuleType

from monitor import __version__

# Subcommand modules, in --help order. Each has add_parser(subparsers) and run(args) -> int.
COMMANDS = ("demo", "serve", "tail", "check", "report", "record", "replay", "decode")


def _load(names: Sequence[str]) -> list[ModuleType]:
    return [importlib.import_module(f"monitor.commands.{name}") for name in names]


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser with every subcommand, or with just ``only`` when it names one."""
    parser = argparse.ArgumentParser(prog="monitor", description="IPsec (XFRM) tunnel health monitor")
    parser.add_argument("--version", action="version", version=f"monitor {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in _load([only] if only in COMMANDS else COMMANDS):
        mod.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``monitor`` console script."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    first = next((a for a in args_list if not a.startswith("-")), None)
    parser = build_parser(first)
    args = parser.parse_args(args_list)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
