"""The local backend: one node (this machine, or a pretend larger one), local processes.

* Python tasks run in persistent worker processes (``worker_main.py``), one task per worker at a
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
  executing, which its marker file names (worker_main.py); every other task handed to it comes
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
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

from shoal.backends.base import Backend, Job, job_command, pooled
from shoal.backends.env import detect_gpus, fold, gpu_vars, python_path
from shoal.backends.execute import GRACE, attempt_vars_bytes
from shoal.backends.local.workers import TRUST, WorkerPool, WorkerProcess
from shoal.backends.processes import Environment, Processes
from shoal.batch.nodes import slots_here
from shoal.core.events import Outcome
from shoal.core.resources import Node
from shoal.errors import DefinitionError


class LocalBackend(WorkerPool, Backend):
    """Runs everything on this machine. ``cpus``/``gpus``/``memory`` pretend another size."""

    name = "local"
    capabilities = frozenset(
        {"python", "command", "mpi", "pinning", "cancel", "prefetch", "follow"}
    )
    prefetch = 64
    pooled_commands = True  # single-rank commands start from the workers, not the driver
    # hold, command_hold and fork_server: see WorkerPool

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
        self._notes: list[str] = []
        ncpu = len(self.real) if cpus is None else cpus
        given = slots_here() if cpus is None else None
        if given is not None:  # a Grid Engine or PBS allocation: its slots here, not the node
            ncpu = min(given[0], len(self.real))
            self._notes.append(
                f"the allocation gives this host {given[0]} slot(s): {ncpu} core(s) used"
                + (
                    f"; its {given[1] - 1} other host(s) are left unused: the 'allocation' "
                    "backend (the default there) uses them all"
                    if given[1] > 1
                    else ""
                )
            )
        if ncpu < 1:
            raise DefinitionError(f"cpus must be at least 1, got {cpus}")
        ngpu = detect_gpus() if gpus is None else gpus
        mem = memory if memory is not None else psutil.virtual_memory().total // 2**20
        self.node = Node.sized(socket.gethostname() or "localhost", ncpu, ngpu, mem)
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
        self._reset_pool()
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

    # -- contract -------------------------------------------------------------------------
    def nodes(self) -> list[Node]:
        return [self.node]

    def notes(self) -> list[str]:
        return list(self._notes)

    def preload(self, modules: tuple[str, ...]) -> None:
        """The zygote imports ``modules`` before it forks the first worker (zygote.py); told
        now if it runs already (booted while the workflow was being made)."""
        new = [m for m in modules if m not in self.preloaded]
        self.preloaded = (*self.preloaded, *new)
        if new and self._zygote is not None:
            self._zygote.tell(("preload", new))

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
        batches: dict[int, tuple[WorkerProcess, list[tuple[Any, ...]]]] = {}
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

    def close(self) -> None:
        """Stop idle workers politely, busy ones and child processes at once."""
        self.processes.close()
        self._stop_workers()
        self._epoll.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.workers.clear()
        self.idle.clear()
        self.by_fd.clear()
        self.closed = True

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
            env = {
                "OMP_NUM_THREADS": str(job.cpus),
                **gpu_vars(job.placement.gpus),
                "SHOAL_CORES": ",".join(str(c) for c in job.placement.cores),
                **job.env,
            }
            # Chain threads call this too: ids come from a counter, never from len(), so two
            # threads adding at once cannot give two environments the same id.
            hit = self._env_cache.setdefault(key, (next(self._env_ids), env))
        return hit

    # -- persistent workers: what a worker is sent ------------------------------------------
    def _message(self, w: WorkerProcess, job: Job) -> tuple[Any, ...]:
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
                text["PYTHONPATH"] = python_path()
            full = {os.fsencode(k): os.fsencode(v) for k, v in text.items()}
            if len(self._process_envs) > 4096:
                self._process_envs.clear()
            self._process_envs[key] = full
        return env_id, full

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
