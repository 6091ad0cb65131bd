"""The fault matrix of the local backend, end to end through ``wf.run``.

Each test breaks one thing inside a task (the worker killed, a segfault, ``os._exit``, a
timeout, a result that cannot be pickled, a failing command) and checks that exactly that task
fails, with the right kind and a reason that names the cause, that its dependents are
``dep_failed`` naming it as the root, and that every other task still succeeds with the right
result. Then: isolation, CPU and GPU pinning, MPI ranks, closures and lambdas, and reading the
store while a run goes on.

Ordering and concurrency are checked with times and ids the tasks record, not with sleeps.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import sys
import threading
import time
from itertools import combinations
from pathlib import Path
from typing import Any

import pytest

import shoal
from shoal.store import Reader

MULTICORE = pytest.mark.skipif(
    len(os.sched_getaffinity(0)) < 2,
    reason="needs at least 2 usable cores to check that tasks get distinct ones",
)
MPI = pytest.mark.skipif(
    shutil.which("mpiexec") is None, reason="needs an MPI launcher (mpiexec on PATH)"
)


# -- task functions (module level, as users write them) ---------------------------------------
@shoal.task
def square(x: int) -> int:
    return x * x


@shoal.task
def plus(x: int, y: int = 1) -> int:
    return x + y


@shoal.task
def total(values: list[int]) -> int:
    return sum(values)


@shoal.task
def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@shoal.task
def segfault() -> None:
    ctypes.string_at(0)


@shoal.task
def hard_exit() -> None:
    os._exit(3)


@shoal.task
def sleep_long(seconds: float = 30) -> str:
    time.sleep(seconds)
    return "slept"


@shoal.task
def lock() -> threading.Lock:
    return threading.Lock()


@shoal.task
def open_socket() -> socket.socket:
    return socket.socket()


@shoal.task
def pid() -> int:
    return os.getpid()


@shoal.task
def wait_to_be_killed(pidfile: str) -> str:
    """Tell the test which process runs it, then wait (the test kills that process)."""
    tmp = pidfile + ".tmp"
    Path(tmp).write_text(str(os.getpid()))
    os.replace(tmp, pidfile)
    time.sleep(20)
    return "survived"


@shoal.task
def wait_for(gate: str, value: int, limit: float = 15.0) -> int:
    deadline = time.monotonic() + limit
    while not os.path.exists(gate):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{gate} never appeared")
        time.sleep(0.02)
    return value


@shoal.task
def placement_seen(name: str, hold: float = 0.0, meet: str | None = None) -> dict[str, Any]:
    """What a task sees of its placement, and when it ran.

    With ``meet`` (a folder), the task announces itself there and waits (at most 10 s) until
    another task did too, so that two such tasks provably ran at the same time.
    """
    start = time.time()
    met = None
    if meet is not None:
        Path(meet, name).write_text("here")
        deadline = time.monotonic() + 10
        while met is None and time.monotonic() < deadline:
            others = [p for p in os.listdir(meet) if p != name]
            met = others[0] if others else None
            time.sleep(0.01)
    time.sleep(hold)
    return {
        "name": name,
        "cores": sorted(os.sched_getaffinity(0)),
        "omp": os.environ.get("OMP_NUM_THREADS"),
        "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "rocr": os.environ.get("ROCR_VISIBLE_DEVICES"),
        "ze": os.environ.get("ZE_AFFINITY_MASK"),
        "pid": os.getpid(),
        "met": met,
        "start": start,
        "end": time.time(),
    }


@shoal.task
def mpi_rank() -> dict[str, Any]:
    rank = int(os.environ.get("OMPI_COMM_WORLD_RANK", "-1"))
    Path(os.environ["SHOAL_TASK_DIR"], f"rank-{rank}").write_text(str(os.getpid()))
    return {"rank": rank, "size": int(os.environ.get("OMPI_COMM_WORLD_SIZE", "-1"))}


def make_adder(k: int) -> shoal.spec.task.TaskFactory[[int], int]:
    def add_k(x: int) -> int:
        return x + k

    return shoal.task(add_k)


# -- helpers ------------------------------------------------------------------------------------
def bystanders() -> tuple[list[shoal.Task], shoal.Task]:
    """Independent tasks and a healthy chain (created inside an open workflow)."""
    squares = [square(i) for i in range(6)]
    chain = total([s.out for s in squares])
    return squares, plus(chain.out, 100)


def check_bystanders(run: shoal.Run, squares: list[shoal.Task], end: shoal.Task) -> None:
    assert [run.result(s) for s in squares] == [i * i for i in range(6)]
    assert run.result(end) == sum(i * i for i in range(6)) + 100


def failure_of(run: shoal.Run, task: shoal.Task) -> dict[str, Any]:
    by_id = {f["id"]: f for f in run.failures()}
    assert task.id in by_id, f"{task.label} is not among the failures: {run.failures()}"
    return by_id[task.id]


def check_cascade(run: shoal.Run, root: shoal.Task, deps: list[shoal.Task]) -> None:
    with Reader(run.dir) as r:
        assert [r.find(d.id).state for d in deps] == ["dep_failed"] * len(deps)
    for d in deps:
        with pytest.raises(shoal.DependencyFailed) as info:
            run.result(d)
        assert info.value.root == root.id
        assert info.value.root_name == root.name
        assert f"#{root.id}" in str(info.value) and root.name in str(info.value)


# -- (a)-(c) a task that takes its worker down ------------------------------------------------
@pytest.mark.parametrize(
    ("victim", "kind", "words"),
    [
        (kill_self, "crash", "SIGKILL"),
        (segfault, "crash", "SIGSEGV"),
        (hard_exit, "exit", "exited with code 3"),
    ],
    ids=["sigkill", "segfault", "os_exit"],
)
def test_dead_worker_fails_only_its_task(base: Path, victim: Any, kind: str, words: str) -> None:
    with shoal.Workflow("dead-worker") as wf:
        squares, end = bystanders()
        bad = victim()
        after1 = plus(bad.out)
        after2 = plus(after1.out)
        more = [plus(i, 1000).after(square(i)) for i in range(4)]
    run = wf.run(base=base, cpus=2)
    assert run.state == "failed"
    f = failure_of(run, bad)
    assert f["kind"] == kind
    assert words in f["reason"]
    assert [x["id"] for x in run.failures()] == [bad.id]
    with pytest.raises(shoal.TaskFailed) as info:
        run.result(bad)
    assert info.value.kind == kind
    if kind == "exit":
        assert info.value.exit_code == 3
    check_cascade(run, bad, [after1, after2])
    check_bystanders(run, squares, end)
    assert [run.result(m) for m in more] == [1000 + i for i in range(4)]
    counts = run.status()["counts"]
    assert counts == {"succeeded": len(wf.tasks) - 3, "failed": 1, "dep_failed": 2}


def test_worker_killed_from_outside(base: Path, tmp_path: Path) -> None:
    """Kill the worker process running a task from another thread, by the pid it reported."""
    pidfile = tmp_path / "victim.pid"
    killed: list[int] = []

    def killer() -> None:
        deadline = time.monotonic() + 20
        while not pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        if pidfile.exists():
            p = int(pidfile.read_text())
            os.kill(p, signal.SIGKILL)
            killed.append(p)

    with shoal.Workflow("killed") as wf:
        squares, end = bystanders()
        victim = wait_to_be_killed.options(timeout=25)(str(pidfile))
        dep = plus(victim.out)
        dep2 = total([dep.out, squares[0].out])
    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    t0 = time.monotonic()
    run = wf.run(base=base, cpus=2)
    thread.join(5)
    assert killed and killed[0] != os.getpid()
    assert time.monotonic() - t0 < 15, "the run waited for the killed task"
    f = failure_of(run, victim)
    assert f["kind"] == "crash"
    assert "SIGKILL" in f["reason"]
    with Reader(run.dir) as r:
        (attempt,) = r.attempts(victim.id)
    assert attempt["exit_code"] == -signal.SIGKILL
    check_cascade(run, victim, [dep, dep2])
    check_bystanders(run, squares, end)


# -- (d) timeout --------------------------------------------------------------------------------
def test_timeout_fails_task_and_run_goes_on(base: Path) -> None:
    with shoal.Workflow("timeout") as wf:
        slow = sleep_long.options(timeout=1)(30)
        dep = plus(slow.out)
        squares, end = bystanders()
    t0 = time.monotonic()
    run = wf.run(base=base, cpus=2)
    took = time.monotonic() - t0
    assert took < 10, f"the timed-out task held the run for {took:.1f} s"
    f = failure_of(run, slow)
    assert "timed out" in f["reason"]
    with pytest.raises(shoal.TaskFailed) as info:
        run.result(slow)
    assert "timed out" in str(info.value)
    check_cascade(run, slow, [dep])
    check_bystanders(run, squares, end)


@pytest.mark.parametrize("where", ["worker", "isolated", "command"])
def test_timeout_is_reported_as_timeout(base: Path, where: str) -> None:
    """A timed-out task fails with kind "timeout" (errors.TaskFailed lists the kinds), not as
    a crash of the process the timeout killed."""
    with shoal.Workflow("timeout-kind") as wf:
        if where == "command":
            slow = shoal.command("sleep 30", timeout=1)()
        else:
            slow = sleep_long.options(timeout=1, isolate=where == "isolated")(30)
    run = wf.run(base=base, cpus=1)
    f = failure_of(run, slow)
    assert "timed out" in f["reason"]
    with pytest.raises(shoal.TaskFailed) as info:
        run.result(slow)
    assert (f["kind"], info.value.kind) == ("timeout", "timeout")


# -- (e) result that cannot be pickled ---------------------------------------------------------
@pytest.mark.parametrize("isolate", [False, True], ids=["worker", "isolated"])
def test_unpicklable_result(base: Path, isolate: bool) -> None:
    with shoal.Workflow("unpicklable") as wf:
        a = lock.options(isolate=isolate)()
        b = open_socket.options(isolate=isolate)()
        ok = square(7)
    run = wf.run(base=base, cpus=2)
    for t, type_name in ((a, "lock"), (b, "socket")):
        f = failure_of(run, t)
        assert f["kind"] == "error"
        assert "cannot be pickled" in f["reason"]
        assert type_name in f["reason"]
    assert run.result(ok) == 49


# -- (f) command exit codes ---------------------------------------------------------------------
def test_command_exit_code(base: Path) -> None:
    fail = shoal.command("echo oops >&2; exit {code}")
    echo = shoal.command("echo {word}")
    with shoal.Workflow("commands") as wf:
        bad = fail(code=5)
        good = echo(word="hello world")
        after = plus(bad["returncode"])
    run = wf.run(base=base, cpus=2)
    f = failure_of(run, bad)
    assert f["kind"] == "exit"
    assert f["exit_code"] == 5
    assert "exited with code 5" in f["reason"]
    with pytest.raises(shoal.TaskFailed) as info:
        run.result(bad)
    assert info.value.exit_code == 5
    assert info.value.kind == "exit"
    assert (Path(f["logs"]) / "stderr").read_text() == "oops\n"
    value = run.result(good)
    assert value["returncode"] == 0
    assert value["stdout"] == "hello world\n"
    check_cascade(run, bad, [after])


# -- (g) isolation ------------------------------------------------------------------------------
def test_isolate_runs_in_a_fresh_process(base: Path) -> None:
    with shoal.Workflow("isolate") as wf:
        w1 = pid()
        w2 = pid().after(w1)
        w3 = pid().after(w2)
        i1 = pid.options(isolate=True)().after(w3)
        i2 = pid.options(isolate=True)().after(i1)
    run = wf.run(base=base, cpus=1)
    workers = {run.result(t) for t in (w1, w2, w3)}
    isolated = [run.result(i1), run.result(i2)]
    assert len(workers) == 1, "tasks in sequence should reuse one persistent worker"
    assert os.getpid() not in workers | set(isolated)
    assert not workers & set(isolated), "an isolated task ran in a worker"
    assert isolated[0] != isolated[1], "two isolated tasks shared a process"


# -- (h) pinning --------------------------------------------------------------------------------
@MULTICORE
def test_cpu_pinning_gives_each_task_its_cores(base: Path, tmp_path: Path) -> None:
    real = sorted(os.sched_getaffinity(0))
    meet = tmp_path / "meet"
    meet.mkdir()
    with shoal.Workflow("pin") as wf:
        a = placement_seen("a", meet=str(meet))
        b = placement_seen("b", meet=str(meet))
        both = placement_seen.options(cpus=2)("both")
    run = wf.run(base=base, cpus=2)
    ra, rb, rboth = (run.result(t) for t in (a, b, both))
    assert (ra["met"], rb["met"]) == ("b", "a"), "the two 1-core tasks did not run together"
    for r in (ra, rb):
        assert len(r["cores"]) == 1
        assert set(r["cores"]) <= set(real)
        assert r["omp"] == "1"
    assert ra["cores"] != rb["cores"], "two tasks running together were pinned to one core"
    assert len(rboth["cores"]) == 2
    assert rboth["omp"] == "2"
    assert sorted(os.sched_getaffinity(0)) == real, "the driver's own affinity changed"


@pytest.mark.parametrize("isolate", [None, False], ids=["default", "worker"])
def test_gpu_ids_are_never_shared(base: Path, isolate: bool | None) -> None:
    real = set(os.sched_getaffinity(0))
    task = placement_seen.options(gpus=2, isolate=isolate)
    with shoal.Workflow("gpus") as wf:
        tasks = [task(f"g{i}", hold=0.4) for i in range(4)]
        cpu_only = placement_seen("cpu")
    run = wf.run(base=base, cpus=8, gpus=4)
    seen = [run.result(t) for t in tasks]
    for r in seen:
        ids = [int(x) for x in r["cuda"].split(",")]
        assert len(ids) == 2 and len(set(ids)) == 2
        assert set(ids) <= set(range(4))
        assert r["rocr"] == r["cuda"] and r["ze"] == r["cuda"]
        assert set(r["cores"]) <= real, "folded cores must be real cores"
    overlapping = 0
    for x, y in combinations(seen, 2):
        if x["start"] < y["end"] and y["start"] < x["end"]:
            overlapping += 1
            assert not set(x["cuda"].split(",")) & set(y["cuda"].split(",")), (x, y)
    assert overlapping, "no two GPU tasks ran at the same time; the check proved nothing"
    assert run.result(cpu_only)["cuda"] == ""


def test_pin_false_leaves_affinity_alone(base: Path) -> None:
    with shoal.Workflow("nopin") as wf:
        a = placement_seen("a")
        b = placement_seen.options(isolate=True)("b")
    run = wf.run(base=base, cpus=2, pin=False)
    expected = sorted(os.sched_getaffinity(0))
    assert run.result(a)["cores"] == expected
    assert run.result(b)["cores"] == expected


# -- (i) MPI ranks -----------------------------------------------------------------------------
@MPI
def test_command_with_two_ranks(base: Path) -> None:
    code = "import os;print(os.environ.get('OMPI_COMM_WORLD_RANK'))"
    ranks = shoal.command(f'{sys.executable} -c "{code}"', ranks=2)
    with shoal.Workflow("mpi-command") as wf:
        t = ranks()
    run = wf.run(base=base, cpus=2)
    if not run.ok:
        pytest.fail(f"the MPI command failed: {run.failures()}")
    assert sorted(run.result(t)["stdout"].split()) == ["0", "1"]


@MPI
def test_python_task_with_two_ranks(base: Path) -> None:
    with shoal.Workflow("mpi-python") as wf:
        t = mpi_rank.options(ranks=2)()
    run = wf.run(base=base, cpus=2)
    if not run.ok:
        pytest.fail(f"the MPI task failed: {run.failures()}")
    assert run.result(t) == {"rank": 0, "size": 2}
    taskdir = run.dir / "tasks" / str(t.id)
    pids = {(taskdir / f"rank-{i}").read_text() for i in (0, 1)}
    assert len(pids) == 2, "the two ranks ran in one process"
    assert str(os.getpid()) not in pids


# -- (j) closures, lambdas, module functions ----------------------------------------------------
def test_closures_and_lambdas(base: Path) -> None:
    add5 = make_adder(5)
    inc = shoal.task(lambda x: x + 1)
    offset = 10

    @shoal.task
    def local(x: int) -> dict[str, int]:
        return {"value": x + offset}

    class Point:
        def __init__(self, x: int) -> None:
            self.x = x

    @shoal.task
    def point(x: int) -> Point:
        return Point(x)

    with shoal.Workflow("closures") as wf:
        a = add5(1)
        b = inc(a.out)
        c = local(b.out)
        d = square(c["value"])
        e = point(3)
    run = wf.run(base=base, cpus=2)
    assert run.ok, run.failures()
    assert run.result(a) == 6
    assert run.result(b) == 7
    assert run.result(c) == {"value": 17}
    assert run.result(d) == 289
    assert run.result(e).x == 3


# -- (k) the store while a run goes on ---------------------------------------------------------
def observe_live(rundir: Path, running: int) -> dict[str, Any]:
    """What ``run.status()``-style queries and ``shoal status --json`` say of a live run."""
    from click.testing import CliRunner

    from shoal.cli.main import main

    with Reader(rundir) as r:
        seen: dict[str, Any] = {
            "meta_state": r.meta()["state"],
            "counts": r.counts(),
            "running_ids": sorted(x["id"] for x in r.running()),
            "running_state_ids": sorted(t.id for t in r.tasks(state="running")),
            "failures": r.failures(),
        }
    out = CliRunner().invoke(main, ["status", str(rundir), "--json"])
    assert out.exit_code == 0, out.output
    seen["cli"] = json.loads(out.output)
    return seen


def check_live(seen: dict[str, Any], total: int) -> None:
    assert seen["meta_state"] == "running"
    assert sum(seen["counts"].values()) == total
    assert seen["counts"]["running"] == 2
    assert len(seen["running_ids"]) == 2
    assert seen["running_ids"] == seen["running_state_ids"]
    assert seen["failures"] == []
    assert seen["cli"]["state"] == "running"
    # the CLI shows status.json's live counts (the store says "pending" for ready tasks too)
    assert sum(seen["cli"]["counts"].values()) == total
    assert seen["cli"]["counts"]["running"] == seen["counts"]["running"]


def wait_running(rundir_of: Any, n: int, limit: float = 15.0) -> Path:
    """Poll the store (not a sleep standing in for an ordering) until ``n`` tasks run."""
    deadline = time.monotonic() + limit
    while True:
        assert time.monotonic() < deadline, f"{n} tasks never ran at once"
        d = rundir_of()
        if d is not None and (d / "shoal.db").exists():
            try:
                with Reader(d) as r:
                    if r.counts().get("running", 0) >= n:
                        return Path(d)
            except shoal.StoreError:
                pass  # the run is creating its tables: a fresh run directory, not a live one
        time.sleep(0.02)


def test_store_readable_while_running(base: Path, tmp_path: Path) -> None:
    """``wf.submit`` returns at once; status and store queries work while tasks run."""
    gate = tmp_path / "gate"
    with shoal.Workflow("live") as wf:
        tasks = [wait_for(str(gate), i) for i in range(4)]
    run = wf.submit(base=base, cpus=2)
    try:
        deadline = time.monotonic() + 15
        while run.status()["counts"].get("running", 0) < 2:
            assert time.monotonic() < deadline, f"tasks never started: {run.status()}"
            assert not run.done, f"the run ended while its tasks wait for the gate: {run}"
            time.sleep(0.02)
        st = run.status()
        assert st["state"] == "running"
        assert st["total"] == 4
        check_live(observe_live(run.dir, 2), 4)
        assert not run.done
        with pytest.raises(shoal.StoreError, match="no result yet"):
            run.result(tasks[0])
    finally:
        gate.touch()
    run.wait(30)
    assert run.done
    assert run.status()["state"] == "succeeded"
    assert [run.result(t) for t in tasks] == [0, 1, 2, 3]


def test_store_readable_while_run_blocks(base: Path, tmp_path: Path) -> None:
    """The same queries from another thread while ``wf.run`` blocks in this one."""
    gate = tmp_path / "gate"
    seen: dict[str, Any] = {}

    def rundir_of() -> Path | None:
        dirs = list(base.glob("live-*"))
        return dirs[0] if dirs else None

    def watcher() -> None:
        try:
            seen.update(observe_live(wait_running(rundir_of, 2), 2))
        except BaseException as err:  # handed to the test thread
            seen["error"] = err
        finally:
            gate.touch()

    with shoal.Workflow("live") as wf:
        tasks = [wait_for(str(gate), i) for i in range(4)]
    thread = threading.Thread(target=watcher, daemon=True)
    thread.start()
    run = wf.run(base=base, cpus=2)
    thread.join(5)
    if "error" in seen:
        raise seen["error"]
    check_live(seen, 4)
    assert run.ok
    assert run.status()["state"] == "succeeded"
    assert [run.result(t) for t in tasks] == [0, 1, 2, 3]
