"""The Dask backend against the conformance suite, on a real scheduler and workers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conformance import BackendContract
from .dask_fixtures import Cluster

pytest.importorskip("distributed", reason="dask.distributed is not installed (pip: shoal[dask])")

from shoal.backends.dask import DaskBackend, worker_nodes


def test_worker_nodes_from_scheduler_info() -> None:
    info = {
        "workers": {
            "tcp://127.0.0.3:1": {
                "name": "w1",
                "nthreads": 4,
                "resources": {"cores": 4, "gpus": 1},
                "memory_limit": 2 * 2**30,
            },
            "tcp://127.0.0.2:1": {"name": "w0", "nthreads": 2, "resources": {}},
        }
    }
    a, b = worker_nodes(info)
    assert (a.name, a.cores, a.gpus, a.memory) == ("w0", (0, 1), (), 0)
    assert (b.name, b.cores, b.gpus, b.memory) == ("w1", (0, 1, 2, 3), (0,), 2048)


class TestDaskConformance(BackendContract):
    @pytest.fixture
    def backend(self, rundir: Path, dask_cluster: Cluster) -> Iterator[DaskBackend]:
        b = DaskBackend(scheduler_file=str(dask_cluster.scheduler_file), wait_for=2)
        b.start(rundir)
        try:
            yield b
        finally:
            b.close()

    def test_each_worker_is_a_node(self, backend: DaskBackend) -> None:
        assert [n.name for n in backend.nodes()] == ["w0", "w1"]
        assert all(len(n.cores) == 2 for n in backend.nodes())


def sleepy(seconds: float) -> str:
    import time

    time.sleep(seconds)
    return "done"


def test_a_killed_worker_is_a_lost_attempt_retried_by_policy(
    tmp_path: Path,
    dask_cluster: Cluster,
) -> None:
    """The worker process executing the task is killed: that attempt is lost, the retry
    succeeds. (The test used to kill whichever worker had any key in ``processing()``, which
    under load could be a worker busy with another test's leftovers, or one the task was only
    assigned to; it then failed now and then. It now kills the worker that executes this very
    attempt, and counts attempts given back unstarted as costing nothing, as they do.)"""
    import os
    import signal
    import threading

    import shoal
    from shoal.backends.dask import job as daskjob
    from shoal.store.queries import Reader

    backend = DaskBackend(scheduler_file=str(dask_cluster.scheduler_file), wait_for=2)
    fn = shoal.task(sleepy)
    with shoal.Workflow("lost") as wf:
        t = fn.options(retries=1, retry_on="lost")(3.0)
    killed: list[str] = []

    def kill_when_running() -> None:
        for _ in range(800):
            now = backend.client.run(daskjob.executing, on_error="ignore")
            busy = [a for a, keys in now.items() if any(k.startswith("shoal-0-") for k in keys)]
            if busy:
                (pid,) = backend.client.run(os.getpid, workers=busy[:1]).values()
                os.kill(pid, signal.SIGKILL)
                killed.append(busy[0])
                return
            threading.Event().wait(0.025)

    killer = threading.Thread(target=kill_when_running, daemon=True)
    killer.start()
    run = shoal.run(wf, backend=backend, base=tmp_path)
    killer.join(10)
    assert killed, "the task never ran"
    assert run.ok, run.failures()
    assert run.result(t) == "done"
    with Reader(run.dir) as r:
        tries = [a for a in r.attempts(0) if a["outcome"] != "returned"]
    first, second = tries
    assert first["outcome"] != "succeeded" and first["kind"] == "lost", first
    assert second["outcome"] == "succeeded"


def square(x: int) -> int:
    return x * x


def test_a_local_cluster_object_runs_a_workflow(tmp_path: Path) -> None:
    import distributed

    import shoal

    with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=2,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
        resources={"cores": 2},
    ) as cluster:
        backend = DaskBackend(cluster=cluster, wait_for=2)
        fn = shoal.task(square)
        with shoal.Workflow("local-cluster") as wf:
            parts = [fn(i) for i in range(20)]
        run = shoal.run(wf, backend=backend, base=tmp_path)
        assert run.ok
        assert [run.result(t) for t in parts] == [i * i for i in range(20)]
        assert len(backend.nodes()) == 2


def whoami() -> int:
    import shoal

    return shoal.current().task


def test_tasks_in_worker_threads_know_who_they_are(tmp_path: Path, dask_cluster: Cluster) -> None:
    import shoal

    backend = DaskBackend(scheduler_file=str(dask_cluster.scheduler_file), wait_for=2)
    fn = shoal.task(whoami)
    with shoal.Workflow("current") as wf:
        ts = [fn() for _ in range(6)]
    run = shoal.run(wf, backend=backend, base=tmp_path)
    assert [run.result(t) for t in ts] == [t.id for t in ts]


def _reporting(*jobs: Any) -> DaskBackend:
    """Only the reporting part of a backend, without a cluster, with ``jobs`` sent."""
    import queue
    import threading

    b = DaskBackend.__new__(DaskBackend)
    b.lock = threading.RLock()
    b.outbox = queue.SimpleQueue()
    b.open, b.leader, b.held, b.behind = {}, {}, {}, {}
    _send(b, *jobs)
    return b


def _send(b: DaskBackend, *jobs: Any) -> None:
    with b.lock:
        for job in jobs:
            b._open(job)


def _job(task: int, attempt: int = 1, after: int | None = None) -> Any:
    from shoal.backends.base import Job
    from shoal.core.resources import Placement, Slot

    p = Placement((Slot(0, (0,), (), 0, 1),))
    return Job(task, attempt, "t", "python", p, f"/tmp/{task}", after=after)


def _reported(b: DaskBackend) -> list[tuple[int, int]]:
    out = []
    while not b.outbox.empty():
        o = b.outbox.get()
        out.append((o.task, o.attempt))
    return out


def test_a_follower_is_reported_after_the_task_ahead_of_it() -> None:
    """Dask may finish a queued task's future first; the backend holds it back."""
    from shoal.core.events import Outcome

    lead, follower = _job(1), _job(2, after=1)
    b = _reporting(lead, follower)
    b._emit(follower, Outcome(2, 1, True))
    assert b.outbox.empty()
    b._emit(lead, Outcome(1, 1, True))
    assert _reported(b) == [(1, 1), (2, 1)]


