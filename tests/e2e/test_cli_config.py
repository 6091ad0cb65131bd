"""``shoal plan`` and ``shoal run`` on config files, through the real command line."""

from __future__ import annotations

import json
from pathlib import Path

from .test_cli import run_dirs, shoal_cli

SWEEP = """\
name: screen
resources: {cpus: 2}
groups:
  relax:
    command: "echo relax {element} {a}"
    sweep:
      element: [Cu, Ag]
      a: "linspace(3.5, 4.0, 3)"
    duration: 120
  report:
    command: "echo done"
    after: relax
"""


def test_plan_prints_counts_commands_resources_and_core_hours(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text(SWEEP)
    p = shoal_cli(tmp_path, "plan", "s.yaml")
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert "screen (shoal format, s.yaml): 7 tasks start with the run" in out
    assert "relax: 6 tasks, with the run, each 1 core, 120 s each (0.2 core-hours)" in out
    assert "echo relax Cu 3.5\n" in out and "echo relax Cu 3.75\n" in out
    assert "... (3 more)" in out
    assert "total: 0.2 core-hours (not counting report: no duration given)" in out
    assert not run_dirs(tmp_path)  # nothing ran
    j = shoal_cli(tmp_path, "plan", "s.yaml", "--json", "--set", "relax.cpus=2")
    data = json.loads(j.stdout)
    assert data["tasks"] == 7 and data["groups"][0]["each"] == "2 cores"
    assert data["groups"][0]["core_hours"] == 0.4


def test_run_a_config_file_with_overrides(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text(SWEEP)
    p = shoal_cli(tmp_path, "run", "s.yaml", "--set", "relax.sweep.element=[Au]")
    assert p.returncode == 0, p.stderr
    (d,) = run_dirs(tmp_path)
    tasks = shoal_cli(tmp_path, "tasks", str(d), "--json")
    rows = json.loads(tasks.stdout)
    assert len(rows) == 4 and all(r["state"] == "succeeded" for r in rows)


def test_bad_files_exit_2_with_file_line_and_key(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text(SWEEP.replace("    duration: 120", "    duraton: 120"))
    p = shoal_cli(tmp_path, "run", "s.yaml")
    assert p.returncode == 2
    assert "s.yaml:9: groups.relax.duraton: unknown key 'duraton'; did you mean 'duration'?" in (
        p.stderr
    )
    assert not run_dirs(tmp_path)
    (tmp_path / "s.yaml").write_text(SWEEP)
    q = shoal_cli(tmp_path, "plan", "s.yaml", "--set", "relax.cpus=64")
    assert q.returncode == 2
    assert "s.yaml: groups.relax.cpus (from --set relax.cpus=64): group 'relax' can never run" in (
        q.stderr
    )
    (tmp_path / "other.txt").write_text("x")
    r = shoal_cli(tmp_path, "run", "other.txt")
    assert r.returncode == 2 and "(.yaml, .yml, .json, .toml)" in r.stderr


def test_a_failed_task_exits_1(tmp_path: Path) -> None:
    (tmp_path / "f.json").write_text('{"groups": {"bad": {"command": "false"}}}')
    p = shoal_cli(tmp_path, "run", "f.json")
    assert p.returncode == 1


def test_plan_names_the_node_as_the_run_does(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text(SWEEP)
    p = shoal_cli(tmp_path, "plan", "s.yaml")
    assert p.returncode == 0, p.stderr
    assert shoal_cli(tmp_path, "run", "s.yaml").returncode == 0
    (d,) = run_dirs(tmp_path)
    (node,) = json.loads(shoal_cli(tmp_path, "status", str(d), "--json").stdout)["nodes"]
    assert f"on node {node['name']!r}: 2 cores" in p.stdout, (node, p.stdout)
