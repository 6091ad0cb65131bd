"""The backend conformance suite: one abstract test class that every backend must pass.

A subclass provides a ``backend`` fixture: a started :class:`~shoal.backends.base.Backend`
whose run directory is the ``rundir`` fixture below, closed after the test. The tests drive the
backend only through the contract (``nodes``, ``define``, ``submit``, ``poll``, ``cancel``,
``close``) with hand-built :class:`~shoal.backends.base.Job` objects on placements taken from
``backend.nodes()``, the way the driver does, and never submit more work than the nodes hold.

The class name has no ``Test`` prefix, so pytest collects it only through its subclasses.
"""

from __future__ import annotations

import os
import pickle
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.backends.base import Backend, Job
from shoal.backends.execute import with_inputs
from shoal.core.events import Outcome
from shoal.core.resources import Placement, Slot
from shoal.spec.lower import pickle_function
from shoal.spec.refs import StoredRef

WAIT = 30.0  # seconds any test waits for outcomes before it declares them lost


# -- functions the jobs run (module level: the way users write tasks) -------------------------
def add(a: int, b: int = 0) -> int:
    return a + b


def boom(message: str) -> None:
    raise ValueError(message)


def snooze(seconds: float) -> str:
    time.sleep(seconds)
    return "woke"


def getenv(name: str) -> str | None:
    return os.environ.get(name)


def cwd() -> str:
    return os.getcwd()


def whoami() -> tuple[int, int, int, str | None]:
    """pid, parent pid, session id and OMP_NUM_THREADS of the process running the task."""
    return os.getpid(), os.getppid(), os.getsid(0), os.environ.get("OMP_NUM_THREADS")


def customized() -> str | None:
    """What a ``sitecustomize`` module left in builtins (``shoal_sitecustomize``), if one ran."""
    import builtins

    return getattr(builtins, "shoal_sitecustomize", None)


FUNCTIONS: tuple[Callable[..., Any], ...] = (add, boom, snooze, getenv, cwd, whoami, customized)


def payload(*args: Any, **kwargs: Any) -> bytes:
    return pickle.dumps((args, kwargs), protocol=5)