def test_a_follower_waits_for_the_attempt_it_followed_not_a_retry() -> None:
    """Task 2 queued behind attempt 1 of task 1, which failed and was sent again behind
    task 2 as attempt 2: task 2's outcome waits for nothing (before the fix both waited
    for each other and the run hung; found by the randomized suite, Dask seed 1)."""
    from shoal.core.events import Outcome

    first, follower = _job(1), _job(2, after=1)
    b = _reporting(first, follower)
    b._emit(first, Outcome(1, 1, False))
    retry = _job(1, attempt=2, after=2)
    _send(b, retry)
    b._emit(retry, Outcome(1, 2, True))  # Dask finished the retry's future first
    assert _reported(b) == [(1, 1)]
    b._emit(follower, Outcome(2, 1, True))
    assert _reported(b) == [(2, 1), (1, 2)]
    assert b.open == {} and b.leader == {} and b.held == {}


def _gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists()


def test_cancel_kills_the_command_process_group(tmp_path: Path, dask_cluster: Cluster) -> None:
    """Cancelling a running command ends its processes, not only the reported outcome
    (``client.run(..., wait=False)`` with a plain function was refused by distributed, and
    shoal swallowed it: the ``sleep`` ran on to its end)."""
    import time

    from shoal.backends.base import Job

    from .conformance import BackendContract

    backend = DaskBackend(scheduler_file=str(dask_cluster.scheduler_file), wait_for=2)
    backend.start(tmp_path)
    try:
        pids = tmp_path / "pids"
        line = f"sleep 60 & echo $! >> {pids}; echo $$ >> {pids}; wait"
        job: Job = BackendContract.command_job(backend, tmp_path, 1, ["/bin/sh", "-c", line])
        backend.submit([job])
        for _ in range(400):
            if pids.exists() and len(pids.read_text().split()) == 2:
                break
            time.sleep(0.025)
        procs = [int(x) for x in pids.read_text().split()]
        assert not any(_gone(p) for p in procs)
        backend.cancel(1, 1)
        (o,) = BackendContract.collect(backend, 1)
        assert not o.ok and o.kind == "crash", o
        for _ in range(200):  # SIGTERM reaches the group at once; give the kernel a moment
            if all(_gone(p) for p in procs):
                break
            time.sleep(0.025)
        assert [p for p in procs if not _gone(p)] == []
    finally:
        backend.close()


