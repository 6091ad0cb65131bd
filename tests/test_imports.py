"""Dependencies point one way: cli -> entry -> jobflow -> runtime/config/report ->
backends/store -> core -> spec.

The test reads every module under ``src/shoal`` with ``ast`` and checks every import of a shoal
module: at module level, inside functions, and under ``if TYPE_CHECKING:`` (a type-level
import couples two modules as much as any). ``shoal.errors`` and ``shoal.lazy`` may be imported
by every layer and import nothing of shoal. Nothing imports the cli. There is no circle of
imports anywhere, inside a package either.

One late import is allowed, and only this one (``ALLOWED``): ``Workflow.run()`` and
``Workflow.submit()`` in ``spec/workflow.py`` import ``shoal.runtime.api``, so that a user can
write ``wf.run()`` (DESIGN.md: the user's view). Any other upward import or circle fails here.

The core, the pure state machine, imports none of the modules that would let it touch the
world or the clock.
"""

from __future__ import annotations

import ast
import importlib.util
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
    "batch": 1,  # batch systems: scripts, commands and their parsers (a leaf: backends use it)
    "runtime": 3,
    "remote": 3,  # remote hosts: records, the SSH connection, checks
    "config": 3,
    "report": 3,  # pictures of runs, read from the store
    "jobflow": 4,  # jobflow Flows run through the runtime
    "entry": 5,  # shoal.run/submit: a Workflow to the runtime, a jobflow Flow to jobflow
    "cli": 6,
    "dashboard": 5,  # the web view; shoal dashboard (cli) serves it
    "mcp": 5,  # the MCP server for agents; shoal mcp (cli) serves it
}
FREE = {"errors", "lazy"}  # importable by everyone (lazy: the packages' PEP 562 helper)
FACADE = "__init__"  # shoal/__init__.py: the public API, on top of everything
IMPURE = {"subprocess", "sqlite3", "socket", "asyncio", "time", "random", "threading"}
# The one allowed import against the layers (see the module doc): (importer, imported).
ALLOWED = {("shoal.spec.workflow", "shoal.runtime.api")}


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
        for line, target in imports(module, everywhere=True):
            if (module, target) in ALLOWED:
                continue
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


def _layout() -> object:
    """scripts/layout.py, which measures the layout (its circle finder is used here)."""
    path = SRC.parent.parent / "scripts" / "layout.py"
    spec = importlib.util.spec_from_file_location("shoal_layout_script", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _module_of(target: str) -> str | None:
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


def test_no_import_circles_anywhere() -> None:
    """Every import counts (module level, inside functions, under TYPE_CHECKING), except the
    one allowed late import."""
    graph: dict[str, set[str]] = {}
    where_: dict[tuple[str, str], int] = {}
    for module in MODULES:
        edges = graph.setdefault(module, set())
        for line, target in imports(module, everywhere=True):
            t = _module_of(target)
            if t is None or t == module or t == "shoal" or (module, t) in ALLOWED:
                continue
            edges.add(t)
            where_.setdefault((module, t), line)
    found = _layout().circles(graph)  # type: ignore[attr-defined]
    msgs = []
    for circle in found:
        inside = set(circle)
        lines = [
            f"  {where(a, where_[(a, b)])}: {a} -> {b}"
            for a in circle
            for b in sorted(graph[a] & inside)
        ]
        msgs.append(f"circle of {len(circle)} modules:\n" + "\n".join(lines))
    assert not found, "import circles (cut them by owner: README, Layout):\n" + "\n".join(msgs)


def test_the_allowed_late_import_is_inside_a_function() -> None:
    """The one allowed upward import stays late: inside Workflow.run/submit (or under
    TYPE_CHECKING), never at module level, where it would load the runtime with the spec."""
    for module, target in ALLOWED:
        top = {t for _, t in imports(module)}
        assert target not in top, f"{module} imports {target} at module level"
        assert any(t == target for _, t in imports(module, everywhere=True)), (
            f"ALLOWED names {module} -> {target}, which is not imported any more: remove it"
        )
