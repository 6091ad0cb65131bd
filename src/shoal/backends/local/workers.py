"""The local backend's pool of persistent worker processes, as the driver keeps it.

:class:`WorkerPool` owns the workers: starting them (forked by the zygote, or directly),
handing out an idle one of the right width, retiring, reading their replies, and what a
worker's death means for the tasks it held (see ``_lost``). ``backend.LocalBackend`` is a
``WorkerPool``: the routing, the pinning environment and the child processes are its own. A
base class rather than an object of its own, so that the per-task paths (``submit``,
``poll``) pay no extra hop.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from shoal.backends.base import Job
from shoal.backends.env import python_path, thread_vars
from shoal.backends.execute import describe_exit, killpg, leader, tail
from shoal.backends.local import worker_main
from shoal.backends.local import zygote as zygote_mod
from shoal.backends.local.wire import Wire
from shoal.backends.local.zygote import Forked, Zygote, launch, may_fork_driver
from shoal.core.events import Outcome
from shoal.core.resources import Node
from shoal.errors import BackendError

MAX_FRESH_DEATHS = 5  # then the workers themselves are broken: stop replacing them
# Seconds past the grace period a worker has to report a command it was told to stop; after
# that the driver stops the command and the worker itself (the worker may be stopped or hung).
TRUST = 2.0


@dataclass(slots=True)
class WorkerProcess:
    """The driver's record of one persistent worker process."""

    index: int
    proc: subprocess.Popen[bytes] | Forked
    conn: Wire
    cpus: int  # cores per task it runs: thread variables are set once, when it starts
    ready: bool = False  # it said hello: it started and imported what it needs
    fns: set[int] = field(default_factory=set)
    envs: set[int] = field(default_factory=set)
    command_envs: set[int] = field(default_factory=set)
    jobs: deque[Job] = field(default_factory=deque)  # jobs[0] runs, the rest wait behind it
    marker: str = ""  # its marker file: what it executes now (worker_main.running)
    aim: tuple[int, int] | None = None  # the attempt it was killed to stop, if it was
    born: float = 0.0  # monotonic time it was asked for


def kill_group(w: WorkerProcess) -> None:
    """Kill a worker and every process its tasks started (its own process group). The worker
    itself too: one just forked may not lead its group yet."""
    pid = w.proc.pid
    if pid <= 0:  # it never started
        return
    killpg(pid, signal.SIGKILL)
    if w.proc.returncode is None:  # not known to have ended: its pid is still its own
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


