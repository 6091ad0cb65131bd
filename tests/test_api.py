"""The public API: what ``shoal`` exports, its errors, and what a run leaves on disk.

Most tests share one run (module fixture) of a small graph with two failures, so the whole file
stays fast: ``explode`` raises, ``quit3`` exits 3; tasks downstream of them never run, the
independent branches succeed.
"""

from __future__ import annotations

import inspect
import json
import os
import pickle
import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import shoal
import shoal.errors
from shoal import DependencyFailed, TaskFailed, Workflow
from shoal.core.states import TERMINAL, TRANSITIONS, State
from shoal.store import Reader

PUBLIC = [
    "BackendError",
    "Controller",
    "DefinitionError",
    "DependencyFailed",
    "Event",
    "Ref",
    "RequestRefused",
    "ResourceError",
    "Response",
    "Run",
    "RunInterrupted",
    "ShoalError",
    "StoreError",
    "Strategy",
    "TASK_DIR",
    "Task",
    "TaskFailed",
    "TaskSkipped",
    "Workflow",
    "attach",
    "command",
    "current",
    "resume",
    "run",
    "submit",
    "task",
]


def test_public_api_is_pinned() -> None:
    """Changing the public API must be deliberate: update this list when you mean to."""
    assert sorted(shoal.__all__) == PUBLIC
    assert len(set(shoal.__all__)) == len(shoal.__all__), "a name is exported twice"
    for name in shoal.__all__:
        assert hasattr(shoal, name), f"shoal.__all__ names {name!r}, which shoal lacks"


# -- errors ---------------------------------------------------------------------------------------
ERRORS: list[BaseException] = [
    shoal.ShoalError("something went wrong"),
    shoal.DefinitionError("the workflow has a dependency cycle: a -> b -> a"),
    shoal.ResourceError("task 'big' can never start: it asks for 64 cores"),
    shoal.StoreError("no shoal database at /x/shoal.db"),
    shoal.BackendError("worker lost"),
    TaskFailed(
        "task 'relax' (#3) failed: exit 2",
        task=3,
        name="relax",
        kind="exit",
        traceback='Traceback (most recent call last):\n  File "x.py"\nValueError: no',
        exit_code=2,
    ),
    DependencyFailed(
        "task 'fit' (#4) did not run because task 'relax' (#3) failed",
        task=4,
        name="fit",
        kind="dependency",
        root=3,
        root_name="relax",
    ),
    shoal.TaskSkipped("task 'md' (#5) did not run: task 2 stopped its children", task=5, name="md"),
    shoal.RunInterrupted(
        "task 'md' (#5) has no result: run 'x' was interrupted", task=5, name="md", rundir="/r"
    ),
    shoal.RequestRefused("cannot retry task 4: it is running; only failed or cancelled tasks can"),
    shoal.errors.RemoteError("perlmutter (me@perlmutter): the login was refused"),
    shoal.errors.BatchError("sbatch refused the job: invalid partition specified: nope"),
]


def test_every_error_class_is_covered() -> None:
    classes = {
        c
        for _, c in inspect.getmembers(shoal.errors, inspect.isclass)
        if issubclass(c, BaseException) and c.__module__ == "shoal.errors"
    }
    assert classes == {type(e) for e in ERRORS}


@pytest.mark.parametrize("err", ERRORS, ids=lambda e: type(e).__name__)
def test_errors_pickle_with_their_attributes(err: BaseException) -> None:
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err)
    assert str(back) == str(err)
    assert vars(back) == vars(err)
    assert isinstance(back, shoal.ShoalError)


def test_task_failed_attributes_survive_pickling() -> None:
    err = ERRORS[5]
    back = pickle.loads(pickle.dumps(err))
    assert isinstance(back, TaskFailed)
    assert (back.task, back.name, back.kind, back.exit_code) == (3, "relax", "exit", 2)
    assert back.traceback.endswith("ValueError: no")
    assert str(back).startswith("task 'relax' (#3) failed: exit 2")
    assert str(back).count("ValueError: no") == 1, str(back)  # the traceback, shown once
    dep = pickle.loads(pickle.dumps(ERRORS[6]))
    assert isinstance(dep, DependencyFailed) and isinstance(dep, TaskFailed)
    assert (dep.root, dep.root_name, dep.task, dep.name) == (3, "relax", 4, "fit")