def pid_then_sleep(path: str, seconds: float) -> None:
    import os
    import time

    with open(path, "w") as fh:
        fh.write(str(os.getpid()))
    time.sleep(seconds)


def test_a_timed_out_python_task_is_stopped_and_its_worker_restarted(
    tmp_path: Path, dask_cluster: Cluster
) -> None:
    """A Python task in a worker thread cannot be interrupted: the worker process that runs it
    ends (its nanny starts a new one), the task fails with ``timeout``, and the work behind it
    runs on the fresh worker."""
    import shoal
    from shoal.store.queries import Reader

    backend = DaskBackend(scheduler_file=str(dask_cluster.scheduler_file), wait_for=2)
    marker = tmp_path / "pid"
    hog = shoal.task(pid_then_sleep)
    sq = shoal.task(square)
    with shoal.Workflow("timeout") as wf:
        stuck = hog.options(timeout=1, cpus=1)(str(marker), 60)
        after = [sq(i) for i in range(8)]
    run = shoal.run(wf, backend=backend, base=tmp_path)
    assert not run.ok
    with Reader(run.dir) as r:
        (a,) = r.attempts(stuck.id)
    assert a["kind"] == "timeout", a
    pid = int(marker.read_text())
    assert _gone(pid), f"the worker process {pid} that ran the timed-out task still runs"
    assert [run.result(t) for t in after] == [i * i for i in range(8)]


def test_tasks_of_a_worker_that_left_for_good_run_on_the_others(tmp_path: Path) -> None:
    """A worker that left and did not come back within ``grace`` kept receiving tasks, and
    each failed at once ('lost'); they now run on the other workers."""
    import shoal

    from .dask_fixtures import start_cluster, stop_cluster

    c = start_cluster(tmp_path / "cluster", workers=2)
    try:
        backend = DaskBackend(scheduler_file=str(c.scheduler_file), wait_for=2, grace=1.0)
        c.procs[2].terminate()  # worker w1 (with its nanny) leaves for good
        c.procs[2].wait(30)
        fn = shoal.task(square)
        with shoal.Workflow("left") as wf:
            parts = [fn(i) for i in range(40)]
        run = shoal.run(wf, backend=backend, base=tmp_path)
        assert run.ok, run.failures()
        assert [run.result(t) for t in parts] == [i * i for i in range(40)]
    finally:
        stop_cluster(c)


def _allowed_failures(dask_scheduler: Any) -> int:
    return int(dask_scheduler.allowed_failures)


def test_a_shared_schedulers_allowed_failures_is_put_back(dask_cluster: Cluster) -> None:
    """shoal sets allowed_failures to 0 while it runs (its retry policy decides about lost
    workers) and puts the scheduler's own value back when it closes (issue 15, point 21)."""
    from distributed import Client

    with Client(scheduler_file=str(dask_cluster.scheduler_file), timeout=30) as c:
        before = c.run_on_scheduler(_allowed_failures)
        assert before != 0, "the fixture's scheduler should have Dask's default (3)"
        b = DaskBackend(scheduler_file=str(dask_cluster.scheduler_file), wait_for=2)
        try:
            assert c.run_on_scheduler(_allowed_failures) == 0
            assert any("allowed_failures" in note for note in b._notes)
        finally:
            b.close()
        assert c.run_on_scheduler(_allowed_failures) == before


def _imported(name: str) -> bool:
    import sys

    return name in sys.modules


def test_workers_preload_modules_when_the_backend_starts(
    tmp_path: Path, dask_cluster: Cluster
) -> None:
    """The run option ``preload`` reaches the Dask workers: each imports the modules when the
    backend starts; one that cannot is said once, as a note."""
    backend = DaskBackend(scheduler_file=str(dask_cluster.scheduler_file), wait_for=2)
    backend.preload(("tabnanny", "no_such_module_for_shoal"))
    try:
        backend.start(tmp_path)
        got = backend.client.run(_imported, "tabnanny")
        assert got and all(got.values()), got
        notes = [n for n in backend.notes() if "preload" in n]
        assert len(notes) == 1 and "no_such_module_for_shoal" in notes[0], notes
    finally:
        backend.close()
