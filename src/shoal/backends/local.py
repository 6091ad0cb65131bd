"""The local backend: one node (this machine, or a pretend larger one), local processes.

* Python tasks run in persistent worker processes (``worker.py``), one task per worker at a
  time, started on demand and reused; ``isolate=True`` runs a task in a fresh process.
  Workers are forked by one fork server per run (``zygote.py``), or started directly if it
  cannot start or died.
* Single-rank commands are started by the workers too (``posix_spawn``), so that starting
  them does not compete with the driver for its interpreter lock. Multi-rank tasks and
  isolated Python tasks run as child processes of the driver (``processes.py``); several
  ranks start through the MPI launcher (``mpiexec -n {ranks}`` by default).
* Every task is pinned: CPU affinity to its cores (set on the launching thread just before the
  child is spawned, so it holds from the first instruction), ``OMP_NUM_THREADS`` to its cores,
  ``CUDA_VISIBLE_DEVICES``/``ROCR_VISIBLE_DEVICES``/``ZE_AFFINITY_MASK`` to its GPUs.
* A node pretended larger than the machine folds core ids onto the real cores (``pin="fold"``,
  the default in that case) and says so once; ``pin=False`` turns CPU pinning off.
* A worker that dies (segfault, out-of-memory kill, ``os._exit``) fails only the task it was
  executing, which its marker file names (worker.py); every other task handed to it comes
  back unstarted, costing no attempt. The worker is replaced on demand.
* A running Python task is stopped (timeout, cancel) by killing its worker, but only once the
  marker shows that very attempt executing: until then it may still be queued there, or have
  finished with its outcome on the way, and the kill would hit an innocent task.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pickle
import select
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from shoal.backends import worker
from shoal.backends.base import Backend, Job, job_command, pooled
from shoal.backends.execute import (
    GRACE,
    attempt_vars_bytes,
    describe_exit,
    killpg,
    leader,
    tail,
)
from shoal.backends.processes import Environment, Processes
from shoal.backends.wire import Wire
from shoal.backends.zygote import Forked, Zygote, launch
from shoal.core.events import Outcome
from shoal.core.resources import Node
from shoal.errors import BackendError, DefinitionError


def detect_gpus() -> int:
    """GPUs visible to this process: CUDA_VISIBLE_DEVICES if set, else /dev/nvidia* devices."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return len([x for x in env.split(",") if x.strip() and x.strip() != "-1"])
    try:
        return len([d for d in os.listdir("/dev") if d[6:].isdigit() and d.startswith("nvidia")])
    except OSError:
        return 0


@dataclass(slots=True)
class _Worker:
    index: int
    proc: subprocess.Popen[bytes] | Forked
    conn: Wire
    cpus: int  # cores per task it runs: thread variables are set once, when it starts
    ready: bool = False  # it said hello: it started and imported what it needs
    fns: set[int] = field(default_factory=set)
    envs: set[int] = field(default_factory=set)
    command_envs: set[int] = field(default_factory=set)
    jobs: deque[Job] = field(default_factory=deque)  # jobs[0] runs, the rest wait behind it
    marker: str = ""  # its marker file: what it executes now (worker.running)
    aim: tuple[int, int] | None = None  # the attempt it was killed to stop, if it was
    born: float = 0.0  # monotonic time it was asked for


MAX_FRESH_DEATHS = 5  # then the workers themselves are broken: stop replacing them
# Seconds past the grace period a worker has to report a command it was told to stop; after
# that the driver stops the command and the worker itself (the worker may be stopped or hung).
TRUST = 2.0
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def fold(cores: tuple[int, ...], real: list[int]) -> list[int]:
    """Real cores for a placement on a pretend node larger than the machine: as many distinct
    real cores as the task has cores (up to all of them), starting where its first core lands."""
    n = len(real)
    if not cores:
        return []
    start = cores[0] % n
    return sorted(real[(start + j) % n] for j in range(min(len(cores), n)))


