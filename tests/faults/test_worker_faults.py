"""Faults that used to kill a persistent worker after its task's function returned, hiding
their cause behind "exited with code 70" (issue 15, point 12): each must now be recorded
against the task that met it, with the real reason, and the worker must live on."""

from __future__ import annotations

import importlib
import os
import shutil
import sys
from pathlib import Path

import shoal
from shoal.store import Reader


@shoal.task
def close_fds() -> str:
    print("before")
    sys.stdout.flush()
    os.close(1)
    os.close(2)
    return "closed"


@shoal.task
def close_streams() -> str:
    print("before")
    sys.stdout.close()
    sys.stderr.close()
    return "closed"


@shoal.task
def loud(i: int) -> int:
    print(f"loud {i}")
    return i


@shoal.task
def no_room_for_output() -> str:
    """What a full disk does to saving a task's output: its folder cannot be written."""
    here = Path(shoal.current().dir)
    shutil.rmtree(here, ignore_errors=True)
    here.parent.mkdir(parents=True, exist_ok=True)
    here.write_text("not a folder")
    print("this cannot be saved")
    return "returned"


@shoal.task
def delete_workers_folder() -> str:
    run = Path(shoal.current().dir).parent.parent
    shutil.rmtree(run / "workers")
    return "deleted"


def worker_of(run: shoal.Run, task: shoal.Task) -> str:
    with Reader(run.dir) as r:
        return str(r.attempts(task.id)[-1]["worker"])


def test_a_task_that_closes_its_output_leaves_the_worker_alive(base: Path) -> None:
    with shoal.Workflow("closed") as wf:
        a = close_fds()
        b = close_streams()
        after = [loud(i).after(a, b) for i in range(4)]
    run = wf.run(base=base, cpus=1, progress=False)
    assert run.ok, run.failures()
    assert run.result(a) == run.result(b) == "closed"
    assert [run.result(t) for t in after] == [0, 1, 2, 3]
    # One worker did it all (cpus=1): it survived, and still captures what tasks print.
    assert {worker_of(run, t) for t in (a, b, *after)} == {"worker-1"}
    assert (run.dir / "tasks" / str(after[0].id) / "stdout").read_text() == "loud 0\n"
    assert (run.dir / "tasks" / str(a.id) / "stdout").read_text() == "before\n"


def test_output_that_cannot_be_saved_fails_that_task_with_the_reason(base: Path) -> None:
    with shoal.Workflow("no-room") as wf:
        bad = no_room_for_output()
        after = [loud(i).after(bad) for i in range(2)]
        other = [loud(i) for i in range(3)]
    run = wf.run(base=base, cpus=1, progress=False)
    f = {x["id"]: x for x in run.failures()}
    assert list(f) == [bad.id]
    assert "output could not be saved" in f[bad.id]["reason"]
    with Reader(run.dir) as r:
        assert [r.find(t.id).state for t in after] == ["dep_failed", "dep_failed"]
    assert [run.result(t) for t in other] == [0, 1, 2]
    assert {worker_of(run, t) for t in (bad, *other)} == {"worker-1"}


def test_a_module_missing_in_the_worker_fails_the_task_that_needs_it(
    base: Path, tmp_path: Path
) -> None:
    src = tmp_path / "mods"
    src.mkdir()
    (src / "vanishing_mod.py").write_text(
        "import os\n"
        f"if os.getpid() != {os.getpid()}:  # importable here, not in the workers\n"
        "    raise ModuleNotFoundError('No module named vanishing_mod here')\n"
        "def f(x):\n"
        "    return x + 1\n"
    )
    sys.path.insert(0, str(src))
    try:
        mod = importlib.import_module("vanishing_mod")
        task = shoal.task(mod.f)
        with shoal.Workflow("missing") as wf:
            bad = task(1)
            others = [loud(i) for i in range(3)]
        run = wf.run(base=base, cpus=1, progress=False)
    finally:
        sys.path.remove(str(src))
        sys.modules.pop("vanishing_mod", None)
    f = {x["id"]: x for x in run.failures()}
    assert list(f) == [bad.id]
    assert "cannot load the task's function in the worker" in f[bad.id]["reason"]
    assert "vanishing_mod" in f[bad.id]["reason"]
    assert [run.result(t) for t in others] == [0, 1, 2]


def test_a_deleted_workers_folder_does_not_stop_new_workers(base: Path) -> None:
    with shoal.Workflow("no-workers-folder") as wf:
        gone = delete_workers_folder()
        narrow = [loud(i).after(gone) for i in range(4)]  # workers of this width start first
        wide = [loud.options(cpus=2)(i).after(gone) for i in range(3)]  # then a new one
    run = wf.run(base=base, cpus=2, progress=False)
    assert run.ok, run.failures()
    assert [run.result(t) for t in wide] == [0, 1, 2]
    assert [run.result(t) for t in narrow] == [0, 1, 2, 3]
