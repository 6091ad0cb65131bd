"""The README's first workflow runs as written and prints what its comment says."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def run_block(start: str, tmp_path: Path) -> tuple[str, str]:
    """Run the README's Python block that begins with ``start``: (its code, what it printed)."""
    code = re.search(rf"```python\n({re.escape(start)}.*?)```", README.read_text(), re.S)
    assert code, f"the README has no Python example starting with {start!r}"
    script = tmp_path / "example.py"
    script.write_text(code.group(1))
    out = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return code.group(1), out.stdout


def test_readme_example_runs(tmp_path: Path) -> None:
    pytest.importorskip("ase", reason="the README example uses ASE (pip: shoal[examples])")
    _, printed = run_block("import shoal\nfrom ase", tmp_path)
    values = dict(re.findall(r"'(a0|B)': (?:np\.float64\()?([0-9.]+)", printed))
    assert abs(float(values["a0"]) - 3.59) < 0.01, printed
    assert abs(float(values["B"]) - 133) < 5, printed
    assert list(tmp_path.glob("eos-*/shoal.db")), "no run directory in the working directory"


def test_readme_steering_example_runs(tmp_path: Path) -> None:
    code, printed = run_block("import math\n\nimport shoal\n# steering", tmp_path)
    expected = [
        line.split("# ")[1].strip()
        for line in code.splitlines()
        if line.strip().startswith("print(") and "# " in line
    ]
    assert printed.splitlines() == expected


def test_readme_config_example_is_what_shoal_plan_says(tmp_path: Path) -> None:
    from shoal.config import load

    block = re.search(r"```yaml\n(resources:.*?)```", README.read_text(), re.S)
    assert block, "the README has no YAML example starting with resources:"
    (tmp_path / "sweep.yaml").write_text(block.group(1))
    (tmp_path / "analysis.py").write_text("def melting_point(runs):\n    return len(runs)\n")
    plan = load(tmp_path / "sweep.yaml").plan()
    md, analyse = plan["groups"]
    assert md["tasks"] == 52  # as its comment says
    assert md["first"][0] == "lmp -in in.melt -var T 300.0 -var seed 0"
    assert md["each"] == "4 cores" and md["core_hours"] == 52 * 900 * 4 / 3600
    assert analyse["after"] == ["md"]
    assert "retry with timeout x2, up to 2 attempts" in plan["rules"][0]


def test_readme_jobflow_example_runs(tmp_path: Path) -> None:
    pytest.importorskip("jobflow", reason="the jobflow example needs jobflow (shoal[jobflow])")
    _, printed = run_block("# jobflow example", tmp_path)
    assert printed.split() == ["3", "0"]