class WorkerPool:
    """The persistent workers of one run, and the bookkeeping of the jobs handed to them."""

    # Seconds a worker may hold a finished task's reply to share a message (worker_main.HOLD),
    # and a finished command's (worker_main.COMMAND_HOLD). Read when a worker starts.
    hold = worker_main.HOLD
    command_hold = worker_main.COMMAND_HOLD
    fork_server = True  # workers are forked by one zygote process (zygote.py), not started
    preloaded: tuple[str, ...] = ()  # modules the zygote imports before it forks (preload)
    # The zygote is a fork of the driver (True), a new interpreter (False), or (None) a fork
    # when the driver has imported every module to preload and may fork (may_fork_driver).
    fork_driver: bool | None = None

    # The backend's, read here: the run, the node's size, the interpreter, the poller
    rundir: Path | None
    node: Node
    python: str
    _epoll: select.epoll

    def _reset_pool(self) -> None:
        """No workers yet: the pool of one run."""
        self.workers: list[WorkerProcess] = []
        self.idle: list[WorkerProcess] = []
        self._retired: list[WorkerProcess] = []
        self._fresh_deaths = 0  # workers in a row whose deaths no task explains
        self.by_fd: dict[int, WorkerProcess] = {}  # every live worker, by connection fd
        self.where: dict[tuple[int, int], WorkerProcess] = {}
        self.holder: dict[int, WorkerProcess] = {}  # task id -> the worker that has it
        # recently finished task id -> the worker that ran it
        self.ran: dict[int, WorkerProcess] = {}
        # Attempts to stop by killing their worker once they execute (see backend.py), and
        # from when: at once for a Python task, after the grace period for a command that its
        # worker was told to stop (a stopped or hung worker cannot)
        self._aims: dict[tuple[int, int], tuple[WorkerProcess, float]] = {}
        self._worker_seq = 0
        self._zygote: Zygote | None = None
        self._zygote_checked = 0.0  # when poll() last looked for unanswered fork requests

    def _new_worker(self, cpus: int, python: bool = True) -> WorkerProcess:
        self._worker_seq += 1
        n = self._worker_seq
        ours, theirs = socket.socketpair()
        if self.rundir is None:
            raise BackendError("the local backend was not started: call start(rundir) first")
        # Numerical libraries read these once, at import: a worker serves one task width.
        threads = thread_vars(cpus)
        out, err, pids = (str(self._spool(f"{n}.{x}")) for x in ("out", "err", "pid"))
        self._spool("").mkdir(exist_ok=True)  # someone may have deleted it: workers need it
        args = [repr(self.hold), repr(self.command_hold), pids]
        zygote = self._fork_server(python)
        proc: subprocess.Popen[bytes] | Forked | None = None
        if zygote is not None:
            proc = zygote.fork(n, theirs.fileno(), out, err, threads, args, python)
        if proc is None:
            env = {**os.environ, "PYTHONPATH": python_path(), **threads}
            with open(out, "w+b") as fout, open(err, "w+b") as ferr:
                module = "shoal.backends.local.worker_main"
                proc = launch(
                    [self.python], module, theirs.fileno(), args, env, fout.fileno(), ferr.fileno()
                )
        theirs.close()
        w = WorkerProcess(n, proc, Wire(ours.detach()), cpus, marker=pids, born=time.monotonic())
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
            env = {**os.environ, "PYTHONPATH": python_path()}
            if self.preloaded:
                env[zygote_mod.PRELOAD] = ",".join(self.preloaded)
            log = None if self.rundir is None else str(self._spool("zygote.log"))
            try:
                fork = python and self.fork_driver is not False
                fork = fork and (
                    self.fork_driver is True or may_fork_driver(self.python, self.preloaded)
                )
                z = self._zygote = Zygote(self.python, env, log, site=python, fork=fork)
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

    def _worker_for(self, job: Job) -> WorkerProcess | None:
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

    def _idle_worker(self, cpus: int, python: bool) -> WorkerProcess:
        """An idle worker for tasks of this width; a new one if none, retiring an idle worker
        of another width when the pool is at its size (one worker per core)."""
        for i in range(len(self.idle) - 1, -1, -1):
            if self.idle[i].cpus == cpus:
                return self.idle.pop(i)
        if self.idle and len(self.workers) >= len(self.node.cores):
            self._retire(self.idle.pop(0))
        return self._new_worker(cpus, python)

    def _retire(self, w: WorkerProcess) -> None:
        with contextlib.suppress(OSError):
            w.conn.send_bytes(pickle.dumps(("stop",)))
        self._epoll.unregister(w.conn.fileno())
        del self.by_fd[w.conn.fileno()]
        w.conn.close()
        self.workers.remove(w)
        self._retired.append(w)  # reaped at close()

    def _forget(self, w: WorkerProcess, job: Job) -> None:
        w.jobs.remove(job)
        del self.where[(job.task, job.attempt)]
        if self.holder.get(job.task) is w:
            del self.holder[job.task]
        if len(self.ran) > 4096:  # only the last few matter (followers in flight)
            self.ran.clear()
        self.ran[job.task] = w

    def _from_worker(self, w: WorkerProcess, out: list[Outcome]) -> None:
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

    def _lost(self, w: WorkerProcess, out: list[Outcome]) -> None:
        """The worker died: fail the task it was executing (its marker says which), give every
        other task it had back unstarted, forget the worker.

        Every reply it sent was read before this (the end of the connection comes after
        them). The task executing is then the first one without a reply, unless replies of
        finished commands were still held (worker_main.COMMAND_HOLD): those ran, but their
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
            kill_group(w)
            code = w.proc.wait()
        kill_group(w)  # the processes its task had started
        orphan, *executing = worker_main.running(w.marker)
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

    def _aim(self) -> None:
        """Kill the workers of the attempts to stop that execute now (their markers say so)
        and are due; forget those that ended or were dropped meanwhile."""
        now = time.monotonic()
        for key, (w, due) in list(self._aims.items()):
            if self.where.get(key) is not w:
                del self._aims[key]
            elif now >= due and w.aim is None:
                pid, *executing = worker_main.running(w.marker)
                if executing != list(key):
                    continue
                del self._aims[key]
                w.aim = key
                if pid > 0 and leader(pid):  # a command, in its own session
                    killpg(pid, signal.SIGKILL)
                kill_group(w)  # its death is reported by poll(), charged to ``key``

    # -- pinning --------------------------------------------------------------------------

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

    def _stop_workers(self) -> None:
        """Stop idle workers politely, busy ones at once; then the fork server."""
        for w in self.workers:
            if w.jobs and w.jobs[0].kind != "command":
                kill_group(w)
            else:  # a worker running a command kills it (its own session) on "stop"
                with contextlib.suppress(OSError):
                    w.conn.send_bytes(pickle.dumps(("stop",)))
        deadline = time.monotonic() + 2
        for w in self.workers:
            try:
                w.proc.wait(max(0.01, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                kill_group(w)
                w.proc.wait()
            kill_group(w)  # whatever its tasks left running in the background
            w.conn.close()
        for w in self._retired:
            with contextlib.suppress(subprocess.TimeoutExpired):
                w.proc.wait(1)
            kill_group(w)
        if self._zygote is not None:
            self._zygote.close()
            self._zygote = None
