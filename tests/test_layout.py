"""The folder tree is the pipeline: imports run one way, and the pure stages stay pure.

commands → serve → health → sources → wire, with probe beside serve (serve may use it, not the reverse).
``errors`` and the package root (``__version__``) are leaves anyone may import. Read from the source with
``ast``, so a new import that breaks the rule fails here before it becomes a habit.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "monitor"

# What each stage may import from inside monitor (its own stage is always allowed).
ALLOWED: dict[str, set[str]] = {
    "wire": set(),
    "sources": {"wire"},
    "health": {"wire", "sources"},
    "probe": {"wire", "sources", "health"},
    "store": {"wire", "sources", "health"},
    "ike": {"wire", "sources", "health"},
    "serve": {"wire", "sources", "health", "probe", "store", "ike"},
    "commands": {"wire", "sources", "health", "probe", "store", "ike", "serve", "render"},
    "render": set(),
    "cli": set(),
}
LEAVES = {"errors", ""}  # monitor.errors and `from monitor import __version__`

# The pure stages touch no socket, clock, thread or event loop. Address text conversion from `socket` is pure
# (inet_ntop/inet_pton and the family constants) and is the one thing allowed from it.
PURE_STAGES = ("wire", "health")
FORBIDDEN = {"asyncio", "aiohttp", "uvloop", "pyroute2", "socket", "select", "selectors", "time", "threading"}
PURE_FROM_SOCKET = {"AF_INET", "AF_INET6", "inet_ntop", "inet_pton"}
# health may read the source items (plain data) but no source with I/O behind it.
HEALTH_FROM_SOURCES = {"monitor.sources.items"}


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _stage(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("").parts
    return rel[0] if len(rel) > 1 else rel[0].removeprefix("__").removesuffix("__")


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, module, names) for every import in the file, relative imports resolved."""
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(("monitor", *path.relative_to(PACKAGE).parent.parts))
    found: list[tuple[int, str, list[str]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, module]) if module else ".".join(base)
            found.append((node.lineno, module, [a.name for a in node.names]))
    return found


def _target_stage(module: str, names: list[str]) -> str | None:
    """The stage a `monitor...` import lands in, or None for a non-monitor import."""
    parts = module.split(".")
    if parts[0] != "monitor":
        return None
    if len(parts) == 1:  # from monitor import x
        return names[0] if names and names[0] != "__version__" else ""
    return parts[1]


def test_every_module_belongs_to_a_known_stage() -> None:
    stages = {_stage(p) for p in _modules()}
    assert stages <= set(ALLOWED) | LEAVES | {"init", "main"}, stages - set(ALLOWED)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_run_one_way(path: Path) -> None:
    stage = _stage(path)
    allowed = ALLOWED.get(stage)
    if allowed is None:  # monitor/__init__, __main__, errors
        return
    bad = []
    for line, module, names in _imports(path):
        target = _target_stage(module, names)
        if target is None or target == stage or target in LEAVES or target in allowed:
            if stage == "health" and target == "sources" and module not in HEALTH_FROM_SOURCES:
                bad.append(f"line {line}: {module} (health may read only {sorted(HEALTH_FROM_SOURCES)})")
            continue
        bad.append(f"line {line}: {module} ({stage} may not import {target})")
    assert not bad, f"{path.relative_to(PACKAGE)}:\n" + "\n".join(bad)


@pytest.mark.parametrize(
    "path",
    [p for p in _modules() if _stage(p) in PURE_STAGES],
    ids=lambda p: str(p.relative_to(PACKAGE)),
)
def test_pure_stages_import_no_io(path: Path) -> None:
    bad = []
    for line, module, names in _imports(path):
        top = module.split(".")[0]
        if top == "socket" and names and set(names) <= PURE_FROM_SOCKET:
            continue
        if top in FORBIDDEN:
            bad.append(f"line {line}: {module} {names or ''}".rstrip())
    assert not bad, f"{path.relative_to(PACKAGE)} is in a pure stage but imports I/O:\n" + "\n".join(bad)


def test_pure_stages_load_no_io_module_transitively() -> None:
    """Importing every wire/ and health/ module in a fresh interpreter pulls in no event loop or netlink."""
    pure = [
        ".".join(("monitor", *p.relative_to(PACKAGE).with_suffix("").parts))
        for p in _modules()
        if _stage(p) in PURE_STAGES
    ]
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in pure)
        + "print(' '.join(sorted(m for m in ('asyncio', 'aiohttp', 'uvloop', 'pyroute2', 'threading')"
        " if m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"pure stages loaded: {out.stdout.strip()}"


def test_no_module_is_past_the_size_guide() -> None:
    """About 100-400 lines a module (style.md); a package face may be short."""
    long = {str(p.relative_to(PACKAGE)): n for p in _modules() if (n := len(p.read_text().splitlines())) > 420}
    assert not long, f"modules over the size guide: {long}"
