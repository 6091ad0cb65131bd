"""Dependencies point one way: cli -> runtime -> backends/store -> core -> spec.

The test reads every module under ``src/shoal`` with ``ast`` and checks its module-level
imports (statements at the top of the module, including those under a module-level ``if`` or
``try``; not imports inside functions, which are deliberate late bindings, and not imports under
``if TYPE_CHECKING:``, which never run). ``shoal.errors`` and ``shoal.lazy`` may be imported
by every layer and import nothing of shoal. Nothing imports the cli. The core, the pure state
machine, imports none of the modules that would let it touch the world or the clock; that check
covers every import statement in the core, inside functions too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import shoal

SRC = Path(shoal.__file__).resolve().parent

# Lower number = lower layer. A module may import its own package and lower layers only;
# backends and store share a layer but are independent of each other.
LAYERS = {
    "spec": 0,
    "core": 1,
    "backends": 2,
    "store": 2,
    "runtime": 3,
    "config": 3,
    "cli": 4,
    "dashboard": 4,
}
FREE = {"errors", "lazy"}  # importable by everyone (lazy: the packages' PEP 562 helper)
FACADE = "__init__"  # shoal/__init__.py: the public API, on top of everything
IMPURE = {"subprocess", "sqlite3", "socket", "asyncio", "time", "random", "threading"}


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _top_level(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _top_level(node.body)
            yield from _top_level(node.orelse)
        elif isinstance(node, ast.Try):
            for part in (node.body, node.orelse, node.finalbody):
                yield from _top_level(part)
            for handler in node.handlers:
                yield from _top_level(handler.body)
        elif isinstance(node, ast.With | ast.ClassDef):
            yield from _top_level(node.body)


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """Full names of what ``node`` imports (for ``from pkg import x``: ``pkg.x`` if that is a
    module of shoal, else ``pkg``)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if node.level:
        is_pkg = MODULES[module].name == "__init__.py"
        base = module.split(".")
        base = base if is_pkg else base[:-1]
        base = base[: len(base) - (node.level - 1)]
        pkg = ".".join(base + ([node.module] if node.module else []))
    else:
        pkg = node.module or ""
    out: list[str] = []
    for a in node.names:
        full = f"{pkg}.{a.name}"
        target = full if full in MODULES else pkg
        if target not in out:
            out.append(target)
    return out


def imports(module: str, everywhere: bool = False) -> list[tuple[int, str]]:
    tree = ast.parse(MODULES[module].read_text(), filename=str(MODULES[module]))
    nodes = (
        [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)]
        if everywhere
        else list(_top_level(tree.body))
    )
    return [(n.lineno, t) for n in nodes for t in _targets(module, n)]


def part(name: str) -> str:
    """The package of shoal a module belongs to: 'core', 'errors', '__init__' ..."""
    bits = name.split(".")
    return bits[1] if len(bits) > 1 else FACADE


def where(module: str, line: int) -> str:
    path = MODULES[module]
    root = SRC.parent.parent
    return f"{path.relative_to(root) if path.is_relative_to(root) else path}:{line}"


def test_the_walk_sees_the_modules() -> None:
    for expected in (
        "shoal",
        "shoal.errors",
        "shoal.core.machine",
        "shoal.spec.task",
        "shoal.cli.main",
        "shoal.runtime.api",
        "shoal.store.writer",
    ):
        assert expected in MODULES
    assert any(t == "shoal.core.stimuli" for _, t in imports("shoal.core.machine"))


def test_every_package_has_a_layer() -> None:
    """A new package of shoal must be placed in LAYERS deliberately."""
    unknown = sorted({part(m) for m in MODULES} - set(LAYERS) - FREE - {FACADE})
    assert not unknown, f"packages without a layer: {unknown}; add them to LAYERS"


def test_dependencies_point_down() -> None:
    bad = []
    for module in MODULES:
        mine = part(module)
        if mine not in LAYERS:
            continue
        for line, target in imports(module):
            if not (target == "shoal" or target.startswith("shoal.")):
                continue
            theirs = part(target)
            if theirs in FREE or theirs == mine:
                continue
            if theirs == FACADE:
                bad.append(
                    f"{where(module, line)}: {module} imports the shoal package itself "
                    "(its __init__ imports every layer); import from the module instead"
                )
            elif theirs not in LAYERS:
                continue  # reported by test_every_package_has_a_layer
            elif LAYERS[theirs] >= LAYERS[mine]:
                bad.append(
                    f"{where(module, line)}: {module} ({mine}) imports {target} "
                    f"({theirs}), which is not below it"
                )
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_errors_import_nothing_of_shoal() -> None:
    own = [
        t
        for _, t in imports("shoal.errors", everywhere=True)
        if t == "shoal" or t.startswith("shoal.")
    ]
    assert not own, f"shoal.errors must be importable by all, but imports {own}"


def test_nothing_imports_the_cli() -> None:
    bad = [
        f"{where(m, line)}: {m} imports {t}"
        for m in MODULES
        if part(m) != "cli"
        for line, t in imports(m, everywhere=True)
        if t == "shoal.cli" or t.startswith("shoal.cli.")
    ]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if part(m) == "core"))
def test_core_is_pure(module: str) -> None:
    bad = [
        f"{where(module, line)}: imports {t}"
        for line, t in imports(module, everywhere=True)
        if t.split(".")[0] in IMPURE
    ]
    assert not bad, "the core must not touch processes, files, sockets or clocks:\n" + "\n".join(
        bad
    )
