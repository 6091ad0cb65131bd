"""The core and spec type-check under mypy --strict, and the whole tree passes ruff."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("mypy") is None, reason="mypy is not installed (pip: shoal[test])")
def test_core_and_spec_pass_mypy_strict() -> None:
    # The files and the strict flag come from [tool.mypy] in pyproject.toml.
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