class BackendContract:
    """What every backend must do. Subclasses define the ``backend`` fixture."""

    @pytest.fixture
    def rundir(self, tmp_path: Path) -> Path:
        d = tmp_path / "run"
        d.mkdir()
        return d

    @pytest.fixture
    def backend(self, rundir: Path) -> Iterator[Backend]:  # pragma: no cover - abstract
        raise NotImplementedError("a conformance subclass must provide the backend fixture")
        yield

    # -- helpers ------------------------------------------------------------------------------
    @staticmethod
    def placement(backend: Backend, cores: int = 1, first: int = 0) -> Placement:
        node = backend.nodes()[0]
        ids = node.cores[first : first + cores]
        assert len(ids) == cores, f"{node.describe()} has too few cores for this test"
        return Placement((Slot(0, tuple(ids), (), 0, 1),))

    @staticmethod
    def python_job(
        backend: Backend,
        rundir: Path,
        task: int,
        fn: Callable[..., Any],
        *args: Any,
        first: int = 0,
        **kwargs: Any,
    ) -> Job:
        fid = FUNCTIONS.index(fn)
        backend.define(fid, pickle_function(fn, fn.__name__))
        return Job(
            task=task,
            attempt=1,
            name=fn.__name__,
            kind="python",
            placement=BackendContract.placement(backend, first=first),
            folder=str(rundir / "tasks" / str(task)),
            function=fid,
            payload=payload(*args, **kwargs),
        )

    @staticmethod
    def command_job(
        backend: Backend, rundir: Path, task: int, argv: list[str], first: int = 0
    ) -> Job:
        return Job(
            task=task,
            attempt=1,
            name=argv[0],
            kind="command",
            placement=BackendContract.placement(backend, first=first),
            folder=str(rundir / "tasks" / str(task)),
            argv=argv,
        )

    @staticmethod
    def collect(backend: Backend, n: int, timeout: float = WAIT) -> list[Outcome]:
        """Poll until ``n`` final outcomes (not ``returned``) arrived; fail after ``timeout``."""
        out: list[Outcome] = []
        deadline = time.monotonic() + timeout
        while len(out) < n:
            left = deadline - time.monotonic()
            assert left > 0, f"only {len(out)} of {n} outcomes within {timeout} s: {out}"
            got = backend.poll(min(0.2, left))
            assert not any(o.returned for o in got), f"jobs given back unstarted: {got}"
            out.extend(got)
        return out

    def run_one(self, backend: Backend, job: Job) -> Outcome:
        backend.submit([job])
        (o,) = self.collect(backend, 1)
        assert (o.task, o.attempt) == (job.task, job.attempt)
        return o

    # -- the contract ---------------------------------------------------------------------------
    def test_nodes_have_core_ids(self, backend: Backend) -> None:
        nodes = backend.nodes()
        assert nodes, "a backend must offer at least one node"
        for node in nodes:
            assert node.cores, f"{node.describe()} has no cores"
            assert all(isinstance(c, int) and c >= 0 for c in node.cores)
            assert len(set(node.cores)) == len(node.cores), "core ids must be unique"
            assert len(set(node.gpus)) == len(node.gpus), "GPU ids must be unique"
        assert isinstance(backend.capabilities, frozenset)
        assert isinstance(backend.notes(), list)

    def test_python_job_result_round_trips(self, backend: Backend, rundir: Path) -> None:
        before = time.time()
        o = self.run_one(backend, self.python_job(backend, rundir, 7, add, 40, b=2))
        assert o.ok, o.error
        assert not o.returned
        assert o.result is not None
        assert pickle.loads(o.result) == 42
        assert o.started is not None and o.ended is not None
        assert before - 1 <= o.started <= o.ended <= time.time() + 1

    def test_python_job_that_raises_reports_traceback(self, backend: Backend, rundir: Path) -> None:
        o = self.run_one(backend, self.python_job(backend, rundir, 3, boom, "no convergence"))
        assert not o.ok
        assert o.kind == "error"
        assert o.result is None
        assert "ValueError: no convergence" in o.error
        assert "Traceback" in o.error
        assert "in boom" in o.error  # the frame of the user's function is in the text

    def test_carried_inputs_are_resolved_where_the_job_runs(
        self, backend: Backend, rundir: Path
    ) -> None:
        """A payload may carry the outputs its references name (the driver sends small ones
        that way): the job gets the selected parts as its arguments."""
        job = self.python_job(backend, rundir, 11, add)
        outputs = {4: ("output of 'relax' (#4)", pickle.dumps({"e": [-3, 40]}))}
        second = StoredRef(4, (("item", "e"), ("item", 1)))
        first = StoredRef(4, (("item", "e"), ("item", 0)))
        inner = payload(second, b=first)
        job.payload = with_inputs(inner, outputs)
        o = self.run_one(backend, job)
        assert o.ok, o.error
        assert pickle.loads(o.result or b"") == 37

    def test_a_carried_selection_that_does_not_exist_fails_the_job(
        self, backend: Backend, rundir: Path
    ) -> None:
        job = self.python_job(backend, rundir, 12, add)
        outputs = {4: ("output of 'relax' (#4)", pickle.dumps({"e": 1}))}
        job.payload = with_inputs(payload(StoredRef(4, (("item", "energy"),))), outputs)
        o = self.run_one(backend, job)
        assert not o.ok
        assert o.kind == "error"
        assert "cannot prepare the inputs" in o.error
        assert "output of 'relax' (#4)" in o.error and "['energy']" in o.error, o.error

    def test_command_exit_code(self, backend: Backend, rundir: Path) -> None:
        o = self.run_one(backend, self.command_job(backend, rundir, 1, ["/bin/sh", "-c", "exit 3"]))
        assert not o.ok
        assert o.kind == "exit"
        assert o.exit_code == 3
        assert "3" in o.error

    def test_command_stdout_in_result(self, backend: Backend, rundir: Path) -> None:
        o = self.run_one(
            backend,
            self.command_job(backend, rundir, 2, ["/bin/sh", "-c", "echo hello; echo world"]),
        )
        assert o.ok, o.error
        assert o.result is not None
        value = pickle.loads(o.result)
        assert value["returncode"] == 0
        assert value["stdout"] == "hello\nworld\n"

    def test_job_env_reaches_the_job(self, backend: Backend, rundir: Path) -> None:
        cmd = self.command_job(backend, rundir, 1, ["/bin/sh", "-c", "echo $SHOAL_GREETING"])
        cmd.env = {"SHOAL_GREETING": "hello"}
        o = self.run_one(backend, cmd)
        assert o.ok, o.error
        assert pickle.loads(o.result or b"")["stdout"] == "hello\n"
        job = self.python_job(backend, rundir, 2, getenv, "SHOAL_GREETING")
        job.env = {"SHOAL_GREETING": "bonjour"}
        o = self.run_one(backend, job)
        assert o.ok, o.error
        assert pickle.loads(o.result or b"") == "bonjour"
        # The next job on the same backend must not inherit the previous job's variables.
        o = self.run_one(backend, self.python_job(backend, rundir, 3, getenv, "SHOAL_GREETING"))
        assert o.ok, o.error
        assert pickle.loads(o.result or b"") is None

    def test_a_command_runs_in_its_workdir(self, backend: Backend, rundir: Path) -> None:
        where = rundir / "tasks" / "5"  # what the runtime gives for workdir=shoal.TASK_DIR
        where.mkdir(parents=True)
        cmd = self.command_job(backend, rundir, 5, ["/bin/sh", "-c", "pwd; echo made > here"])
        cmd.workdir = str(where)
        o = self.run_one(backend, cmd)
        assert o.ok, o.error
        assert pickle.loads(o.result or b"")["stdout"] == f"{where.resolve()}\n"
        assert (where / "here").read_text() == "made\n"

    def test_missing_program_fails_cleanly(self, backend: Backend, rundir: Path) -> None:
        o = self.run_one(backend, self.command_job(backend, rundir, 4, ["/no/such/program-shoal"]))
        assert not o.ok
        assert o.kind == "exit"
        assert "/no/such/program-shoal" in o.error

    @pytest.mark.parametrize("kind", ["python", "command"])
    def test_cancel_running_job_fails_quickly(
        self, backend: Backend, rundir: Path, kind: str
    ) -> None:
        if "cancel" not in backend.capabilities:
            pytest.skip(f"backend {backend.name!r} does not offer cancel")
        if kind == "python":
            job = self.python_job(backend, rundir, 5, snooze, 30)
        else:
            job = self.command_job(backend, rundir, 5, ["/bin/sh", "-c", "sleep 30"])
        backend.submit([job])
        # Give it time to really start (a worker up, the program exec'd), then stop it.
        got = backend.poll(0.5)
        assert got == [], got
        t0 = time.monotonic()
        backend.cancel(job.task, job.attempt)
        (o,) = self.collect(backend, 1, timeout=10)
        took = time.monotonic() - t0
        assert (o.task, o.attempt) == (job.task, job.attempt)
        assert not o.ok
        assert not o.returned
        assert o.kind, "a failure must say its kind"
        assert took < 10, f"cancel took {took:.1f} s"

    def test_backend_usable_after_cancel(self, backend: Backend, rundir: Path) -> None:
        if "cancel" not in backend.capabilities:
            pytest.skip(f"backend {backend.name!r} does not offer cancel")
        backend.submit([self.python_job(backend, rundir, 1, snooze, 30)])
        assert backend.poll(0.3) == []
        backend.cancel(1, 1)
        (o,) = self.collect(backend, 1, timeout=10)
        assert not o.ok
        o = self.run_one(backend, self.python_job(backend, rundir, 2, add, 1, 2))
        assert o.ok, o.error
        assert pickle.loads(o.result or b"") == 3

    def test_queued_job_starts_after_the_one_ahead(self, backend: Backend, rundir: Path) -> None:
        """A job queued behind a running one (``after``) begins only once that one ended: it
        was given the same cores (Dask, which knows no slots, started it at once on a free
        thread)."""
        if "prefetch" not in backend.capabilities:
            pytest.skip(f"backend {backend.name!r} does not queue jobs behind running ones")
        first = self.python_job(backend, rundir, 1, snooze, 0.5)
        second = self.python_job(backend, rundir, 2, add, 1)
        second.after = first.task
        backend.submit([first, second])
        outcomes = {o.task: o for o in self.collect(backend, 2)}
        assert outcomes[1].ok and outcomes[2].ok, (outcomes[1].error, outcomes[2].error)
        ended, started = outcomes[1].ended, outcomes[2].started
        assert ended is not None and started is not None
        assert started >= ended, f"the follower began {ended - started:.3f} s before the end"

    def test_cancel_queued_job(self, backend: Backend, rundir: Path) -> None:
        """A job queued behind a running one (``after``) can be cancelled before it starts."""
        if "prefetch" not in backend.capabilities or "cancel" not in backend.capabilities:
            pytest.skip(f"backend {backend.name!r} does not queue jobs behind running ones")
        first = self.python_job(backend, rundir, 1, snooze, 1.0)
        second = self.python_job(backend, rundir, 2, add, 1)
        second.after = first.task
        backend.submit([first, second])
        backend.cancel(second.task, second.attempt)
        outcomes = {o.task: o for o in self.collect(backend, 2)}
        assert outcomes[1].ok, outcomes[1].error
        assert pickle.loads(outcomes[1].result or b"") == "woke"
        assert not outcomes[2].ok
        assert outcomes[2].kind == "cancelled"

    def test_many_jobs_each_reported_once(self, backend: Backend, rundir: Path) -> None:
        """50 jobs, at most one per core at a time (as the core schedules): 50 outcomes."""
        ncores = len(backend.nodes()[0].cores)
        todo = list(range(50))
        free = list(range(ncores))
        on: dict[int, int] = {}  # task -> core index it holds
        seen: dict[int, Outcome] = {}
        deadline = time.monotonic() + WAIT
        while todo or on:
            assert time.monotonic() < deadline, f"{len(on)} jobs never reported: {sorted(on)}"
            jobs = []
            while todo and free:
                t, c = todo.pop(), free.pop()
                on[t] = c
                if t % 5 == 0:
                    job = self.command_job(backend, rundir, t, ["/bin/echo", str(t)], first=c)
                else:
                    job = self.python_job(backend, rundir, t, add, t, b=1000, first=c)
                jobs.append(job)
            if jobs:
                backend.submit(jobs)
            for o in backend.poll(0.2):
                assert not o.returned, f"job {o.task} given back unstarted"
                assert o.task not in seen, f"job {o.task} reported twice"
                assert o.task in on, f"outcome for job {o.task}, which is not running"
                seen[o.task] = o
                free.append(on.pop(o.task))
        assert backend.poll(0.2) == [], "outcomes after every job was reported"
        assert sorted(seen) == list(range(50))
        for t, o in seen.items():
            assert o.ok, o.error
            value = pickle.loads(o.result or b"")
            if t % 5 == 0:
                assert value["stdout"] == f"{t}\n"
            else:
                assert value == t + 1000

    def test_close_twice_is_safe(self, backend: Backend, rundir: Path) -> None:
        o = self.run_one(backend, self.python_job(backend, rundir, 1, add, 1))
        assert o.ok, o.error
        backend.close()
        backend.close()

    def test_close_stops_running_jobs(self, backend: Backend, rundir: Path) -> None:
        backend.submit(
            [
                self.command_job(backend, rundir, 1, ["/bin/sh", "-c", "sleep 30"]),
                self.python_job(backend, rundir, 2, snooze, 30, first=1),
            ]
        )
        assert backend.poll(0.3) == []
        t0 = time.monotonic()
        backend.close()
        assert time.monotonic() - t0 < 10
