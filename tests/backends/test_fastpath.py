"""The fast path (tasks queued behind short ones on a persistent worker) gives the answers the
slow path gives.

Each test here reproduces one wrong answer that the prefetch path once gave (issue 14): a
worker death charged to innocent tasks, a timeout ignored, an outcome held behind a long task,
the driver crashed by a Response, a worker crashed by a dropped task. The shape is the same
in most: hundreds of tiny tasks around the one that matters, so that it is queued behind a
tiny task on a worker rather than started on a slot of its own. Assertions are about states,
attempts and the order of recorded events, never about durations.
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import shoal
from shoal.backends.local import worker_main as worker
from shoal.backends.local.wire import Wire
from shoal.backends.local.zygote import launch

AROUND = 300  # tiny tasks before and after the one that matters


@shoal.task
def square(x: int) -> int:
    return x * x


@shoal.task
def exit_hard() -> None:
    os._exit(3)


@shoal.task
def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@shoal.task
def nap(seconds: float) -> str:
    time.sleep(seconds)
    return "slept"


@shoal.task
def big(i: int) -> dict[str, Any]:
    return {"i": i, "pad": b"x" * 100_000}  # over the 64 KB that travel with a dependent


@shoal.task
def pick(value: Any) -> Any:
    return value


@shoal.task
def count(n: int) -> Any:
    if n < 5:
        return shoal.Response(output=n, replace=count(n + 1))
    return n


@shoal.task
def plus(x: int, y: int) -> int:
    return x + y


def executions(run: shoal.Run, task: int) -> list[tuple[int, str]]:
    """(attempt, outcome) of every attempt of ``task`` that was not given back unstarted."""
    with sqlite3.connect(run.dir / "shoal.db") as db:
        rows = db.execute(
            "SELECT attempt, outcome FROM attempts WHERE task=? ORDER BY attempt", (task,)
        ).fetchall()
    return [(a, o) for a, o in rows if o != "returned"]


def sandwich(middle: Any) -> tuple[shoal.Workflow, list[shoal.Task], shoal.Task]:
    with shoal.Workflow("sandwich") as wf:
        before = [square(i) for i in range(AROUND)]
        bad = middle()
        after = [square(i) for i in range(AROUND)]
    return wf, before + after, bad


# -- 1. a task that kills its worker is charged alone, once --------------------------------------
@pytest.mark.parametrize("killer", [exit_hard, kill_self], ids=["os._exit", "SIGKILL"])
def test_a_task_that_kills_its_worker_is_the_only_one_charged(base: Path, killer: Any) -> None:
    for _ in range(2):  # consecutive runs in one process, as the issue saw them
        wf, squares, bad = sandwich(killer)
        run = wf.run(base=base, cpus=2, progress=False)
        assert [f["id"] for f in run.failures()] == [bad.id], run.failures()
        assert run.status()["counts"] == {"succeeded": len(squares), "failed": 1}
        assert [run.result(s) for s in squares] == [i * i for i in range(AROUND)] * 2
        # It ran once (no retries), and no tiny task ran more than once.
        assert executions(run, bad.id) == [(1, "failed")]
        for s in squares:
            assert len(executions(run, s.id)) == 1


# -- 2. a Python task's timeout holds wherever it was queued ---------------------------------------
def test_a_timeout_holds_for_a_python_task_queued_behind_short_ones(base: Path) -> None:
    wf, squares, bad = sandwich(lambda: nap.options(timeout=1)(20))
    run = wf.run(base=base, cpus=2, progress=False)
    f = {x["id"]: x for x in run.failures()}
    assert list(f) == [bad.id]
    assert f[bad.id]["kind"] == "timeout"
    assert "timed out after 1 s" in f[bad.id]["reason"]
    assert [run.result(s) for s in squares] == [i * i for i in range(AROUND)] * 2
    assert executions(run, bad.id) == [(1, "failed")]


# -- 3. an outcome is not held behind a long task ---------------------------------------------
def test_outcomes_are_recorded_before_the_long_task_behind_them_ends(base: Path) -> None:
    wf, _, slow = sandwich(lambda: nap(2))
    run = wf.run(base=base, cpus=2, progress=False)
    assert run.ok
    with sqlite3.connect(run.dir / "shoal.db") as db:
        start, end = db.execute(
            "SELECT started, ended FROM attempts WHERE task=? AND outcome='succeeded'", (slow.id,)
        ).fetchone()
        recorded = dict(
            db.execute("SELECT task, time FROM transitions WHERE new='succeeded'").fetchall()
        )
        ended = dict(db.execute("SELECT task, ended FROM attempts WHERE outcome='succeeded'"))
    # Every tiny task that had ended when the long one started was recorded as succeeded
    # while the long one still ran (the issue saw them recorded together, after it).
    early = [t for t, e in ended.items() if t != slow.id and e <= start]
    assert early
    late = [t for t in early if recorded[t] >= end]
    assert not late, f"{len(late)} outcomes were held until the long task ended"


# -- 4. Responses on the fast path ---------------------------------------------------------------
def test_a_replace_loop_with_a_rule_submitting_more_loops(base: Path) -> None:
    for _ in range(4):
        with shoal.Workflow("loop") as wf:
            c = count(0)
            p = plus(c.out, 1)

        @wf.on("task-succeeded", name="plus")
        def more(event: Any, ctl: Any) -> None:
            n = ctl.memory.get("n", 0)
            if n < 4:
                ctl.memory["n"] = n + 1
                c = count(0)
                ctl.submit(c, plus(c.out, n))

        run = wf.run(base=base, cpus=4, progress=False)
        assert run.state == "succeeded", run.failures()
        assert run.result(p) == 6
        assert run.status()["counts"] == {"succeeded": 7 + 4 * 7}  # 6 counts and a plus each


def test_a_queued_task_whose_inputs_cannot_be_prepared_fails_when_its_turn_comes(
    base: Path,
) -> None:
    """The driver resolves large outputs itself; a selection that does not exist fails the
    task. For a task queued behind another, that failure used to be reported at once, while
    the task was queued, which crashed the driver."""
    with shoal.Workflow("bad-pick") as wf:
        bigs = [big(i) for i in range(40)]
        good = [pick(b.out["i"]) for b in bigs]
        bad = [pick(b.out["missing"]) for b in bigs]
    run = wf.run(base=base, cpus=2, progress=False)
    assert run.state == "failed"
    assert [run.result(g) for g in good] == list(range(40))
    reasons = {f["id"]: f["reason"] for f in run.failures()}
    assert sorted(reasons) == sorted(b.id for b in bad)
    assert all("cannot prepare the inputs" in r for r in reasons.values())


# -- 5. a dropped task does not take its worker's function with it ---------------------------------
def _worker() -> tuple[subprocess.Popen[bytes], Wire]:
    ours, theirs = socket.socketpair()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = launch(
        [sys.executable], "shoal.backends.local.worker_main", theirs.fileno(), [], env, 1, 2
    )
    theirs.close()
    conn = Wire(ours.detach())
    assert pickle.loads(conn.recv_bytes()) == ("ready",)
    return proc, conn


def _item(task: int, fn: bytes | None, follows: int | None, tmp: Path) -> tuple[Any, ...]:
    payload = pickle.dumps(((task,), {}))
    env = {} if fn is not None else None
    return (task, 1, 7, fn, payload, None, 0, env, str(tmp / str(task)), True, None, follows)


def test_a_worker_keeps_a_function_that_came_with_a_dropped_task(tmp_path: Path) -> None:
    """A follower whose task ahead did not run there is dropped; the function and environment
    sent with it are still needed by the tasks after it (the issue saw ``KeyError: 1`` and a
    dead worker)."""
    import cloudpickle

    proc, conn = _worker()
    try:
        fn = cloudpickle.dumps(lambda x: x + 1)
        items = [_item(1, fn, 99, tmp_path), _item(2, None, None, tmp_path)]
        conn.send_bytes(pickle.dumps(("run", items)))
        replies = []
        while len(replies) < 2:
            msg = pickle.loads(conn.recv_bytes())
            replies += [msg] if msg[0] == "dropped" else [("done", r) for r in msg[1]]
        assert replies[0] == ("dropped", 1, 1)
        _, (task, attempt, ok, result, *_) = replies[1]
        assert (task, attempt, ok, pickle.loads(result)) == (2, 1, True, 3)
    finally:
        conn.send_bytes(pickle.dumps(("stop",)))
        proc.wait(10)


def test_the_marker_names_the_task_executing(tmp_path: Path) -> None:
    """What a death is charged by: the worker notes the attempt it executes, and clears it."""
    marker = tmp_path / "w.pid"
    ours, theirs = socket.socketpair()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    args = [repr(worker.HOLD), repr(worker.COMMAND_HOLD), str(marker)]
    proc = launch(
        [sys.executable], "shoal.backends.local.worker_main", theirs.fileno(), args, env, 1, 2
    )
    theirs.close()
    conn = Wire(ours.detach())
    import cloudpickle

    try:
        assert pickle.loads(conn.recv_bytes()) == ("ready",)
        assert worker.running(str(marker)) == (0, 0, 0)
        flag = tmp_path / "go"

        def wait_for(path: str) -> str:
            while not os.path.exists(path):
                time.sleep(0.01)
            return "seen"

        fn = cloudpickle.dumps(wait_for)
        item = list(_item(5, fn, None, tmp_path))
        item[4] = pickle.dumps(((str(flag),), {}))
        item[9] = False
        conn.send_bytes(pickle.dumps(("run", [tuple(item)])))
        deadline = time.monotonic() + 30
        while worker.running(str(marker)) != (0, 5, 1) and time.monotonic() < deadline:
            time.sleep(0.005)
        assert worker.running(str(marker)) == (0, 5, 1)
        flag.write_text("ok")
        msg = pickle.loads(conn.recv_bytes())
        assert msg[0] == "done" and msg[1][0][0] == 5
        assert worker.running(str(marker)) == (0, 0, 0)
    finally:
        conn.send_bytes(pickle.dumps(("stop",)))
        proc.wait(10)


def test_workers_that_die_between_tasks_end_the_run_with_a_reason(
    base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that dies while no task of its runs (here: a message it cannot read) gives its
    tasks back unstarted; but when worker after worker does, the workers are broken, and the
    run ends saying so instead of starting new ones for ever."""
    from shoal.backends.local import MAX_FRESH_DEATHS, LocalBackend

    real = LocalBackend._message

    def broken(self: LocalBackend, w: Any, job: Any) -> tuple[Any, ...]:
        return real(self, w, job)[:5]  # a message the worker cannot unpack

    monkeypatch.setattr(LocalBackend, "_message", broken)
    with shoal.Workflow("broken-workers") as wf:
        square(1)
    with pytest.raises(shoal.ShoalError, match=f"{MAX_FRESH_DEATHS} worker processes in a row"):
        wf.run(base=base, cpus=1, progress=False)