def _python_path() -> str:
    """The driver's import path (and its working directory) for Python processes it starts,
    so that functions pickled by reference import there as they do here."""
    paths = [p for p in sys.path if p]
    if os.getcwd() not in paths:
        paths.insert(0, os.getcwd())
    return os.pathsep.join(paths)


def _kill_group(w: _Worker) -> None:
    """Kill a worker and every process its tasks started (its own process group). The worker
    itself too: one just forked may not lead its group yet."""
    pid = w.proc.pid
    if pid <= 0:  # it never started
        return
    killpg(pid, signal.SIGKILL)
    if w.proc.returncode is None:  # not known to have ended: its pid is still its own
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


class LocalBackend(Backend):
    """Runs everything on this machine. ``cpus``/``gpus``/``memory`` pretend another size."""

    name = "local"
    capabilities = frozenset(
        {"python", "command", "mpi", "pinning", "cancel", "prefetch", "follow"}
    )
    prefetch = 64
    pooled_commands = True  # single-rank commands start from the workers, not the driver
    # Seconds a worker may hold a finished task's reply to share a message (worker.HOLD), and
    # a finished command's (worker.COMMAND_HOLD). Read when a worker starts.
    hold = worker.HOLD
    command_hold = worker.COMMAND_HOLD
    fork_server = True  # workers are forked by one zygote process (zygote.py), not started

    def __init__(
        self,
        cpus: int | None = None,
        gpus: int | None = None,
        memory: int | None = None,
        pin: bool | str | None = None,
        launcher: str = "mpiexec -n {ranks}",
        python: str = sys.executable,
    ) -> None:
        self.real = sorted(os.sched_getaffinity(0))
        ncpu = len(self.real) if cpus is None else cpus
        if ncpu < 1:
            raise DefinitionError(f"cpus must be at least 1, got {cpus}")
        ngpu = detect_gpus() if gpus is None else gpus
        mem = memory if memory is not None else psutil.virtual_memory().total // 2**20
        self.node = Node.sized(socket.gethostname() or "localhost", ncpu, ngpu, mem)
        self._notes: list[str] = []
        if pin not in (None, True, False, "fold"):
            raise DefinitionError(f"pin must be True, False or 'fold', got {pin!r}")
        if pin is None:
            pin = "fold" if ncpu > len(self.real) else True
        if pin == "fold" and ncpu > len(self.real):
            self._notes.append(
                f"the node pretends {ncpu} cores but this machine has {len(self.real)}: "
                f"CPU pinning folds core ids onto the real cores (pin=False turns it off)"
            )
        elif pin is True and ncpu > len(self.real):
            raise DefinitionError(
                f"pin=True needs real cores, but cpus={ncpu} exceeds the {len(self.real)} cores "
                "of this machine: use pin='fold' or pin=False"
            )
        self.pin = bool(pin)
        self.launcher = shlex.split(launcher)
        if not any("{ranks}" in a for a in self.launcher):
            raise DefinitionError(f"launcher {launcher!r} must contain {{ranks}}")
        self.python = python
        self._home_affinity = set(self.real)
        self._reset()

    def _reset(self) -> None:
        """The state of one run: made at the start, and again when a closed backend starts
        another run (one backend object may serve one run after another)."""
        self.closed = False
        self.rundir: Path | None = None
        self.functions: dict[int, bytes] = {}
        self.workers: list[_Worker] = []
        self.idle: list[_Worker] = []
        self._retired: list[_Worker] = []
        self._fresh_deaths = 0  # workers in a row whose deaths no task explains
        self.by_fd: dict[int, _Worker] = {}  # every live worker, by connection fd
        self.where: dict[tuple[int, int], _Worker] = {}
        self.holder: dict[int, _Worker] = {}  # task id -> the worker that has it
        self.ran: dict[int, _Worker] = {}  # recently finished task id -> the worker that ran it
        # Attempts to stop by killing their worker once they execute (see the doc), and from
        # when: at once for a Python task, after the grace period for a command that its
        # worker was told to stop (a stopped or hung worker cannot)
        self._aims: dict[tuple[int, int], tuple[_Worker, float]] = {}
        self._worker_seq = 0
        self._outbox: list[Outcome] = []
        self._epoll = select.epoll()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._epoll.register(self._wake_r, select.EPOLLIN)
        self.processes = Processes(
            self._process_line,
            self._home_affinity,
            self._wake,
            Path(tempfile.gettempdir()),
            threads=len(self.node.cores) + 2,  # a chain per slot at most
            guard=self._guard,
        )
        self._env_cache: dict[tuple[Any, ...], tuple[int, dict[str, str]]] = {}
        self._env_ids = itertools.count()
        self._process_envs: dict[tuple[Any, ...], dict[bytes, bytes]] = {}
        self._cores_cache: dict[int, tuple[Any, list[int] | None]] = {}
        self._zygote: Zygote | None = None
        self._zygote_checked = 0.0  # when poll() last looked for unanswered fork requests

    # -- contract -------------------------------------------------------------------------
    def nodes(self) -> list[Node]:
        return [self.node]

    def notes(self) -> list[str]:
        return list(self._notes)

    def boot(self, python: bool = True) -> None:
        """Start the fork server now, while the run is checked and its directory made."""
        if self.closed:
            self._reset()
        if self.fork_server and self._zygote is None:
            self._fork_server(python)

    def start(self, rundir: Path) -> None:
        """Get ready for the run in ``rundir``; calling it again for the same run is a no-op."""
        if self.closed:
            self._reset()
        elif self.rundir == rundir:
            return
        self.rundir = rundir
        (rundir / "workers").mkdir(parents=True, exist_ok=True)
        self.processes.folder = rundir / "workers"
        if self._zygote is not None:  # booted before the directory existed
            self._zygote.log(str(self._spool("zygote.log")))

    def warm(self, workers: int, cpus: int = 1, python: bool = True) -> None:
        """Start workers up front (they import in parallel), so early tasks do not wait."""
        for _ in range(min(workers, len(self.node.cores)) - len(self.workers)):
            self.idle.append(self._new_worker(cpus, python))

    def define(self, function: int, payload: bytes) -> None:
        self.functions[function] = payload

    def submit(self, jobs: Sequence[Job]) -> None:
        batches: dict[int, tuple[_Worker, list[tuple[Any, ...]]]] = {}
        for job in jobs:
            if pooled(job.kind, job.isolate, job.ranks, True):
                w = self._worker_for(job)
                if w is None:  # its slot is gone: give it back unstarted
                    self._outbox.append(Outcome(job.task, job.attempt, False, returned=True))
                    continue
                batches.setdefault(w.index, (w, []))[1].append(self._message(w, job))
            else:
                self.processes.start(job)
        for w, items in batches.values():
            # If the worker died, poll() sees the closed connection and reports its tasks.
            with contextlib.suppress(OSError):
                w.conn.send_bytes(pickle.dumps(("run", items), protocol=5))

    def cancel(self, task: int, attempt: int) -> None:
        key = (task, attempt)
        w = self.where.get(key)
        if w is None:
            self.processes.cancel(task, attempt)
            return
        if w.conn.poll(0):  # catch up with what it said: the attempt may have ended
            self._from_worker(w, self._outbox)
            if key not in self.where:
                return
        # Queued there: the worker drops it and replies "dropped". A running command: the
        # worker stops it and replies. A Python task cannot be stopped from inside.
        with contextlib.suppress(OSError):
            w.conn.send_bytes(pickle.dumps(("kill", task, attempt)))
        job = next(j for j in w.jobs if j.task == task and j.attempt == attempt)
        late = GRACE + TRUST if job.kind == "command" else 0.0
        self._aims[key] = (w, time.monotonic() + late)
        self._aim()

    def poll(self, timeout: float) -> list[Outcome]:
        out, self._outbox = self._outbox, []
        if out:
            timeout = 0
        for fd, _ in self._epoll.poll(timeout):
            w = self.by_fd.get(fd)
            if w is not None:
                self._from_worker(w, out)
            elif self._zygote is not None and fd == self._zygote.fileno():
                self._zygote.collect(0)  # how workers ended: read as it comes, so it never piles up
                if not self._zygote.alive:
                    self._epoll.unregister(fd)
                    self._say("the worker fork server died: new workers start directly")
            elif fd == self._wake_r:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)
        out += self.processes.drain()
        if self._aims:
            self._aim()
        if self._zygote is not None and self._zygote.alive:
            self._check_zygote()
        return out

    def _check_zygote(self) -> None:
        """A fork request unanswered for ``Zygote.PATIENCE`` seconds: the fork server is
        stopped or hung. Killing it ends the wait (the workers it never forked are lost, and
        their tasks come back); new workers then start directly."""
        now = time.monotonic()
        if now < self._zygote_checked + 1:
            return
        self._zygote_checked = now
        z = self._zygote
        assert z is not None
        late = [
            w
            for w in self.workers
            if isinstance(w.proc, Forked) and w.proc.unknown and now - w.born > z.PATIENCE
        ]
        if late:
            z.stuck(f"worker {late[0].index} was asked for {now - late[0].born:.0f} s ago")

    def close(self) -> None:
        """Stop idle workers politely, busy ones and child processes at once."""
        self.processes.close()
        for w in self.workers:
            if w.jobs and w.jobs[0].kind != "command":
                _kill_group(w)
            else:  # a worker running a command kills it (its own session) on "stop"
                with contextlib.suppress(OSError):
                    w.conn.send_bytes(pickle.dumps(("stop",)))
        deadline = time.monotonic() + 2
        for w in self.workers:
            try:
                w.proc.wait(max(0.01, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _kill_group(w)
                w.proc.wait()
            _kill_group(w)  # whatever its tasks left running in the background
            w.conn.close()
        for w in self._retired:
            with contextlib.suppress(subprocess.TimeoutExpired):
                w.proc.wait(1)
            _kill_group(w)
        if self._zygote is not None:
            self._zygote.close()
            self._zygote = None
        self._epoll.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.workers.clear()
        self.idle.clear()
        self.by_fd.clear()
        self.closed = True

    def _aim(self) -> None:
        """Kill the workers of the attempts to stop that execute now (their markers say so)
        and are due; forget those that ended or were dropped meanwhile."""
        now = time.monotonic()
        for key, (w, due) in list(self._aims.items()):
            if self.where.get(key) is not w:
                del self._aims[key]
            elif now >= due and w.aim is None:
                pid, *executing = worker.running(w.marker)
                if executing != list(key):
                    continue
                del self._aims[key]
                w.aim = key
                if pid > 0 and leader(pid):  # a command, in its own session
                    killpg(pid, signal.SIGKILL)
                _kill_group(w)  # its death is reported by poll(), charged to ``key``

    # -- pinning --------------------------------------------------------------------------
    def _cores(self, job: Job) -> list[int] | None:
        if not self.pin:
            return None
        p = job.placement
        hit = self._cores_cache.get(id(p))
        if hit is None or hit[0] is not p:
            if len(self._cores_cache) > 4096:
                self._cores_cache.clear()
            real = self.real
            hit = self._cores_cache[id(p)] = (p, fold(p.cores, real))
        return hit[1]

    def _base_env(self, job: Job) -> tuple[int, dict[str, str]]:
        """The environment a placement implies (pinning variables plus the task's own), with a
        small id so that a worker receives each distinct one only once."""
        key = (job.placement, job.cpus, tuple(job.env.items()))
        hit = self._env_cache.get(key)
        if hit is None:
            gpus = ",".join(str(g) for g in job.placement.gpus)
            env = {
                "OMP_NUM_THREADS": str(job.cpus),
                "CUDA_VISIBLE_DEVICES": gpus,
                "ROCR_VISIBLE_DEVICES": gpus,
                "ZE_AFFINITY_MASK": gpus,
                "SHOAL_CORES": ",".join(str(c) for c in job.placement.cores),
                **job.env,
            }
            # Chain threads call this too: ids come from a counter, never from len(), so two
            # threads adding at once cannot give two environments the same id.
            hit = self._env_cache.setdefault(key, (next(self._env_ids), env))
        return hit

    # -- persistent workers ---------------------------------------------------------------
    def _new_worker(self, cpus: int, python: bool = True) -> _Worker:
        self._worker_seq += 1
        n = self._worker_seq
        ours, theirs = socket.socketpair()
        if self.rundir is None:
            raise BackendError("the local backend was not started: call start(rundir) first")
        # Numerical libraries read these once, at import: a worker serves one task width.
        threads = {var: str(cpus) for var in THREAD_VARS}
        out, err, pids = (str(self._spool(f"{n}.{x}")) for x in ("out", "err", "pid"))
        self._spool("").mkdir(exist_ok=True)  # someone may have deleted it: workers need it
        args = [repr(self.hold), repr(self.command_hold), pids]
        zygote = self._fork_server(python)
        proc: subprocess.Popen[bytes] | Forked | None = None
        if zygote is not None:
            proc = zygote.fork(n, theirs.fileno(), out, err, threads, args, python)
        if proc is None:
            env = {**os.environ, "PYTHONPATH": _python_path(), **threads}
            with open(out, "w+b") as fout, open(err, "w+b") as ferr:
                module = "shoal.backends.worker"
                proc = launch(
                    [self.python], module, theirs.fileno(), args, env, fout.fileno(), ferr.fileno()
                )
        theirs.close()
        w = _Worker(n, proc, Wire(ours.detach()), cpus, marker=pids, born=time.monotonic())
        self.workers.append(w)
        self.by_fd[w.conn.fileno()] = w
        self._epoll.register(w.conn.fileno(), select.EPOLLIN)
        return w

    def _fork_server(self, python: bool) -> Zygote | None:
        """The zygote that forks workers (started with the first one), or None: turned off,
        or it died (then workers start as interpreters of their own, as before). For a run
        without Python tasks (``python``) it starts without site (zygote.py)."""
        z = self._zygote
        if z is None and self.fork_server:
            env = {**os.environ, "PYTHONPATH": _python_path()}
            log = None if self.rundir is None else str(self._spool("zygote.log"))
            try:
                z = self._zygote = Zygote(self.python, env, log, site=python)
            except OSError as err:
                self.fork_server = False
                self._say(f"cannot start the worker fork server ({err}): workers start directly")
                return None
            self._epoll.register(z.fileno(), select.EPOLLIN)
        if z is not None and not z.alive:
            return None
        return z

    def _spool(self, name: str) -> Path:
        """A file of the workers' folder of the run (``workers/``)."""
        return Path(str(self.rundir)) / "workers" / name

    def _guard(self, what: str, pid: int) -> None:
        """The fork server watches the driver's children (see zygote.py): should the driver
        die, it stops them. Without a fork server (turned off, or dead) nothing does."""
        z = self._zygote
        if z is not None:
            z.tell((what, pid))

    def _say(self, note: str) -> None:
        print(f"shoal: {note}", file=sys.stderr)

    def _worker_for(self, job: Job) -> _Worker | None:
        if job.after is not None:
            # Behind a task this worker holds; or, if that task already ended (its outcome
            # crossed this job on the way), on the worker that ran it: its slot's cores.
            w = self.holder.get(job.after) or self.ran.get(job.after)
            if w is None or w.proc.returncode is not None or w not in self.workers:
                return None
            if w in self.idle:
                self.idle.remove(w)
            return w
        return self._idle_worker(job.cpus, job.kind != "command")

    def _idle_worker(self, cpus: int, python: bool) -> _Worker:
        """An idle worker for tasks of this width; a new one if none, retiring an idle worker
        of another width when the pool is at its size (one worker per core)."""
        for i in range(len(self.idle) - 1, -1, -1):
            if self.idle[i].cpus == cpus:
                return self.idle.pop(i)
        if self.idle and len(self.workers) >= len(self.node.cores):
            self._retire(self.idle.pop(0))
        return self._new_worker(cpus, python)

    def _retire(self, w: _Worker) -> None:
        with contextlib.suppress(OSError):
            w.conn.send_bytes(pickle.dumps(("stop",)))
        self._epoll.unregister(w.conn.fileno())
        del self.by_fd[w.conn.fileno()]
        w.conn.close()
        self.workers.remove(w)
        self._retired.append(w)  # reaped at close()

    def _message(self, w: _Worker, job: Job) -> tuple[Any, ...]:
        w.jobs.append(job)
        self.where[(job.task, job.attempt)] = w
        self.holder[job.task] = w
        if job.kind == "command":  # the whole environment, as bytes, once per worker
            env_id, full = self._process_env(job)
            send: Any = None if env_id in w.command_envs else full
            w.command_envs.add(env_id)
            command: tuple[list[str], bool, str | None] | None = (job.argv, job.shell, job.workdir)
            fn = None
        else:
            fn = None if job.function in w.fns else self.functions[job.function]
            w.fns.add(job.function)
            env_id, env = self._base_env(job)
            send = None if env_id in w.envs else env
            w.envs.add(env_id)
            command = None
        return (
            job.task,
            job.attempt,
            job.function,
            fn,
            job.payload,
            self._cores(job),
            env_id,
            send,
            job.folder,
            job.after is not None,
            command,
            job.after if job.follows else None,
        )

    def _forget(self, w: _Worker, job: Job) -> None:
        w.jobs.remove(job)
        del self.where[(job.task, job.attempt)]
        if self.holder.get(job.task) is w:
            del self.holder[job.task]
        if len(self.ran) > 4096:  # only the last few matter (followers in flight)
            self.ran.clear()
        self.ran[job.task] = w

    def _from_worker(self, w: _Worker, out: list[Outcome]) -> None:
        """Read every reply waiting on this worker's connection."""
        while True:
            try:
                reply = pickle.loads(w.conn.recv_bytes())
            except (EOFError, OSError):
                self._lost(w, out)
                return
            if reply[0] == "ready":  # it started and imported what it needs
                w.ready = True
                if not w.conn.poll(0):
                    return
                continue
            if reply[0] == "dropped":
                _, task, attempt = reply
                job = next(j for j in w.jobs if j.task == task and j.attempt == attempt)
                self._forget(w, job)
                out.append(
                    Outcome.unstarted(
                        task, attempt, time.time(), "cancelled", "cancelled before it started"
                    )
                )
            else:
                self._fresh_deaths = 0  # workers can run tasks
                for task, attempt, ok, result, kind, error, started, ended, code in reply[1]:
                    job = w.jobs[0]
                    self._forget(w, job)
                    out.append(
                        Outcome(
                            task,
                            attempt,
                            ok,
                            started,
                            ended,
                            kind,
                            error,
                            code,
                            f"worker-{w.index}",
                            result,
                        )
                    )
            if not w.jobs:
                self.idle.append(w)
                return
            if not w.conn.poll(0):
                return

    def _lost(self, w: _Worker, out: list[Outcome]) -> None:
        """The worker died: fail the task it was executing (its marker says which), give every
        other task it had back unstarted, forget the worker.

        Every reply it sent was read before this (the end of the connection comes after
        them). The task executing is then the first one without a reply, unless replies of
        finished commands were still held (worker.COMMAND_HOLD): those ran, but their
        outcomes are lost, so they come back to run again, and with them the task executing,
        which cannot be told apart from them in the driver's view. A worker killed to stop
        one attempt (``aim``) charges that attempt only, and nobody if it had just ended.
        """
        del self.by_fd[w.conn.fileno()]
        self._epoll.unregister(w.conn.fileno())
        w.conn.close()
        self.workers.remove(w)
        if w in self.idle:
            self.idle.remove(w)
        try:
            code = w.proc.wait(5)
        except subprocess.TimeoutExpired:
            _kill_group(w)
            code = w.proc.wait()
        _kill_group(w)  # the processes its task had started
        orphan, *executing = worker.running(w.marker)
        if orphan > 0 and leader(orphan):  # its command, in a session of its own
            killpg(orphan, signal.SIGKILL)
        jobs = list(w.jobs)
        for job in jobs:
            self._forget(w, job)
        charged = None
        if jobs and [jobs[0].task, jobs[0].attempt] == executing:
            head = (jobs[0].task, jobs[0].attempt)
            if w.aim is None or w.aim == head:
                charged = jobs.pop(0)
        lost = isinstance(w.proc, Forked) and not w.proc.zygote.alive
        if charged is None and not lost and w.aim is None:
            # Nothing it ran explains its death (it died starting, or between tasks): the
            # environment is at fault. Its tasks come back; but not for ever.
            self._fresh_deaths += 1
            if self._fresh_deaths >= MAX_FRESH_DEATHS:
                text = tail(self._spool(f"{w.index}.err"))
                raise BackendError(
                    f"{self._fresh_deaths} worker processes in a row died while no task of "
                    f"theirs ran (the last exit code was {code}): check that they can import "
                    "shoal and your modules with the same Python. The last one said:\n"
                    + (text or "(nothing)")
                )
        if charged is not None:
            kind, words = describe_exit(code)
            msg = f"worker-{w.index} running this task died: {words}"
            text = tail(self._spool(f"{w.index}.err"))
            if text:
                msg += f"\nlast lines of its stderr:\n{text}"
            out.append(
                Outcome(charged.task, charged.attempt, False, None, time.time(), kind, msg, code)
            )
        for job in jobs:
            out.append(Outcome(job.task, job.attempt, False, returned=True))

    # -- child processes --------------------------------------------------------------------
    def _process_line(self, job: Job) -> tuple[list[str], Environment, list[int] | None]:
        """argv, environment and cores of a job run as a child process (chain threads). The
        environment is bytes, encoded once per distinct placement and task environment:
        ``subprocess`` encodes every variable of a str environment at every start, which on a
        cluster login environment of a hundred variables is most of a short command's cost."""
        argv = job_command(job, self.functions, self.python)
        if job.ranks > 1:
            argv = [a.replace("{ranks}", str(job.ranks)) for a in self.launcher] + argv
        env = {**self._process_env(job)[1], **attempt_vars_bytes(job.task, job.attempt, job.folder)}
        return argv, env, self._cores(job)

    def _process_env(self, job: Job) -> tuple[int, dict[bytes, bytes]]:
        """The whole environment of a job run as a process (without the per-attempt
        variables), encoded once per placement environment and kind, with that environment's
        id. Chain threads call this too: a race only computes it twice."""
        env_id, base = self._base_env(job)
        key = (env_id, job.kind)
        full = self._process_envs.get(key)
        if full is None:
            text = {**os.environ, **base}
            if job.kind == "python":
                text["PYTHONPATH"] = _python_path()
            full = {os.fsencode(k): os.fsencode(v) for k, v in text.items()}
            if len(self._process_envs) > 4096:
                self._process_envs.clear()
            self._process_envs[key] = full
        return env_id, full

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
