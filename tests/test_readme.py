"""The README's first workflow runs as written and prints what its comment says."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs(tmp_path: Path) -> None:
    pytest.importorskip("ase", reason="the README example uses ASE (pip: shoal[examples])")
    code = re.search(r"```python\n(import shoal\nfrom ase.*?)```", README.read_text(), re.S)
    assert code, "the README has no Python example starting with 'import shoal'"
    script = tmp_path / "example.py"
    script.write_text(code.group(1))
    out = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    values = dict(re.findall(r"'(a0|B)': (?:np\.float64\()?([0-9.]+)", out.stdout))
    assert abs(float(values["a0"]) - 3.59) < 0.01, out.stdout
    assert abs(float(values["B"]) - 133) < 5, out.stdout
    assert list(tmp_path.glob("eos-*/shoal.db")), "no run directory in the working directory"


def test_readme_steering_example_runs(tmp_path: Path) -> None:
    code = re.search(
        r"```python\n(import math\n\nimport shoal\n# steering.*?)```", README.read_text(), re.S
    )
    assert code, "the README lost its steering example"
    script = tmp_path / "steer.py"
    script.write_text(code.group(1))
    out = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    printed = out.stdout.splitlines()
    expected = [
        line.split("# ")[1].strip()
        for line in code.group(1).splitlines()
        if line.strip().startswith("print(") and "# " in line
    ]
    assert printed == expected
