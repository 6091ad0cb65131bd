"""The local backend against the conformance suite."""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import shoal
from shoal.backends import processes
from shoal.backends.base import Job
from shoal.backends.local import LocalBackend
from shoal.core.events import Outcome
from shoal.core.resources import Placement, Slot

from .conformance import BackendContract, customized, cwd, snooze, whoami


def _started(rundir: Path, cpus: int) -> Iterator[LocalBackend]:
    b = LocalBackend(cpus=cpus, pin="fold")
    b.start(rundir)
    try:
        yield b
    finally:
        b.close()


class TestLocalConformance(BackendContract):
    @pytest.fixture
    def backend(self, rundir: Path) -> Iterator[LocalBackend]:
        yield from _started(rundir, 4)


# -- outcomes of short commands share the driver's wake-ups -----------------------------------
# Commands run from the workers, whose replies wait for company (LocalBackend.command_hold);
# isolated and multi-rank tasks run in the driver's process chains (processes.HOLD). Both
# must hold a success only while it is worth it, and never a failure.
class _Chains:
    """Process chains on their own, polled the way the local backend polls them."""

    def __init__(self, folder: Path) -> None:
        self.woken = threading.Event()
        env = {os.fsencode(k): os.fsencode(v) for k, v in os.environ.items()}
        self.runner = processes.Processes(
            lambda job: (job.argv, env, None), set(), self.woken.set, folder, 2
        )

    def submit(self, jobs: list[Job]) -> None:
        for job in jobs:
            self.runner.start(job)

    def poll(self, timeout: float) -> list[Outcome]:
        self.woken.wait(timeout)
        self.woken.clear()
        return self.runner.drain()


@pytest.fixture(params=["workers", "chains"])
def runner(request: pytest.FixtureRequest, rundir: Path) -> Iterator[Any]:
    if request.param == "workers":
        yield from _started(rundir, 2)
    else:
        chains = _Chains(rundir)
        try:
            yield chains
        finally:
            chains.runner.close()


def _hold(runner: Any, seconds: float, monkeypatch: pytest.MonkeyPatch) -> None:
    if isinstance(runner, LocalBackend):
        runner.command_hold = seconds  # read when its workers start: none has yet
    else:
        monkeypatch.setattr(processes, "HOLD", seconds)


def _chain(b: Any, rundir: Path, first: list[str], second: list[str]) -> None:
    """Submit two commands on one slot, the second queued behind the first (prefetched)."""
    slot = Placement((Slot(0, (0,), (), 0, 1),))
    a = Job(1, 1, "first", "command", slot, str(rundir / "tasks" / "1"), argv=first)
    c = Job(2, 1, "second", "command", slot, str(rundir / "tasks" / "2"), argv=second, after=1)
    b.submit([a, c])


def _polls(b: Any, n: int, limit: float = 20.0) -> list[tuple[float, list[int]]]:
    """(seconds since the start, task ids) of each poll that returned outcomes, until n came.
    Each poll may wait 5 s: only a wake-up (or a held outcome falling due) ends it sooner, and
    a poll that ends takes every outcome there is, held or not."""
    t0 = time.monotonic()
    got: list[tuple[float, list[int]]] = []
    while sum(len(ids) for _, ids in got) < n:
        assert time.monotonic() - t0 < limit, f"outcomes missing: {got}"
        out = b.poll(5.0)
        if out:
            got.append((time.monotonic() - t0, [o.task for o in out]))
    return got


CONTRACT = BackendContract()  # its helpers: run one job, collect outcomes


@pytest.fixture
def local(rundir: Path) -> Iterator[LocalBackend]:
    yield from _started(rundir, 2)


@pytest.fixture
def rundir(tmp_path: Path) -> Path:
    d = tmp_path / "run"
    d.mkdir()
    return d


