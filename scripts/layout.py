"""Measure the layout of ``src/shoal``: import circles, module and function sizes, typing scope.

    python scripts/layout.py [--src src/shoal] [--json]

Circles count every import of a shoal module: at module level, inside functions and under
``if TYPE_CHECKING:``. The one allowed late import (``Workflow.run()`` -> the runtime, named in
``tests/test_imports.py``) is left out, as the test leaves it out. The numbers go into the
closing note of a layout change, before and after, measured with the same script.
"""

from __future__ import annotations

import argparse
import ast
import json
import statistics
import sys
import tomllib
from pathlib import Path

ALLOWED = {("shoal.spec.workflow", "shoal.runtime.api")}


def _modules(src: Path) -> dict[str, Path]:
    out = {}
    for path in sorted(src.rglob("*.py")):
        parts = list(path.relative_to(src.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _edges(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base if path.name == "__init__.py" else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                pkg = ".".join(base + ([node.module] if node.module else []))
            else:
                pkg = node.module or ""
            names = [f"{pkg}.{a.name}" if f"{pkg}.{a.name}" in mods else pkg for a in node.names]
        else:
            continue
        for target in names:
            while target and target not in mods:
                target = target.rpartition(".")[0]
            if target and target != name and target != "shoal" and (name, target) not in ALLOWED:
                out.add(target)
    return out


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            node, it = work[-1]
            nxt = next(it, None)
            if nxt is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        m = stack.pop()
                        on.discard(m)
                        comp.append(m)
                        if m == node:
                            break
                    if len(comp) > 1:
                        found.append(sorted(comp))
            elif nxt not in index:
                index[nxt] = low[nxt] = len(index)
                stack.append(nxt)
                on.add(nxt)
                work.append((nxt, iter(sorted(graph.get(nxt, ())))))
            elif nxt in on:
                low[node] = min(low[node], index[nxt])
    return found


def _functions(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            start = min([node.lineno] + [d.lineno for d in node.decorator_list])
            out.append((f"{path}:{node.lineno} {node.name}", (node.end_lineno or start) - start + 1))
    return out


def _attributes(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text())
    out = []
    for cls in [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]:
        names = {
            t.attr
            for n in ast.walk(cls)
            if isinstance(n, ast.Assign | ast.AnnAssign | ast.AugAssign)
            for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
            if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self"
        }
        slots = [
            n
            for n in cls.body
            if isinstance(n, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "__slots__" for t in n.targets)
        ]
        fields = {
            n.target.id
            for n in cls.body
            if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
        }
        count = len(names | fields)
        for s in slots:
            if isinstance(s.value, ast.Tuple | ast.List):
                count = max(count, len(s.value.elts))
        out.append((f"{path}:{cls.lineno} {cls.name}", count))
    return out


def _strict(src: Path, mods: dict[str, Path]) -> int:
    conf = tomllib.loads((src.parent.parent / "pyproject.toml").read_text())["tool"]["mypy"]
    roots = [src.parent.parent / f for f in conf.get("files", [])]
    return sum(1 for p in mods.values() if any(p == r or r in p.parents for r in roots))


def measure(src: Path) -> dict[str, object]:
    mods = _modules(src)
    graph = {m: _edges(m, p, mods) for m, p in mods.items()}
    found = circles(graph)
    lines = {m: len(p.read_text().splitlines()) for m, p in mods.items()}
    funcs = [f for p in mods.values() for f in _functions(p)]
    sizes = sorted(n for _, n in funcs)
    classes = sorted((c for p in mods.values() for c in _attributes(p)), key=lambda c: -c[1])
    return {
        "modules": len(mods),
        "lines": sum(lines.values()),
        "circles": len(found),
        "largest circle": max((len(c) for c in found), default=0),
        "circle members": found,
        "modules over 600 lines": sorted(m for m, n in lines.items() if n > 600),
        "functions over 80 lines": sorted(f"{w} ({n})" for w, n in funcs if n > 80),
        "function median": statistics.median(sizes),
        "function p90": sizes[int(0.9 * (len(sizes) - 1))],
        "modules under mypy --strict": f"{_strict(src, mods)} of {len(mods)}",
        "largest class by attributes": f"{classes[0][0]} ({classes[0][1]})" if classes else "",
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", default=str(Path(__file__).resolve().parent.parent / "src/shoal"))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    out = measure(Path(args.src).resolve())
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    for key, value in out.items():
        if isinstance(value, list):
            print(f"{key}: {len(value)}")
            for v in value:
                print(f"   {v}")
        else:
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
