"""End to end through the real command line, in subprocesses, as a user would type it.

One project folder holds two runs made by ``shoal run``: ``fine.py`` (all succeed) first, then
``demo.py`` (one task raises, one is downstream of it, a command task succeeds). The queries
(``status``, ``tasks``, ``logs``) then read those run directories.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

TASKS = """
import shoal

@shoal.task
def square(x):
    return x * x

@shoal.task
def total(values):
    return sum(values)

@shoal.task
def boom(x):
    print("boom is about to fail")
    raise RuntimeError(f"boom failed on {x}")

hello = shoal.command("echo hello {who}")
"""

DEMO = (
    TASKS
    + """
with shoal.Workflow("demo") as wf:
    squares = [square(i) for i in range(3)]
    s = total([q.out for q in squares])
    b = boom(3)
    after_boom = total([b.out, s.out])
    greet = hello(who="world")

run = wf.run()
"""
)

FINE = (
    TASKS
    + """
with shoal.Workflow("fine") as wf:
    squares = [square(i) for i in range(4)]
    s = total([q.out for q in squares])
    greet = hello(who="shoal")

run = wf.run()
print("RESULT", run.result(s), run.result(greet)["stdout"].strip())
"""
)

CYCLE = (
    TASKS
    + """
with shoal.Workflow("loop") as wf:
    a = square.options(name="first")(1)
    b = square.options(name="second")(2).after(a)
    a.after(b)

