"""Child processes of the driver: isolated Python tasks and MPI launches (the local backend),
and the steps of the Slurm backend. Single-rank local commands are started by the workers
instead (``local/worker_main.py``): there, their starts do not wait for the driver's
interpreter lock.

Each slot's processes run in a *chain*: one thread starts a process, waits for it, reports the
outcome, and starts the next job queued behind it on the same slot (jobs with ``after``),
without a round trip through the driver. This is the shape of a plain thread pool running
``subprocess.run``.

CPU affinity is per thread on Linux: the chain thread pins itself to the task's cores just
before the fork, so the child is pinned from its first instruction, then unpins itself.

Outcomes of short commands share a wake-up of the driver: when a chain goes on with a job that
was queued behind the one that ended (a prefetched job, expected to take milliseconds), the
outcome waits in the queue, for at most HOLD seconds counted at job boundaries, and a watch
thread wakes the driver when a hold falls due undrained, so a held outcome is picked up on
time even when every chain is in a longer job. An outcome is never held when its chain has nothing
queued, or when it is a failure.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pickle
import queue
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from shoal.backends.base import Job
from shoal.backends.execute import GRACE, command_reply, describe_exit, killpg, start_error, tail
from shoal.core.events import Outcome
from shoal.spec.kinds import Failure

HOLD = 0.004  # seconds an outcome may wait for others to share the driver's wake-up

Environment = dict[str, str] | dict[bytes, bytes]  # subprocess takes either
Prepare = Callable[[Job], tuple[list[str], Environment, list[int] | None]]


class _Spool:
    """A chain's stdout and stderr files, reused from one process to the next. After a process
    ends, what it printed is moved to ``tasks/<id>/`` (a rename); a silent process costs no
    file at all, which keeps short commands cheap."""

    def __init__(self, folder: Path, name: str) -> None:
        self.paths = (folder / f"{name}.out", folder / f"{name}.err")
        folder.mkdir(parents=True, exist_ok=True)  # someone may have deleted it
        self.files = [open(p, "w+b") for p in self.paths]  # noqa: SIM115 - closed in close()

    def keep(self, taskdir: Path) -> bool:
        """Move non-empty output into the task folder and start fresh spool files, so the
        spool is always empty (offset 0) when the next process gets it. True if the process
        printed anything on stdout."""
        printed = False
        for i, name in enumerate(("stdout", "stderr")):
            if os.fstat(self.files[i].fileno()).st_size:
                printed = printed or i == 0
                taskdir.mkdir(parents=True, exist_ok=True)
                try:
                    os.replace(self.paths[i], taskdir / name)
                except FileNotFoundError:  # the spool folder was deleted: copy from the file
                    self.paths[i].parent.mkdir(parents=True, exist_ok=True)
                    self.files[i].seek(0)
                    with open(taskdir / name, "wb") as out:
                        shutil.copyfileobj(self.files[i], out)
                self.files[i].close()
                self.files[i] = open(self.paths[i], "w+b")  # noqa: SIM115
        return printed

    def close(self) -> None:
        for f in self.files:
            f.close()
        for path in self.paths:
            path.unlink(missing_ok=True)


class Chain:
    """The jobs of one slot, run one after another by one thread (see the module's doc)."""

    __slots__ = ("cancelled", "current", "done", "jobs", "proc", "spool")

    def __init__(self, job: Job) -> None:
        self.jobs: deque[Job] = deque([job])
        self.current: Job | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.cancelled = False
        self.done = False
        self.spool: _Spool | None = None


class Processes:
    """Runs jobs as child processes in per-slot chains; outcomes arrive through ``drain``."""

    def __init__(
        self,
        prepare: Prepare,
        home: set[int],
        wake: Callable[[], None],
        folder: Path,
        threads: int,
        guard: Callable[[str, int], None] | None = None,
    ) -> None:
        self.prepare = prepare
        # Told ("watch", pid) when a child starts and ("unwatch", pid) when it is gone, so that
        # something outside the driver can stop its process group if the driver dies.
        self.guard = guard
        self.folder = folder  # where the chains' spool files live
        self._names = itertools.count()
        self.home = home
        self.wake = wake
        self.lock = threading.Lock()
        self.chain_of: dict[int, Chain] = {}  # task id -> the chain that has it
        self.spools: list[_Spool] = []  # idle spools, reused by the next chain
        self.threads = ThreadPoolExecutor(threads, thread_name_prefix="shoal-chain")
        self.devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        self.chains: list[Chain] = []
        self.outcomes: queue.SimpleQueue[Outcome] = queue.SimpleQueue()
        self.first_held: float | None = None  # monotonic time of the oldest held outcome
        self.holds = 0  # holds begun so far: the watch thread wakes the driver once for each
        self.closing = False
        self._holding = threading.Event()  # a hold began: the watch thread times it
        self._stopping = threading.Event()
        # Started with the first job, not before: a driver with no thread of ours may fork
        # (the local backend's zygote, zygote.may_fork_driver)
        self._watch = threading.Thread(target=self._watch_holds, name="shoal-hold", daemon=True)

    def start(self, job: Job) -> None:
        with self.lock:
            if self._watch.ident is None:
                self._watch.start()
            if job.after is not None:
                chain = self.chain_of.get(job.after)
                if chain is not None and not chain.done:
                    chain.jobs.append(job)
                    self.chain_of[job.task] = chain
                    return
            chain = Chain(job)
            self.chain_of[job.task] = chain
            self.chains.append(chain)
        self.threads.submit(self._run, chain)

    def cancel(self, task: int, attempt: int) -> bool:
        """Stop a job; False if this runner does not know it."""
        with self.lock:
            chain = self.chain_of.get(task)
            if chain is None:
                return False
            cur = chain.current
            if cur is not None and cur.task == task and cur.attempt == attempt:
                chain.cancelled = True
                if chain.proc is not None:
                    self._stop(chain.proc)
                return True
            for job in chain.jobs:
                if job.task == task and job.attempt == attempt:
                    chain.jobs.remove(job)
                    del self.chain_of[task]
                    now = time.time()
                    self.outcomes.put(
                        Outcome.unstarted(
                            task, attempt, now, Failure.CANCELLED, "cancelled before it started"
                        )
                    )
                    self.wake()
                    return True
        return False

    def _watch_holds(self) -> None:
        """Wake the driver when a hold falls due and nobody has drained it yet."""
        woken_for = 0
        while True:
            self._holding.wait()
            if self._stopping.is_set():
                return
            with self.lock:
                self._holding.clear()
                first, hold = self.first_held, self.holds
            if first is None or hold == woken_for:
                continue
            if self._stopping.wait(max(0.0, first + HOLD - time.monotonic())):
                return
            with self.lock:
                due = self.holds == hold and self.first_held is not None
            if due:
                woken_for = hold
                self.wake()

    def drain(self) -> list[Outcome]:
        out = []
        with self.lock:
            self.first_held = None
        while not self.outcomes.empty():
            out.append(self.outcomes.get())
        return out

    def close(self) -> None:
        with self.lock:
            self.closing = True  # from now on nothing is held
        self._stopping.set()
        self._holding.set()
        if self._watch.ident is not None:
            self._watch.join(timeout=5)
        with self.lock:
            for chain in self.chains:
                chain.jobs.clear()
                if chain.proc is not None:
                    killpg(chain.proc.pid, signal.SIGKILL)
        self.threads.shutdown(wait=True)
        for spool in self.spools:
            spool.close()
        self.spools.clear()
        with contextlib.suppress(OSError):
            os.close(self.devnull)

    # -- the chain thread -------------------------------------------------------------------
    def _run(self, chain: Chain) -> None:
        with self.lock:
            chain.spool = self.spools.pop() if self.spools else None
        if chain.spool is None:
            chain.spool = _Spool(self.folder, f"chain-{next(self._names)}")
        while True:
            with self.lock:
                if not chain.jobs or self.closing:
                    chain.done = True
                    self.chains.remove(chain)
                    self.spools.append(chain.spool)
                    return
                job = chain.jobs.popleft()
                chain.current = job
                chain.cancelled = False
            try:
                outcome = self.run_one(chain, job)
            except Exception as e:  # a bug here must not leave the task running forever
                why = f"the process runner failed: {type(e).__name__}: {e}"
                outcome = Outcome.unstarted(job.task, job.attempt, time.time(), Failure.ERROR, why)
            with self.lock:
                chain.current = None
                chain.proc = None
                if self.chain_of.get(job.task) is chain:
                    del self.chain_of[job.task]
                self.outcomes.put(outcome)
                hold = bool(chain.jobs) and outcome.ok and not self.closing
                if hold:
                    now = time.monotonic()
                    if self.first_held is None:
                        self.first_held = now
                        self.holds += 1
                        self._holding.set()
                    elif now - self.first_held >= HOLD:
                        hold = False
            if not hold:
                self.wake()

    def run_one(self, chain: Chain, job: Job) -> Outcome:
        """Start ``job``'s process, wait for it and read its outcome (a subclass may try
        again, see slurm/steps.py)."""
        started = time.time()
        spool = chain.spool
        assert spool is not None
        try:
            argv, env, cores = self.prepare(job)
            if cores:
                os.sched_setaffinity(0, cores)
            try:
                proc = subprocess.Popen(
                    argv,
                    stdin=self.devnull,
                    stdout=spool.files[0],
                    stderr=spool.files[1],
                    cwd=job.workdir or None,
                    env=env,
                    start_new_session=True,
                )
            finally:
                if cores:
                    os.sched_setaffinity(0, self.home)
        except OSError as e:
            msg = start_error(e, job.argv, job.workdir)
            return Outcome(
                job.task, job.attempt, False, started, time.time(), Failure.EXIT, msg, 127
            )
        except Exception as e:  # anything else must still come back as this task's failure
            msg = f"cannot start the process: {type(e).__name__}: {e}"
            return Outcome(job.task, job.attempt, False, started, time.time(), Failure.ERROR, msg)
        if self.guard is not None:
            self.guard("watch", proc.pid)
        with self.lock:
            chain.proc = proc
            if chain.cancelled or self.closing:
                self._stop(proc)
        code = proc.wait()
        killpg(proc.pid, signal.SIGKILL)  # leftovers of the process group (MPI ranks, ...)
        if self.guard is not None:
            self.guard("unwatch", proc.pid)
        ended = time.time()
        printed = spool.keep(job.taskdir)
        if job.kind == "python":
            return python_reply(job, code, started, ended)
        ok, value, kind, msg, _, _, code = command_reply(
            job.argv, code, job.folder, 0 if printed else -1, started, ended
        )
        return Outcome(job.task, job.attempt, ok, started, ended, kind, msg, code, "process", value)

    def _stop(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGTERM the process group now, SIGKILL it after GRACE seconds if still there."""
        killpg(proc.pid, signal.SIGTERM)
        timer = threading.Timer(GRACE, killpg, (proc.pid, signal.SIGKILL))
        timer.daemon = True
        timer.start()


def python_reply(job: Job, code: int, started: float, ended: float) -> Outcome:
    """The outcome of an isolated Python task's process that ended with ``code``: the reply it
    wrote (``TASKDIR/reply.pkl``, see isolated.py), or a failure that says how it ended."""
    path = job.taskdir / "reply.pkl"
    if path.exists():
        with open(path, "rb") as fh:
            ok, result, kind, error, t0, t1 = pickle.load(fh)
        path.unlink()
        return Outcome(job.task, job.attempt, ok, t0, t1, kind, error, code, "process", result)
    kind, words = describe_exit(code)
    text = tail(job.taskdir / "stderr")
    msg = f"the isolated process of this task ended without a result: {words}"
    return Outcome(
        job.task,
        job.attempt,
        False,
        started,
        ended,
        kind,
        msg + (f"\n{text}" if text else ""),
        code,
    )
