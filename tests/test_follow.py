"""Followers end to end: a dependent queued on a worker behind the one task it waits for.

The core's side (when a task follows, when it is taken back) is in tests/core; here the local
workers must run a follower only after that task succeeded, with its output, and drop it
otherwise, so that every run ends as it would without followers.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

import shoal
from shoal.backends.local import LocalBackend
from shoal.core.events import Outcome
from shoal.spec.lower import dumps


@shoal.task
def inc(x: int) -> int:
    return x + 1


@shoal.task
def sometimes(x: int) -> int:
    if x == 3:
        _until_followed()
        raise ValueError(f"no good: {x}")
    return x + 1


def _until_followed(limit: float = 60.0) -> None:
    """Inside a task: wait until the run has queued the next task behind this one. Whether a
    follower is queued before a short task ends is a matter of timing (under load the start and
    the end may reach the driver together); the tests that need one wait for it."""
    import time

    me = shoal.current()
    db = next(p / "shoal.db" for p in Path(me.dir).parents if (p / "shoal.db").exists())
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if _queued(db, me.task + 1):
            return
        time.sleep(0.02)


@shoal.task
def steer(x: int) -> shoal.Response:
    return shoal.Response(output=x * 10)


# Seconds of work queued per worker: long enough that followers are used from the second task
# on, whatever this machine's speed (the default, 20 ms, waits for tasks known to be short).
WINDOW = 30.0


def moves(run: shoal.Run) -> list[tuple[int, str | None, str]]:
    with sqlite3.connect(run.dir / "shoal.db") as db:
        return db.execute("SELECT task, old, new FROM transitions ORDER BY seq").fetchall()


def chain(fn: shoal.spec.TaskFactory, n: int, first: int = 0) -> list[shoal.Task]:
    tasks = [fn(first)]
    for _ in range(n - 1):
        tasks.append(fn(tasks[-1].out))
    return tasks


def test_a_chain_runs_with_followers_and_each_gets_the_output_before_it(base: Path) -> None:
    with shoal.Workflow("chain") as wf:
        tasks = chain(inc, 40)
    run = wf.run(base=base, cpus=1, prefetch_window=WINDOW)
    assert run.ok, run.failures()
    assert [run.result(t) for t in tasks] == list(range(1, 41))
    followed = [t for t, old, new in moves(run) if (old, new) == ("pending", "queued")]
    assert len(followed) > 10, "the chain's tasks did not follow one another"


def test_a_follower_behind_a_failure_never_runs(base: Path) -> None:
    with shoal.Workflow("broken-chain") as wf:
        tasks = chain(sometimes, 8)  # the fourth task (input 3) fails
    run = wf.run(base=base, cpus=1, prefetch_window=WINDOW)
    assert [run.result(t) for t in tasks[:3]] == [1, 2, 3]
    with pytest.raises(shoal.TaskFailed, match="no good: 3"):
        run.result(tasks[3])
    for t in tasks[4:]:
        with pytest.raises(shoal.DependencyFailed):
            run.result(t)
    with sqlite3.connect(run.dir / "shoal.db") as db:
        started = {t for (t,) in db.execute("SELECT task FROM attempts WHERE started IS NOT NULL")}
    assert started.isdisjoint(t.id for t in tasks[4:]), "a task ran behind a failed one"
    back = [t for t, old, new in moves(run) if (old, new) == ("queued", "pending")]
    assert back == [tasks[4].id], "the follower of the failed task was not taken back"


def test_a_follower_of_a_response_gets_the_output_the_response_gives(base: Path) -> None:
    with shoal.Workflow("steered") as wf:
        first = inc(0)
        middle = steer(first.out)
        last = inc(middle.out)
        tail = inc(last.out)
    run = wf.run(base=base, cpus=1, prefetch_window=WINDOW)
    assert run.ok, run.failures()
    assert run.result(middle) == 10
    assert run.result(last) == 11 and run.result(tail) == 12
    steps = [(old, new) for t, old, new in moves(run) if t == last.id]
    assert steps == [
        (None, "pending"),
        ("pending", "queued"),  # it followed the task that then returned a Response
        ("queued", "pending"),
        ("pending", "ready"),
        ("ready", "running"),
        ("running", "succeeded"),
    ]


@shoal.task(isolate=True)
def counted(path: str) -> int:
    p = Path(path)
    n = int(p.read_text()) + 1 if p.exists() else 1
    p.write_text(str(n))
    return n


@shoal.task
def hold(latch: str) -> str:
    import time

    while not Path(latch).exists():
        time.sleep(0.01)
    return "held"


def _queued(db: Path, task: int) -> bool:
    """Whether ``task`` was queued on a worker (tasks.state does not show that move)."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        q = "SELECT 1 FROM transitions WHERE task = ? AND new = 'queued'"
        return bool(con.execute(q, (task,)).fetchall())


