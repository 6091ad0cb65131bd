"""``shoal plan`` runs no code of the user's modules (issue 15, point 11): ``module:function``
is found (the file, and the name defined at its top level) without importing anything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .helpers import cli, pwned, run_dirs

MODULE = """\
from pathlib import Path
Path(__file__).with_name("PWNED-{tag}").write_text("imported")

def fit(points):
    return len(points)

try:
    import numpy as _np
except ImportError:
    def helper():
        return 0
"""

CONFIG = """\
groups:
  relax:
    command: "echo {{x}}"
    sweep: {{x: [1, 2]}}
  fit:
    function: "{function}"
    inputs: {{points: relax}}
"""


def project(d: Path, function: str) -> Path:
    (d / "tools.py").write_text(MODULE.format(tag="tools"))
    (d / "pkg").mkdir()
    (d / "pkg" / "__init__.py").write_text(MODULE.format(tag="pkg"))
    (d / "pkg" / "sub.py").write_text(MODULE.format(tag="sub"))
    (d / "star.py").write_text("from tools import *\n")
    (d / "c.yaml").write_text(CONFIG.format(function=function))
    return d


@pytest.mark.parametrize("function", ["tools:fit", "pkg.sub:fit", "pkg:helper", "star:fit"])
def test_plan_imports_nothing_and_says_so(function: str, tmp_path: Path) -> None:
    d = project(tmp_path, function)
    p = cli(d, "plan", "c.yaml")
    assert p.returncode == 0, p.stderr
    assert f"{function}(points=" not in p.stdout  # inputs are not shown as values
    assert "fit: 1 tasks" in p.stdout
    assert "note: functions were found without importing their modules" in p.stdout
    j = cli(d, "plan", "c.yaml", "--json")
    assert any("without importing" in n for n in json.loads(j.stdout)["notes"])
    assert not pwned(d), "shoal plan ran a module's top-level code"
    assert not run_dirs(d)


@pytest.mark.parametrize(
    ("function", "message"),
    [
        ("tools:fti", "c.yaml:6: groups.fit.function: module 'tools' has no 'fti'; did you mean"),
        ("pkg.sub:nope", "c.yaml:6: groups.fit.function: module 'pkg.sub' has no 'nope'"),
        ("no_such_mod:fit", "c.yaml:6: groups.fit.function: cannot find module 'no_such_mod'"),
        ("pkg.nothing:fit", "cannot find module 'pkg.nothing'"),
        ("fit", "write the function as 'package.module:callable'"),
    ],
)
def test_plan_still_checks_the_reference(function: str, message: str, tmp_path: Path) -> None:
    d = project(tmp_path, function)
    p = cli(d, "plan", "c.yaml")
    assert p.returncode == 2
    assert message in p.stderr
    assert not pwned(d)


def test_run_imports_as_before(tmp_path: Path) -> None:
    d = project(tmp_path, "tools:fit")
    p = cli(d, "run", "c.yaml")
    assert p.returncode == 0, p.stderr
    assert "fit: 2" in p.stdout
    assert [m.name for m in pwned(d)] == ["PWNED-tools"]  # run does import the module
