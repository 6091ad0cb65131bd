"""The whole package type-checks under mypy --strict, the tree passes ruff, and no function
grows past 80 lines."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("mypy") is None, reason="mypy is not installed (pip: shoal[test])")
def test_the_whole_package_passes_mypy_strict() -> None:
    # The files and the strict flag come from [tool.mypy] in pyproject.toml.
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    assert conf["files"] == ["src/shoal"] and conf["strict"], "mypy covers all of src/shoal"
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is not installed (pip: shoal[test])")
def test_ruff_lint_is_clean() -> None:
    out = subprocess.run(
        ["ruff", "check", "src", "tests", "bench", "examples"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_state_docs_are_generated_from_the_table() -> None:
    out = subprocess.run(
        [sys.executable, "scripts/docs.py", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr


LONGEST = 80  # lines, decorators included: split by meaning beyond this


def test_no_function_is_longer_than_80_lines() -> None:
    """Long functions hide several jobs; the layout step split every one (issue 16)."""
    long = []
    for path in sorted((ROOT / "src" / "shoal").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                start = min([node.lineno] + [d.lineno for d in node.decorator_list])
                size = (node.end_lineno or start) - start + 1
                if size > LONGEST:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({size})")
    assert not long, "functions over 80 lines:\n" + "\n".join(long)