def test_a_finished_command_waits_for_the_one_queued_behind_it(
    runner: Any, rundir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _hold(runner, 30.0, monkeypatch)
    _chain(runner, rundir, ["/bin/true"], ["/bin/sh", "-c", "sleep 0.3"])
    assert _polls(runner, 2)[0][1] == [1, 2]  # one wake-up for both


@pytest.mark.parametrize(
    ("hold", "first"),
    [(0.2, "/bin/true"), (30.0, "/bin/false")],
    ids=["success-held-until-its-time-is-up", "failure-never-held"],
)
def test_an_outcome_does_not_wait_for_a_slow_follower(
    runner: Any,
    rundir: Path,
    monkeypatch: pytest.MonkeyPatch,
    hold: float,
    first: str,
) -> None:
    """The follower takes far longer than expected (3 s): a success comes back when its hold
    is up, a failure at once; neither waits for the follower."""
    _hold(runner, hold, monkeypatch)
    _chain(runner, rundir, [first], ["/bin/sh", "-c", "sleep 3"])
    polls = _polls(runner, 2)
    assert polls[0][1] == [1] and polls[0][0] < 2.5, polls
    assert polls[1][1] == [2]


# -- commands started from the workers ---------------------------------------------------------
def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:  # reaped in between
        return False


def _gone(pid: int, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _pid(path: Path, within: float = 10.0) -> int:
    deadline = time.monotonic() + within
    while not (path.exists() and path.read_text().strip()):
        assert time.monotonic() < deadline, f"{path} never written"
        time.sleep(0.02)
    return int(path.read_text())


def _command(b: LocalBackend, rundir: Path, task: int, line: str, **fields: Any) -> Job:
    job = BackendContract.command_job(b, rundir, task, ["/bin/sh", "-c", line])
    for k, v in fields.items():
        setattr(job, k, v)
    return job


def test_what_a_command_leaves_running_is_stopped_when_it_ends(
    local: LocalBackend, rundir: Path
) -> None:
    bg = rundir / "bg.pid"
    o = CONTRACT.run_one(local, _command(local, rundir, 1, f"sleep 30 & echo $! > {bg}"))
    assert o.ok, o.error
    assert _gone(_pid(bg)), "the command's background process outlived it"


def test_close_stops_a_running_command_and_its_children(local: LocalBackend, rundir: Path) -> None:
    me, bg = rundir / "me.pid", rundir / "bg.pid"
    local.submit([_command(local, rundir, 1, f"echo $$ > {me}; sleep 30 & echo $! > {bg}; wait")])
    pids = _pid(me), _pid(bg)
    local.close()
    assert all(_gone(p) for p in pids), "close() left the command or its child running"


def test_a_command_does_not_outlive_its_worker(local: LocalBackend, rundir: Path) -> None:
    """A worker killed from outside while its command runs: the command (a session of its
    own, so not in the worker's group) and its children are stopped, and only that task
    fails."""
    me, bg = rundir / "me.pid", rundir / "bg.pid"
    # Longer than collect() waits: the death must be seen while the command still runs.
    line = f"echo $$ > {me}; sleep 300 & echo $! > {bg}; wait"
    local.submit([_command(local, rundir, 1, line)])
    pids = _pid(me), _pid(bg)
    (w,) = local.workers
    os.kill(w.proc.pid, signal.SIGKILL)
    (o,) = CONTRACT.collect(local, 1)
    assert not o.ok and "died" in (o.error or ""), o
    assert all(_gone(p) for p in pids), "the command outlived its worker"
    o = CONTRACT.run_one(local, _command(local, rundir, 2, "echo after"))
    assert o.ok, o.error


def test_a_cancelled_command_gets_sigterm_first(local: LocalBackend, rundir: Path) -> None:
    """Stopping a command sends SIGTERM to its process group, so it can clean up."""
    mark, me = rundir / "term", rundir / "me.pid"
    line = f"trap 'echo cleaned > {mark}; exit 7' TERM; echo $$ > {me}; sleep 30 & wait"
    local.submit([_command(local, rundir, 1, line)])
    _pid(me)
    local.cancel(1, 1)
    (o,) = BackendContract.collect(local, 1, timeout=10)
    assert not o.ok
    assert o.exit_code == 7, o.error
    assert mark.read_text() == "cleaned\n"


def test_a_command_that_ignores_sigterm_is_killed_after_the_grace_period(
    local: LocalBackend, rundir: Path
) -> None:
    me = rundir / "me.pid"
    local.submit([_command(local, rundir, 1, f"trap '' TERM; echo $$ > {me}; sleep 30")])
    _pid(me)
    t0 = time.monotonic()
    local.cancel(1, 1)
    (o,) = BackendContract.collect(local, 1, timeout=15)
    took = time.monotonic() - t0
    assert not o.ok and o.kind == "crash", o
    assert "SIGKILL" in o.error
    assert 2.0 < took < 12.0, f"killed after {took:.1f} s (grace: 3 s)"


def test_a_command_is_found_on_its_own_path(
    local: LocalBackend, rundir: Path, tmp_path: Path
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    probe = bin_dir / "shoal-probe"
    probe.write_text("#!/bin/sh\necho found $SHOAL_TASK\n")
    probe.chmod(0o755)
    job = BackendContract.command_job(local, rundir, 3, ["shoal-probe"])
    job.env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    o = CONTRACT.run_one(local, job)
    assert o.ok, o.error
    assert pickle.loads(o.result or b"")["stdout"] == "found 3\n"
    o = CONTRACT.run_one(local, BackendContract.command_job(local, rundir, 4, ["shoal-probe"]))
    assert not o.ok and o.exit_code == 127
    assert "cannot start 'shoal-probe'" in o.error


def test_a_command_runs_in_its_workdir_and_the_worker_does_not_stay_there(
    rundir: Path, tmp_path: Path
) -> None:
    where = tmp_path / "here"
    where.mkdir()
    for b in _started(rundir, 1):  # one core: one worker runs all three
        o = CONTRACT.run_one(b, _command(b, rundir, 1, "pwd", workdir=str(where)))
        assert o.ok, o.error
        assert pickle.loads(o.result or b"")["stdout"] == f"{where}\n"
        o = CONTRACT.run_one(b, BackendContract.python_job(b, rundir, 2, cwd))
        assert o.ok, o.error
        assert pickle.loads(o.result or b"") != str(where)
        missing = str(tmp_path / "nowhere")
        o = CONTRACT.run_one(b, _command(b, rundir, 3, "pwd", workdir=missing))
        assert not o.ok and o.exit_code == 127
        assert "its workdir" in o.error and "does not exist" in o.error


# -- workers come from a fork server -------------------------------------------------------------
class TestLocalDirectConformance(BackendContract):
    """The same contract with workers started as interpreters of their own (no fork server:
    what the backend falls back to when the zygote cannot start or dies)."""

    @pytest.fixture
    def backend(self, rundir: Path) -> Iterator[LocalBackend]:
        b = LocalBackend(cpus=4, pin="fold")
        b.fork_server = False
        b.start(rundir)
        try:
            yield b
        finally:
            b.close()


def test_workers_are_forked_session_leaders(local: LocalBackend, rundir: Path) -> None:
    o = CONTRACT.run_one(local, BackendContract.python_job(local, rundir, 1, whoami))
    assert o.ok, o.error
    pid, ppid, sid, threads = pickle.loads(o.result or b"")
    assert local._zygote is not None
    assert ppid == local._zygote.proc.pid, "the worker was not forked by the zygote"
    assert sid == pid, "a worker must lead its own session (its group is killed with it)"
    assert threads == "1"


def test_when_the_fork_server_dies_workers_start_directly(
    local: LocalBackend, rundir: Path
) -> None:
    o = CONTRACT.run_one(local, BackendContract.python_job(local, rundir, 1, whoami))
    assert o.ok, o.error
    first = pickle.loads(o.result or b"")[0]
    assert local._zygote is not None
    local._zygote.proc.kill()
    local._zygote.proc.wait()
    # The first worker goes on; a second one (both cores busy) must start without the zygote.
    local.submit([BackendContract.python_job(local, rundir, 2, snooze, 1.0)])
    o = CONTRACT.run_one(local, BackendContract.python_job(local, rundir, 3, whoami, first=1))
    assert o.ok, o.error
    pid, ppid, _, _ = pickle.loads(o.result or b"")
    assert pid != first and ppid == os.getpid(), "the new worker was not started directly"
    (o,) = CONTRACT.collect(local, 1)
    assert o.ok, o.error


# -- the fork server starts without site for commands, and early ---------------------------------
@pytest.mark.parametrize(
    "where", ["python-run", "commands-run-same-worker", "commands-run-new-worker"]
)
def test_python_tasks_get_what_site_would_have_loaded(
    tmp_path: Path, rundir: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """For a run of commands the zygote starts with -S (site is a third of an interpreter's
    start). A Python task must still see what site does (here: a sitecustomize), whether
    it runs in a worker forked for commands (which reads site-packages itself), in a worker
    forked later for Python tasks (the zygote reads them first), or in a run that had
    Python tasks from the start (no -S at all)."""
    custom = tmp_path / "custom"
    custom.mkdir()
    (custom / "sitecustomize.py").write_text(
        "import builtins\nbuiltins.shoal_sitecustomize = 'ran'\n"
    )
    monkeypatch.syspath_prepend(str(custom))  # workers get the driver's path (PYTHONPATH)
    b = LocalBackend(cpus=2, pin="fold")
    b.start(rundir)
    try:
        b.warm(1, 1, python=where == "python-run")
        assert b._zygote is not None
        cmdline = psutil.Process(b._zygote.proc.pid).cmdline()
        flags = cmdline[: cmdline.index("-m")]
        assert ("-S" in flags) == (where != "python-run"), cmdline
        if where == "commands-run-new-worker":  # worker-1 busy: the task gets a new worker
            b.submit([_command(b, rundir, 1, "sleep 2")])
        else:
            o = CONTRACT.run_one(b, _command(b, rundir, 1, "true"))
            assert o.ok, o.error
        o = CONTRACT.run_one(b, BackendContract.python_job(b, rundir, 2, customized))
        assert o.ok, o.error
        assert pickle.loads(o.result or b"") == "ran"
        expected = "worker-2" if where == "commands-run-new-worker" else "worker-1"
        assert o.worker == expected, o.worker
    finally:
        b.close()


def test_a_booted_fork_server_writes_to_the_run_directory(rundir: Path) -> None:
    """boot() starts the zygote before the run directory exists; start() points its output
    there."""
    b = LocalBackend(cpus=1, pin="fold")
    b.boot()
    try:
        assert b._zygote is not None
        pid = b._zygote.proc.pid
        b.start(rundir)
        o = CONTRACT.run_one(b, BackendContract.command_job(b, rundir, 1, ["/bin/true"]))
        assert o.ok, o.error  # the zygote read "log" before this worker's fork
        log = rundir / "workers" / "zygote.log"
        assert os.readlink(f"/proc/{pid}/fd/1") == os.readlink(f"/proc/{pid}/fd/2") == str(log)
    finally:
        b.close()


def _zygotes() -> list[psutil.Process]:
    me = psutil.Process()
    return [p for p in me.children() if "shoal.backends.local.zygote" in " ".join(p.cmdline())]


def test_a_refused_workflow_leaves_no_fork_server(tmp_path: Path) -> None:
    """The fork server starts before the workflow is checked: a refusal must stop it."""
    assert not _zygotes()

    @shoal.task
    def wide() -> None:
        pass

    with shoal.Workflow("wide") as wf:
        wide.options(cpus=64)()
    with pytest.raises(shoal.ResourceError, match="64"):
        wf.run(cpus=2, base=tmp_path)
    assert not _zygotes(), "the fork server outlived a refused run"
    assert not list(tmp_path.iterdir()), "a refused run left a directory behind"


@shoal.task
def _plus_one(x: int) -> int:
    return x + 1


def test_one_backend_object_serves_runs_one_after_another(tmp_path: Path) -> None:
    """A backend passed to several runs (configured once) starts afresh after each close,
    also after a run that was refused."""
    b = LocalBackend(cpus=2, pin="fold")
    with shoal.Workflow("refused") as wf:
        _plus_one.options(cpus=8)(0)
    with pytest.raises(shoal.ResourceError):
        wf.run(backend=b, base=tmp_path)
    for i in range(2):
        with shoal.Workflow(f"again{i}") as wf:
            t = _plus_one(i)
            c = shoal.command("echo {x}")(x=i)
        run = wf.run(backend=b, base=tmp_path)
        assert run.result(t) == i + 1
        assert run.result(c)["stdout"] == f"{i}\n"


DRIVER = """
import os, sys, time
import shoal

@shoal.task
def long(path):
    with open(path, "w") as fh:
        fh.write(str(os.getpid()))
    time.sleep(300)

base = sys.argv[1]
with shoal.Workflow("orphans") as wf:
    long(base + "/python.pid")
    long.options(isolate=True)(base + "/isolated.pid")
    shoal.command("sh -c 'echo $$ > \\"$1\\"; exec sleep 300' sh {p}")(p=base + "/command.pid")
wf.run(cpus=3, base=base)
"""


def test_a_killed_driver_leaves_nothing_of_its_run_running(tmp_path: Path) -> None:
    """SIGKILL the driver while a worker runs a Python task, a worker runs a command and a
    chain runs an isolated task: the fork server ends all three, so that a resumed run does
    not find them still running beside its own attempts."""
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        pids = {
            name: _pid(tmp_path / f"{name}.pid", 60) for name in ("python", "isolated", "command")
        }
    finally:
        proc.kill()
        proc.wait()
    left = [name for name, pid in pids.items() if not _gone(pid, 15)]
    for pid in pids.values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"still running after the driver died: {left}"


# -- a fork server forked from the driver ---------------------------------------------------------
LINEAGE = """
import colorsys, contextlib, json, os, sys, threading
import shoal

@shoal.task
def what_the_worker_has(pipe):
    # a value the driver set on a module (a fork has it); whether a descriptor of the
    # driver's is open here
    fds = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            fds.append(os.readlink(f"/proc/self/fd/{fd}"))
    return getattr(colorsys, "_shoal_mark", None), pipe in fds

base, preload, thread = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3] == "thread"
stop = threading.Event()
if thread:  # a thread of the driver's: it may not fork
    threading.Thread(target=stop.wait).start()
r, w = os.pipe()
colorsys._shoal_mark = "set in the driver"
with shoal.Workflow("lineage") as wf:
    t = what_the_worker_has(os.readlink(f"/proc/self/fd/{w}"))
run = wf.run(cpus=1, base=base, progress=False, preload=preload)
stop.set()
mark, holds = run.result(t)
print(json.dumps({"mark": mark, "holds": holds}))
"""


def _lineage(base: Path, preload: list[str], thread: bool = False) -> dict[str, Any]:
    """Run LINEAGE in an interpreter of its own: this one may have threads of other tests
    (Dask leaves one behind), and the fork of the driver is only for a driver without."""
    import json

    proc = subprocess.run(
        [sys.executable, "-c", LINEAGE, str(base), json.dumps(preload), "thread" if thread else ""],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout.splitlines()[-1]))


def test_the_fork_server_is_a_fork_of_the_driver_when_it_has_the_modules(tmp_path: Path) -> None:
    """Every module to preload is imported in the driver already: the fork server is a fork
    of it, so the workers have them (and what the driver did to them) at no cost, and none of
    the driver's descriptors (a peer of the driver's would never see it close)."""
    assert _lineage(tmp_path, ["colorsys"]) == {"mark": "set in the driver", "holds": False}


def test_the_fork_server_is_a_new_interpreter_otherwise(tmp_path: Path) -> None:
    """No preload, or another thread running in the driver (a fork copies only the calling
    thread: locks the others hold would stay held): a new interpreter, as before."""
    assert _lineage(tmp_path, [])["mark"] is None
    assert _lineage(tmp_path, ["colorsys"], thread=True)["mark"] is None


def test_modules_to_preload_told_after_boot_are_imported_before_the_first_fork(
    tmp_path: Path,
) -> None:
    """A jobflow run boots the fork server while it turns the flow into tasks, and names the
    jobs' modules after: they are imported before any worker is forked."""
    b = LocalBackend(cpus=1, pin="fold")
    b.fork_driver = False  # a new interpreter, which has not imported the module
    b.boot()
    b.preload(("wave",))  # a module nothing here imports
    with shoal.Workflow("told") as wf:
        t = _preloaded("wave")
    assert wf.run(backend=b, base=tmp_path, progress=False).result(t) is True


@shoal.task
def _preloaded(name: str) -> bool:
    return name in sys.modules


@shoal.task
def _blas_threads() -> list[int]:
    from threadpoolctl import threadpool_info

    return [pool["num_threads"] for pool in threadpool_info()]


@pytest.mark.parametrize("fork_driver", [True, False])
def test_numerical_thread_pools_loaded_before_the_fork_fit_the_task(
    tmp_path: Path, fork_driver: bool
) -> None:
    """numpy preloaded (or imported by the driver the fork server is a fork of) sized its
    BLAS thread pool before the worker's OMP_NUM_THREADS was set: the worker sizes it again to
    its task's cores (a pinned one-core task with a machine-wide pool ran LAPACK 70x slower)."""
    import numpy  # noqa: F401  # loaded here: the fork of the driver has it

    b = LocalBackend(cpus=2, pin="fold")
    b.fork_driver = fork_driver
    with shoal.Workflow("blas") as wf:
        t = _blas_threads()
    pools = wf.run(backend=b, base=tmp_path, progress=False, preload=["numpy"]).result(t)
    assert pools, "numpy's BLAS was not loaded in the worker"
    assert set(pools) == {1}, pools
