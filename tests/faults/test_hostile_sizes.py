"""Config files cannot exhaust memory (issue 15, point 10), and deep nesting is a clear error
(point 11): huge products, huge counts, YAML "billion laughs", recursive aliases, deep lists.

Every probe runs ``shoal`` in a subprocess whose address space is capped (RLIMIT_AS): a probe
that built the ensemble, or expanded the aliases, would die of MemoryError instead of printing
the refusal. No timing is measured.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from .helpers import cli, pwned, run_dirs

LIMIT_MB = 600  # `shoal plan` of a small file needs about 300 MB of address space


def refused(d: Path, *args: str) -> str:
    p = cli(d, *args, limit_mb=LIMIT_MB)
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    assert "Traceback" not in p.stderr and "MemoryError" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("shoal: "), p.stderr
    assert not run_dirs(d) and not pwned(d)
    return lines[0]


RANGES = """\
groups:
  grid:
    command: "echo {a} {b} {c}"
    sweep: {a: "range(1000)", b: "range(1000)", c: "range(1000)"}
"""
COUNT = """\
groups:
  copies:
    command: "echo hi"
    count: 1000000000
"""


@pytest.mark.parametrize("verb", ["plan", "run"])
def test_a_product_of_three_ranges_is_refused_with_its_size(verb: str, tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(RANGES)
    err = refused(tmp_path, verb, "c.yaml")
    assert "c.yaml:4: groups.grid.sweep: group 'grid': 1,000 × 1,000 × 1,000 values" in err
    assert "1,000,000,000 tasks, more than the limit of 10,000,000 tasks per run" in err
    assert "--max-tasks N" in err and "max_tasks: N" in err


@pytest.mark.parametrize("verb", ["plan", "run"])
def test_a_huge_count_is_refused_with_its_size(verb: str, tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(COUNT)
    err = refused(tmp_path, verb, "c.yaml")
    assert "c.yaml:4: groups.copies.count: group 'copies': count 1,000,000,000" in err
    assert "more than the limit of 10,000,000 tasks per run" in err


def test_the_limit_is_on_the_whole_run(tmp_path: Path) -> None:
    groups = "".join(f"  g{i}:\n    command: echo {i}\n    count: 4000000\n" for i in range(3))
    (tmp_path / "c.yaml").write_text("groups:\n" + groups)
    err = refused(tmp_path, "plan", "c.yaml")
    assert "c.yaml: the groups (g2 4,000,000, g1 4,000,000, g0 4,000,000) make 12,000,000" in err


def test_the_limit_can_be_changed(tmp_path: Path) -> None:
    text = "groups:\n  a:\n    command: echo {x}\n    sweep: {x: [1, 2, 3]}\n    count: 2\n"
    (tmp_path / "c.yaml").write_text("max_tasks: 5\n" + text)
    assert "make 6 tasks, more than the limit of 5 tasks" in refused(tmp_path, "plan", "c.yaml")
    assert "more than the limit of 4" in refused(tmp_path, "plan", "c.yaml", "--max-tasks", "4")
    for extra in (["--max-tasks", "6"], ["--set", "max_tasks=6"]):
        p = cli(tmp_path, "plan", "c.yaml", *extra)
        assert p.returncode == 0 and "6 tasks start with the run" in p.stdout, p.stderr
    assert "--max-tasks 0: give a positive number" in refused(
        tmp_path, "plan", "c.yaml", "--max-tasks", "0"
    )
    p = cli(tmp_path, "run", "c.yaml", "--max-tasks", "6")
    assert p.returncode == 0, p.stderr


def laughs(levels: int = 9) -> str:
    lines = ['  a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for prev, name in itertools.pairwise("abcdefghijklmnop"[:levels]):
        lines.append(f"  {name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    return "x-bomb:\n" + "\n".join(lines) + "\ngroups:\n  g:\n    command: echo hi\n"


@pytest.mark.parametrize("verb", ["plan", "run"])
def test_a_billion_laughs_is_refused_without_expanding_it(verb: str, tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(laughs())
    err = refused(tmp_path, verb, "c.yaml")
    assert "c.yaml:7: the aliases (*e and the ones before it) stand for more than 100,000" in err


def test_a_laugh_hidden_in_a_sweep_is_refused_too(tmp_path: Path) -> None:
    text = laughs(6).replace("command: echo hi\n", "command: echo {v}\n    sweep: {v: *f}\n")
    (tmp_path / "c.yaml").write_text(text)
    assert "stand for more than 100,000 values" in refused(tmp_path, "plan", "c.yaml")


def test_modest_anchors_still_work(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(
        "x-base: &base {cpus: 1, timeout: 60}\n"
        "x-vals: &vals [1, 2, 3]\n"
        "groups:\n"
        "  a: {<<: *base, command: 'echo {v}', sweep: {v: *vals}}\n"
        "  b: {<<: *base, command: 'echo {v}', sweep: {v: *vals}}\n"
    )
    p = cli(tmp_path, "plan", "c.yaml", limit_mb=LIMIT_MB)
    assert p.returncode == 0 and "6 tasks start with the run" in p.stdout, p.stderr


def test_a_recursive_alias_is_named(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("x-a: &a [1, [2, *a]]\ngroups:\n  g: {command: echo}\n")
    err = refused(tmp_path, "plan", "c.yaml")
    assert "c.yaml:1: the alias *a is inside the value of its own anchor &a" in err


BLOCK = "groups:\n  g:\n    command: echo\n    args:\n      a: OPEN CLOSE\n"


@pytest.mark.parametrize(
    ("name", "text", "where"),
    [
        ("c.yaml", "groups:\n  g:\n    command: echo\n    args: {a: OPEN CLOSE}\n", "c.yaml:4: "),
        ("c.yaml", BLOCK, "c.yaml:5: "),
        ("c.json", '{"groups": {"g": {"command": "echo", "args": {"a": OPEN CLOSE}}}}', "c.json: "),
        ("c.toml", "[groups.g]\ncommand = 'echo'\nargs = {a = OPEN CLOSE}\n", "c.toml: "),
    ],
)
@pytest.mark.parametrize("depth", [100, 100_000])
def test_deep_nesting_is_one_clear_line(
    name: str, text: str, where: str, depth: int, tmp_path: Path
) -> None:
    (tmp_path / name).write_text(text.replace("OPEN", "[" * depth).replace("CLOSE", "]" * depth))
    err = refused(tmp_path, "plan", name)
    assert err.startswith(f"shoal: {where}the data nests more than 64 levels deep"), err
    assert "config files may nest at most 64 levels" in err
    assert "alias" not in err and "Recursion" not in err
