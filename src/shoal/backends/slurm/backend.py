"""The Slurm backend: tasks as job steps inside one allocation.

The driver runs inside the allocation (``sbatch``/``salloc``; ``shoal slurm submit`` writes the
batch script). The backend reads the allocation once: node names from ``SLURM_JOB_NODELIST``
expanded by ``scontrol show hostnames``, and the core ids and GPU indices of each node from
``scontrol show job -d``. The scheduler places every task on concrete nodes, cores and GPUs,
exactly as for the local backend, and each task starts as a step::

    srun --exact --nodes=N --ntasks=R --cpus-per-task=C --nodelist=HOSTS [--cpu-bind=...] \\
         --gres=none | env CUDA_VISIBLE_DEVICES=<the placement's GPUs> ... COMMAND

* GPUs: a GPU task's step asks for as many as its placement holds (``--gres=gpu:N``, per
  node), and Slurm gives it that many of the allocation's GPUs and sets
  ``CUDA_VISIBLE_DEVICES`` to them. (A step that asks for none takes *every* GPU of the
  allocation when the job was given GPUs, so GPU steps then ran one after another.) Slurm
  chooses which GPUs; shoal's placement decides how many, and since both count the same GPUs
  a step never waits for one. A CPU task's step gets ``--gres=none`` and sees no GPU.
* Failure kinds are those of the local backend: ``srun`` exits 128+N when the task was killed
  by signal N (it says so: ``task 0: Killed``), and that is a ``crash`` here too, not an
  ``exit``, so that ``retry_on`` and the out-of-memory hint mean the same everywhere.
* CPU binding: ``--cpu-bind=map_cpu:`` (one core per rank) or ``mask_cpu:`` (several), from
  the placement, when the cluster's task plugin can bind (``TaskPlugin`` other than
  ``task/none``); otherwise a note says binding is off.
* Outcomes come from the ``srun`` processes themselves (their exit codes and the step's
  output files): no ``sacct`` call per task, or at all.
* Site limits: at most ``max_concurrent_steps`` steps run at once (the rest wait in the
  backend), and a step that Slurm refuses for a passing reason ("step creation temporarily
  disabled", a step limit, a busy controller) is started again after a back-off rather than
  failed.
* Python tasks: with ``python="workers"`` (the default when dask.distributed is installed)
  they run on persistent Dask workers, one per node, started as ``srun --overlap`` steps
  beside the driver (``dask_workers.py``): no interpreter
  start and no ``slurmctld`` round trip per task. With ``python="steps"`` each is a step of
  ``python -m shoal.backends.isolated``. Tasks with several ranks, isolated ones and
  commands are always steps.

The pure helpers (argv and parsing) are in ``parse.py``, tested on recorded output;
``query.py`` runs ``scontrol`` and ``squeue``; ``steps.py`` runs the steps.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from shoal.backends.base import Backend, Job, job_command
from shoal.backends.env import python_path
from shoal.backends.execute import attempt_vars
from shoal.backends.slurm.parse import can_bind, hostfile_text, step_argv
from shoal.backends.slurm.query import allocation, run
from shoal.backends.slurm.steps import Steps
from shoal.core.events import Outcome
from shoal.core.resources import Node
from shoal.errors import BackendError

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from shoal.backends.dask.backend import DaskBackend


class SlurmBackend(Backend):
    """Tasks as job steps of the allocation the driver runs in (``SLURM_JOB_ID``).

    ``job`` names the allocation (default ``SLURM_JOB_ID``); ``max_concurrent_steps`` caps the
    steps running at once; ``bind`` turns CPU binding on or off (default: on where the
    cluster can bind); ``mpi`` is passed as ``srun --mpi=`` for tasks with several ranks.
    """

    name = "slurm"
    capabilities = frozenset({"python", "command", "mpi", "pinning", "cancel", "prefetch"})
    prefetch = 64
    prefetch_window = 0.5  # a step or a Dask round trip takes milliseconds

    def __init__(
        self,
        job: str | None = None,
        max_concurrent_steps: int | None = None,
        bind: bool | None = None,
        mpi: str | None = None,
        python: str = "auto",
        interpreter: str = sys.executable,
        host: str | None = None,
    ) -> None:
        job = job or os.environ.get("SLURM_JOB_ID")
        if not job:
            raise BackendError(
                "the Slurm backend runs inside an allocation, and SLURM_JOB_ID is not set: "
                "start the driver with sbatch or salloc (shoal slurm submit writes the batch "
                "script), or give backend=SlurmBackend(job=ID)"
            )
        if max_concurrent_steps is not None and max_concurrent_steps < 1:
            raise BackendError(f"max_concurrent_steps must be >= 1, got {max_concurrent_steps}")
        self.job = str(job)
        self._nodes = allocation(self.job)
        self.hosts = [n.name for n in self._nodes]
        self._notes: list[str] = []
        if bind is None:
            bind = can_bind(run(["scontrol", "show", "config"]))
            if not bind:
                self._notes.append(
                    "this cluster's TaskPlugin is task/none: steps are not bound to cores"
                )
        self.bind = bind
        self.mpi = mpi
        if python not in ("auto", "workers", "steps"):
            raise BackendError(f"python= must be 'workers', 'steps' or 'auto', got {python!r}")
        if python == "auto":
            import importlib.util

            python = "workers" if importlib.util.find_spec("distributed") else "steps"
        self.mode = python
        self.python = interpreter
        self.host = host
        self.workers: DaskBackend | None = None  # the Dask backend of the persistent workers
        self.preloaded: tuple[str, ...] = ()  # modules those workers import at start
        self.where: dict[tuple[int, int], str] = {}
        self.functions: dict[int, bytes] = {}
        cores = sum(len(n.cores) for n in self._nodes)
        self.limit = max_concurrent_steps or cores
        self.steps: Steps | None = None
        self.rundir: Path | None = None

    # -- contract ---------------------------------------------------------------------------
    def nodes(self) -> list[Node]:
        return list(self._nodes)

    def notes(self) -> list[str]:
        return list(self._notes)

    def start(self, rundir: Path) -> None:
        if self.rundir == rundir:
            return
        self.rundir = rundir
        (rundir / "workers").mkdir(parents=True, exist_ok=True)
        self.steps = Steps(self._prepare, set(), lambda: None, rundir / "workers", self.limit)

    def preload(self, modules: tuple[str, ...]) -> None:
        """Its persistent workers import ``modules`` when they start (DaskBackend.preload)."""
        self.preloaded = tuple(dict.fromkeys((*self.preloaded, *modules)))

    def _workers(self) -> DaskBackend:
        """The persistent workers, started on the first Python task."""
        if self.workers is None:
            from shoal.backends.slurm.dask_workers import in_allocation

            assert self.rundir is not None
            pool = in_allocation(
                self.job,
                host=self.host,
                python=self.python,
                overlap=True,
                folder=self.rundir / "dask",
            )
            pool.reorder(self.hosts)  # the same node order as here
            for fid, payload in self.functions.items():
                pool.define(fid, payload)
            pool.preload(self.preloaded)
            pool.start(self.rundir)
            self._notes.extend(pool.notes())
            self.workers = pool
        return self.workers

    def define(self, function: int, payload: bytes) -> None:
        self.functions[function] = payload
        if self.workers is not None:
            self.workers.define(function, payload)

    def submit(self, jobs: Sequence[Job]) -> None:
        steps = self._started()
        pooled = [j for j in jobs if j.pooled and self.mode == "workers"]
        if pooled:
            self._workers().submit(pooled)
            for j in pooled:
                self.where[(j.task, j.attempt)] = "workers"
        for job in jobs:
            if not (job.pooled and self.mode == "workers"):
                steps.start(job)

    def cancel(self, task: int, attempt: int) -> None:
        if self.where.get((task, attempt)) == "workers":
            assert self.workers is not None  # it sent the attempt there
            self.workers.cancel(task, attempt)
        else:
            self._started().cancel(task, attempt)

    def poll(self, timeout: float) -> list[Outcome]:
        steps = self._started()
        deadline = time.monotonic() + max(timeout, 0)
        got: list[Outcome] = []
        while True:
            out = got + steps.drain()
            got = []
            if self.workers is not None:
                out += self.workers.poll(0)
            if out:
                for o in out:
                    self.where.pop((o.task, o.attempt), None)
                return out
            left = deadline - time.monotonic()
            if left <= 0:
                return []
            try:  # wait on the steps; look at the workers at least every 10 ms
                got = [steps.outcomes.get(timeout=min(left, 0.01 if self.workers else left))]
            except Exception:  # queue.Empty
                continue

    def close(self) -> None:
        if self.workers is not None:
            self.workers.close()
            self.workers = None
        if self.steps is not None:
            self.steps.close()
            self.steps = None

    # -- steps ------------------------------------------------------------------------------
    def _started(self) -> Steps:
        if self.steps is None:
            raise BackendError("the Slurm backend was not started: call start(rundir) first")
        return self.steps

    def _prepare(self, job: Job) -> tuple[list[str], dict[str, str], list[int] | None]:
        command = job_command(job, self.functions, self.python)
        argv = step_argv(job, self.hosts, command, bind=self.bind, mpi=self.mpi, jobid=self.job)
        env = dict(os.environ)
        if len(job.placement.slots) > 1:
            job.taskdir.mkdir(parents=True, exist_ok=True)
            hostfile = job.taskdir / "hostfile"
            hostfile.write_text(hostfile_text(job.placement, self.hosts))
            env["SLURM_HOSTFILE"] = str(hostfile)
        env["OMP_NUM_THREADS"] = str(job.cpus)
        env.update(job.env)  # the task's own environment wins, as locally
        env.update(attempt_vars(job.task, job.attempt, job.folder))
        if job.kind == "python":
            env["PYTHONPATH"] = python_path()
        return argv, env, None