def _rerun_while_queued(
    base: Path, tmp_path: Path, backend: Any = None
) -> tuple[shoal.Run, shoal.Task, shoal.Task, list[str | None]]:
    """A task, and its dependent queued on the worker behind a task that holds until the
    first one was rerun (by request, from another thread)."""
    import threading
    import time

    latch, counter = tmp_path / "latch", tmp_path / "count"
    with shoal.Workflow("rerun-queued") as wf:
        first = counted(str(counter))  # a process of its own: the dependent cannot follow it
        hold(str(latch))
        user = inc(first.out)
    answers: list[str | None] = []

    def steer() -> None:
        try:
            end = time.monotonic() + 60
            while time.monotonic() < end and not list(base.glob("*/shoal.db")):
                time.sleep(0.01)
            run_dir = next(base.glob("*/shoal.db")).parent
            while time.monotonic() < end and not _queued(run_dir / "shoal.db", user.id):
                time.sleep(0.01)
            a = shoal.attach(run_dir)
            answers.append(a.answer(a.rerun(first.id), timeout=60))
        finally:
            latch.touch()

    helper = threading.Thread(target=steer)
    helper.start()
    options: dict[str, Any] = {"backend": backend} if backend is not None else {"cpus": 1}
    run = shoal.run(wf, base=base, prefetch_window=WINDOW, **options)
    helper.join()
    return run, first, user, answers


def test_a_rerun_takes_back_a_dependent_queued_on_a_worker(base: Path, tmp_path: Path) -> None:
    """A task queued on a worker behind another has not started: rerunning the task whose
    output it uses takes it back (it would have run on the old output) and it runs once,
    on the new one (found by the randomized suite, seed 20001: the rerun was refused)."""
    run, first, user, answers = _rerun_while_queued(base, tmp_path)
    assert run.ok, run.failures()
    assert answers and answers[0] is not None and not answers[0].startswith("refused"), answers
    assert run.result(first) == 2 and run.result(user) == 3, "it ran on the old output"
    with sqlite3.connect(run.dir / "shoal.db") as db:
        started = db.execute(
            "SELECT COUNT(*) FROM attempts WHERE task = ? AND started IS NOT NULL", (user.id,)
        ).fetchone()[0]
    assert started == 1, f"the dependent started {started} times"
    back = [t for t, old, new in moves(run) if (old, new) == ("queued", "pending")]
    assert back == [user.id]


class _TooLate(LocalBackend):
    """Reports an attempt it was asked to stop as a success with another output, and only
    after the task's next attempt succeeded: as if the stop had come too late."""

    def __init__(self) -> None:
        super().__init__(cpus=1)
        self.stopped: set[tuple[int, int]] = set()
        self.late: list[Outcome] = []

    def cancel(self, task: int, attempt: int) -> None:
        self.stopped.add((task, attempt))
        super().cancel(task, attempt)

    def poll(self, timeout: float) -> list[Outcome]:
        out = []
        for o in super().poll(timeout):
            if (o.task, o.attempt) in self.stopped:
                now = time.time()
                self.late.append(Outcome(o.task, o.attempt, True, now, now, result=dumps(-1)))
                continue
            out.append(o)
            if o.ok and any(x.task == o.task for x in self.late):
                out.extend(x for x in self.late if x.task == o.task)
        return out


def test_a_late_report_of_a_taken_back_attempt_is_ignored(base: Path, tmp_path: Path) -> None:
    """The stop of a queued dependent may reach the worker after it started; if that old
    attempt then reports a success (after the new attempt's), its output is not the task's."""
    backend = _TooLate()
    run, first, user, answers = _rerun_while_queued(base, tmp_path, backend)
    assert answers and answers[0] is not None and not answers[0].startswith("refused"), answers
    assert backend.late, "the test did not stop a queued attempt"
    assert run.ok, run.failures()
    assert run.result(first) == 2 and run.result(user) == 3, "a late output replaced the task's"