wf.run()
"""
)


def shoal_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, NO_COLOR="1", COLUMNS="200", TERM="dumb")
    return subprocess.run(
        [sys.executable, "-m", "shoal.cli.main", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def run_dirs(where: Path) -> list[Path]:
    return sorted(p for p in where.iterdir() if (p / "shoal.db").exists())


@dataclass
class Project:
    dir: Path
    fine: subprocess.CompletedProcess[str]
    demo: subprocess.CompletedProcess[str]
    fine_run: Path
    demo_run: Path


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    d = tmp_path_factory.mktemp("project")
    (d / "fine.py").write_text(textwrap.dedent(FINE))
    (d / "demo.py").write_text(textwrap.dedent(DEMO))
    fine = shoal_cli(d, "run", "fine.py")
    demo = shoal_cli(d, "run", "demo.py")
    runs = run_dirs(d)
    fine_run = [p for p in runs if p.name.startswith("fine-")]
    demo_run = [p for p in runs if p.name.startswith("demo-")]
    assert len(fine_run) == 1 and len(demo_run) == 1, (runs, fine.stderr, demo.stderr)
    return Project(d, fine, demo, fine_run[0], demo_run[0])


def no_traceback(p: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in p.stdout + p.stderr, p.stdout + p.stderr


# -- shoal run ------------------------------------------------------------------------------------
def test_run_with_a_failure_exits_1_and_names_it(project: Project) -> None:
    p = project.demo
    out = p.stdout + p.stderr
    assert p.returncode == 1, out
    assert "boom" in out, out
    assert "RuntimeError: boom failed on 3" in out, out
    assert str(project.demo_run / "tasks") in out.replace("\n", ""), out  # where the logs are


def test_run_where_everything_succeeds_exits_0(project: Project) -> None:
    p = project.fine
    assert p.returncode == 0, p.stdout + p.stderr
    assert "RESULT 14 hello shoal" in p.stdout  # 0 + 1 + 4 + 9, and the command's output


def test_definition_error_exits_2_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "loop.py").write_text(textwrap.dedent(CYCLE))
    p = shoal_cli(tmp_path, "run", "loop.py")
    assert p.returncode == 2, p.stdout + p.stderr
    no_traceback(p)
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("shoal: "), lines[0]
    assert "cycle" in lines[0], lines[0]
    assert re.search(r"first \(#\d+\) -> second|second \(#\d+\) -> first", lines[0]), lines[0]
    assert run_dirs(tmp_path) == []


# -- shoal status ---------------------------------------------------------------------------------
def test_status_defaults_to_the_newest_run(project: Project) -> None:
    p = shoal_cli(project.dir, "status")
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert "run demo" in out and "fine" not in out.split("\n")[0], out
    assert "failed 1" in out and "succeeded 5" in out and "dep_failed 1" in out, out
    assert "tasks: 7" in out, out
    assert "boom" in out and "RuntimeError: boom failed on 3" in out, out


def test_status_of_a_named_run(project: Project) -> None:
    p = shoal_cli(project.dir, "status", str(project.fine_run))
    assert p.returncode == 0, p.stderr
    assert "run fine" in p.stdout and "succeeded 6" in p.stdout, p.stdout
    assert "failures" not in p.stdout


def test_status_json(project: Project) -> None:
    p = shoal_cli(project.dir, "status", "--json")
    assert p.returncode == 0, p.stderr
    st = json.loads(p.stdout)
    assert st["run"] == "demo"
    assert st["state"] == "failed"
    assert st["counts"] == {"succeeded": 5, "failed": 1, "dep_failed": 1}
    assert st["total"] == 7
    assert [f["name"] for f in st["failures"]] == ["boom"]
    assert "RuntimeError: boom failed on 3" in st["failures"][0]["reason"]


def test_status_of_a_missing_directory_exits_2(tmp_path: Path) -> None:
    p = shoal_cli(tmp_path, "status", "/nonexistent")
    assert p.returncode == 2, p.stdout + p.stderr
    assert "/nonexistent" in p.stderr
    no_traceback(p)


def test_status_where_there_is_no_run_exits_2(tmp_path: Path) -> None:
    p = shoal_cli(tmp_path, "status")
    assert p.returncode == 2, p.stdout + p.stderr
    assert "no run directories" in p.stderr
    no_traceback(p)


# -- shoal tasks ----------------------------------------------------------------------------------
def test_tasks_failed_json_lists_exactly_the_failure(project: Project) -> None:
    p = shoal_cli(project.dir, "tasks", "--state", "failed", "--json")
    assert p.returncode == 0, p.stderr
    rows = json.loads(p.stdout)
    assert [r["name"] for r in rows] == ["boom"]
    row = rows[0]
    assert row["state"] == "failed"
    assert len(row["attempts"]) == 1
    attempt = row["attempts"][0]
    assert attempt["outcome"] == "failed"
    assert attempt["kind"] == "error"
    assert "RuntimeError: boom failed on 3" in attempt["error"]


def test_tasks_text_lists_every_task(project: Project) -> None:
    p = shoal_cli(project.dir, "tasks")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 7, p.stdout
    assert sum("dep_failed" in line for line in lines) == 1


def test_tasks_unknown_state_exits_2_listing_states(project: Project) -> None:
    p = shoal_cli(project.dir, "tasks", "--state", "bogus")
    assert p.returncode == 2, p.stdout + p.stderr
    assert "bogus" in p.stderr
    for state in ("pending", "running", "succeeded", "failed", "dep_failed", "cancelled"):
        assert state in p.stderr, p.stderr
    no_traceback(p)


# -- shoal logs -----------------------------------------------------------------------------------
def test_logs_print_stdout_and_traceback(project: Project) -> None:
    p = shoal_cli(project.dir, "logs", "boom")
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert "boom is about to fail" in out, out
    assert "Traceback (most recent call last)" in out, out
    assert "RuntimeError: boom failed on 3" in out, out
    assert "failed" in out.splitlines()[0], out


def test_logs_of_a_command_task(project: Project) -> None:
    p = shoal_cli(project.dir, "logs", "echo")
    assert p.returncode == 0, p.stderr
    assert "hello world" in p.stdout, p.stdout


def test_logs_of_an_unknown_task_exits_2(project: Project) -> None:
    p = shoal_cli(project.dir, "logs", "999")
    assert p.returncode == 2, p.stdout + p.stderr
    assert "999" in p.stderr and "no task" in p.stderr, p.stderr
    no_traceback(p)


def test_logs_of_an_ambiguous_name_exits_2(project: Project) -> None:
    p = shoal_cli(project.dir, "logs", "square")
    assert p.returncode == 2, p.stdout + p.stderr
    assert "3 tasks are named 'square'" in p.stderr, p.stderr
    no_traceback(p)


# -- failure reports name only log folders that exist ---------------------------------------------
SILENT = """
import shoal

with shoal.Workflow("silent") as wf:
    shoal.command("false", name="quiet")()
    shoal.command("echo about to fail; false", name="loud")()

wf.run()
"""


def test_failure_reports_name_only_log_folders_that_exist(tmp_path: Path) -> None:
    (tmp_path / "silent.py").write_text(textwrap.dedent(SILENT))
    p = shoal_cli(tmp_path, "run", "silent.py")
    assert p.returncode == 1, p.stdout + p.stderr
    (rundir,) = run_dirs(tmp_path)
    st = json.loads(shoal_cli(tmp_path, "status", "--json").stdout)
    logs = {f["name"]: f["logs"] for f in st["failures"]}
    assert logs["quiet"] is None, "the silent command has no log folder"
    assert logs["loud"] is not None and Path(logs["loud"]).is_dir()
    text = shoal_cli(tmp_path, "status").stdout + p.stderr
    for line in re.findall(r"/tasks/\d+", text):
        assert (rundir / line.lstrip("/")).is_dir(), f"{line} is named but does not exist:\n{text}"
    assert "none (it printed nothing)" in shoal_cli(tmp_path, "status").stdout


def test_the_progress_bar_names_states_as_everywhere_else(project: Project) -> None:
    err = project.demo.stderr
    assert "failed 1 dep_failed 1" in err and "dep-failed" not in err, err