# -- one run with failures ------------------------------------------------------------------------
@shoal.task
def produce(v: Any) -> Any:
    print(f"producing {v!r}")
    return v


@shoal.task
def quiet(v: Any) -> Any:
    return v


@shoal.task
def explode(x: int) -> None:
    print("about to fail")
    raise ValueError(f"bad value {x}")


@dataclass
class Graph:
    run: shoal.Run
    base: Path
    t: dict[str, shoal.Task]


@pytest.fixture(scope="module")
def graph(tmp_path_factory: pytest.TempPathFactory) -> Graph:
    base = tmp_path_factory.mktemp("runs")
    quit3 = shoal.command("sh -c 'exit 3'")
    with Workflow("graph") as wf:
        t: dict[str, shoal.Task] = {}
        t["ok_root"] = produce(1)
        t["ok_child"] = quiet(t["ok_root"].out)
        t["boom"] = explode(7)
        t["child"] = quiet(t["boom"].out)
        t["grandchild"] = quiet([t["child"].out, t["ok_child"].out])
        t["independent"] = quiet(2)
        t["quit3"] = quit3()
        t["after_quit"] = quiet(5).after(t["quit3"])
        t["ok_cmd"] = shoal.command("echo {word}")(word="hi there")
    run = wf.run(base=base, cpus=4)
    return Graph(run, base, t)


def test_failed_result_raises_task_failed_with_remote_traceback(graph: Graph) -> None:
    boom = graph.t["boom"]
    with pytest.raises(TaskFailed) as info:
        graph.run.result(boom)
    err = info.value
    assert type(err) is TaskFailed
    assert (err.task, err.name, err.kind) == (boom.id, "explode", "error")
    text = str(err)
    assert "'explode'" in text and "ValueError: bad value 7" in text
    assert "Remote traceback" in text
    assert "in explode" in err.traceback and "ValueError: bad value 7" in err.traceback
    assert err.traceback.rstrip() in text
    assert str(graph.run.dir / "tasks" / str(boom.id)) in text  # where to look
    back = pickle.loads(pickle.dumps(err))
    assert str(back) == text and back.traceback == err.traceback


def test_failed_command_has_exit_code(graph: Graph) -> None:
    with pytest.raises(TaskFailed) as info:
        graph.run.result(graph.t["quit3"])
    assert info.value.kind == "exit"
    assert info.value.exit_code == 3
    assert "3" in str(info.value)


@pytest.mark.parametrize(
    ("name", "root"), [("child", "boom"), ("grandchild", "boom"), ("after_quit", "quit3")]
)
def test_dependency_failed_names_the_root(graph: Graph, name: str, root: str) -> None:
    with pytest.raises(DependencyFailed) as info:
        graph.run.result(graph.t[name])
    err = info.value
    root_task = graph.t[root]
    assert err.root == root_task.id
    assert err.root_name == root_task.name
    assert err.task == graph.t[name].id
    assert f"{root_task.name!r} (#{root_task.id})" in str(err)
    assert isinstance(err, TaskFailed)


def test_failure_cascades_to_dependents_only(graph: Graph) -> None:
    run = graph.run
    expected = {
        "ok_root": "succeeded",
        "ok_child": "succeeded",
        "independent": "succeeded",
        "ok_cmd": "succeeded",
        "boom": "failed",
        "quit3": "failed",
        "child": "dep_failed",
        "grandchild": "dep_failed",
        "after_quit": "dep_failed",
    }
    with Reader(run.dir) as r:
        got = {k: r.find(t.id).state for k, t in graph.t.items()}  # type: ignore[arg-type]
    assert got == expected
    assert run.result(graph.t["ok_child"]) == 1
    assert run.result(graph.t["independent"]) == 2
    assert run.result(graph.t["ok_cmd"])["stdout"] == "hi there\n"
    assert run.state == "failed" and not run.ok
    st = run.status()
    assert st["counts"] == {"succeeded": 4, "failed": 2, "dep_failed": 3}
    assert st["total"] == 9
    assert {f["name"] for f in run.failures()} == {"explode", "sh"}


