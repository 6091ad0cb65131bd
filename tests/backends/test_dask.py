"""The Dask backend against the conformance suite, on a real scheduler and workers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

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
    import os
    import signal
    import threading

    import shoal
    from shoal.store.queries import Reader

    backend = DaskBackend(scheduler_file=str(dask_cluster.scheduler_file), wait_for=2)
    fn = shoal.task(sleepy)
    with shoal.Workflow("lost") as wf:
        t = fn.options(retries=1, retry_on="lost")(3.0)

    def kill_when_running() -> None:
        # kill the worker process (not its nanny) that runs the task, once it runs
        for _ in range(400):
            busy = [addr for addr, keys in backend.client.processing().items() if keys]
            if busy:
                pids = backend.client.run(os.getpid, workers=busy[:1])
                os.kill(next(iter(pids.values())), signal.SIGKILL)
                return
            threading.Event().wait(0.025)

    killer = threading.Thread(target=kill_when_running, daemon=True)
    killer.start()
    run = shoal.run(wf, backend=backend, base=tmp_path)
    killer.join(10)
    assert run.ok, run.failures()
    assert run.result(t) == "done"
    with Reader(run.dir) as r:
        first, second = r.attempts(0)
    assert first["outcome"] != "succeeded" and first["kind"] == "lost"
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


def test_a_follower_is_reported_after_the_task_ahead_of_it() -> None:
    """Dask may finish a queued task's future first; the backend holds it back."""
    import queue
    import threading

    from shoal.backends.base import Job
    from shoal.core.events import Outcome
    from shoal.core.resources import Placement, Slot

    b = DaskBackend.__new__(DaskBackend)  # only the reporting part, no cluster
    b.lock = threading.Lock()
    b.outbox = queue.SimpleQueue()
    b.open = {1, 2}
    b.held = {}
    p = Placement((Slot(0, (0,), (), 0, 1),))
    lead = Job(1, 1, "a", "python", p, "/tmp/a")
    follower = Job(2, 1, "b", "python", p, "/tmp/b", after=1)
    b._emit(follower, Outcome(2, 1, True))
    assert b.outbox.empty()
    b._emit(lead, Outcome(1, 1, True))
    assert [b.outbox.get().task, b.outbox.get().task] == [1, 2]