def test_run_directory_layout(graph: Graph) -> None:
    d = graph.run.dir
    assert d.parent == graph.base
    assert re.fullmatch(r"graph-\d{8}-\d{6}(-\d+)?", d.name), d.name
    for name in ("shoal.db", "status.json", "shoal.log"):
        assert (d / name).is_file(), f"{name} missing in {d}"
    printed = d / "tasks" / str(graph.t["ok_root"].id) / "stdout"
    assert printed.read_text() == "producing 1\n"
    boom_dir = d / "tasks" / str(graph.t["boom"].id)
    assert "about to fail" in (boom_dir / "stdout").read_text()
    assert "ValueError: bad value 7" in (boom_dir / "traceback.txt").read_text()
    log = (d / "shoal.log").read_text()
    assert "graph" in log and "explode" in log


def test_status_json(graph: Graph) -> None:
    st = json.loads((graph.run.dir / "status.json").read_text())
    assert st["run"] == "graph"
    assert st["state"] == "failed"
    assert st["total"] == 9
    counts = st["counts"]
    assert sum(counts.values()) == 9
    assert (counts["succeeded"], counts["failed"], counts["dep_failed"]) == (4, 2, 3)
    assert not any(counts[s.value] for s in State if s not in TERMINAL)
    res = st["resources"]
    assert res["cores"] == 4 and res["cores_used"] == 0  # everything given back at the end
    assert res["gpus_used"] == 0


def test_store_is_wal(graph: Graph) -> None:
    db = graph.run.dir / "shoal.db"
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def test_every_transition_is_recorded_in_order(graph: Graph) -> None:
    with Reader(graph.run.dir) as r:
        for key, t in graph.t.items():
            row = r.find(t.id)  # type: ignore[arg-type]
            story = r.story(row.id)
            assert story, f"{key}: no transitions recorded"
            assert story[0]["old"] is None, story
            prev: str | None = None
            when = 0.0
            for s in story:
                assert s["old"] == prev, f"{key}: transitions out of order: {story}"
                if prev is not None:
                    assert State(s["new"]) in TRANSITIONS[State(prev)], f"{key}: illegal {s}"
                assert s["event"], f"{key}: transition without its event: {s}"
                assert s["time"] >= when
                prev, when = s["new"], s["time"]
            assert prev == row.state, f"{key}: story ends in {prev}, task is {row.state}"
            assert State(prev) in TERMINAL
        # The events name what caused them.
        root, child = graph.t["ok_root"].id, graph.t["ok_child"].id
        ready = [s for s in r.story(child) if s["new"] == "ready"]  # type: ignore[arg-type]
        assert len(ready) == 1
        assert re.search(rf"succeeded.*\b{root}\b", ready[0]["event"]), ready
        boom, dep = graph.t["boom"].id, graph.t["child"].id
        last = r.story(dep)[-1]  # type: ignore[arg-type]
        assert last["new"] == "dep_failed"
        assert re.search(rf"fail.*\b{boom}\b", last["event"]), last
        assert re.search(rf"\b{boom}\b", last["reason"]), last
        failed = r.story(boom)[-1]  # type: ignore[arg-type]
        assert failed["new"] == "failed" and "bad value 7" in failed["reason"]


# -- submit ---------------------------------------------------------------------------------------
@shoal.task
def wait_for(path: str, value: int) -> int:
    deadline = time.monotonic() + 30
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.01)
    return value


def test_submit_returns_at_once_and_wait_blocks(base: Path, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    with Workflow("gated") as wf:
        waits = [wait_for(str(gate), i) for i in range(2)]
        total = quiet([w.out for w in waits])
    run = wf.submit(base=base)
    try:
        assert not run.done
        counts = run.status()["counts"]
        assert not counts.get("succeeded") and not counts.get("failed"), counts
        assert run.state == "running"
    finally:
        gate.touch()
    assert run.wait(timeout=60) is run
    assert run.done
    assert run.ok, run.failures()
    assert run.result(total) == [0, 1]
    assert run.status()["counts"] == {"succeeded": 3}


def _where_am_i() -> tuple[int, int, str]:
    here = shoal.current()
    return here.task, here.attempt, here.dir


def test_current_names_the_running_task_in_workers_and_isolated_processes(base: Path) -> None:
    with shoal.Workflow("whoami") as wf:
        pooled = shoal.task(_where_am_i)()
        alone = shoal.task(_where_am_i, isolate=True)()
    run = wf.run(base=base)
    for t in (pooled, alone):
        task, attempt, folder = run.result(t)
        assert (task, attempt) == (t.id, 1)
        assert Path(folder) == run.dir / "tasks" / str(t.id)
    with pytest.raises(RuntimeError, match="inside a running shoal task"):
        shoal.current()
