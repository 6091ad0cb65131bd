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
  beside the driver (:meth:`shoal.backends.dask.DaskBackend.in_allocation`): no interpreter
  start and no ``slurmctld`` round trip per task. With ``python="steps"`` each is a step of
  ``python -m shoal.backends.isolated``. Tasks with several ranks, isolated ones and
  commands are always steps.

The functions at the top are pure (they build argv and parse Slurm's output) and are tested on
recorded output; :class:`Slurm` is the one object that runs ``scontrol``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shoal.backends.base import Backend, Job, job_command
from shoal.backends.execute import attempt_vars, describe_exit
from shoal.backends.processes import Processes
from shoal.core.events import Outcome
from shoal.core.resources import Node, Placement
from shoal.errors import BackendError

GPU_VARS = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "ZE_AFFINITY_MASK")
# srun's own messages when a step cannot be created for a passing reason (retry later)
TRANSIENT = (
    "step creation temporarily disabled",
    "step limit reached",
    "unable to contact slurm controller",
    "socket timed out",
    "slurm_receive_msg",
    "too many steps",
)
BACKOFF = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0)  # seconds before each new try of one step


# -- pure: parsing ------------------------------------------------------------------------------
def ids(text: str) -> tuple[int, ...]:
    """``"0-3,8,10-11"`` -> (0, 1, 2, 3, 8, 10, 11)."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return tuple(out)


_NODE_LINE = re.compile(r"^\s*Nodes=(\S+)\s+CPU_IDs=(\S+)(.*)$")
_GRES_IDX = re.compile(r"gpu(?::[^:(,\s]+)?:(\d+)\(IDX:([^)]*)\)")  # gpu[:type]:N(IDX:...)


def job_layout(text: str) -> list[tuple[str, tuple[int, ...], tuple[int, ...]]]:
    """From ``scontrol show job -d``: (node expression, core ids, GPU indices) per node line."""
    out = []
    for line in text.splitlines():
        m = _NODE_LINE.match(line)
        if not m:
            continue
        gpus: tuple[int, ...] = ()
        for g in _GRES_IDX.finditer(m.group(3)):  # every GPU type the node has
            if g.group(2) not in ("", "N/A"):
                gpus += ids(g.group(2))
        gpus = tuple(sorted(set(gpus)))
        out.append((m.group(1), ids(m.group(2)), gpus))
    return out


def field(text: str, key: str) -> str | None:
    """The value of ``Key=value`` in ``scontrol show ...`` output."""
    m = re.search(rf"(?:^|\s){re.escape(key)}=(\S*)", text)
    return m.group(1) if m else None


def can_bind(config: str) -> bool:
    """Whether ``scontrol show config`` says tasks can be bound to cores."""
    m = re.search(r"^TaskPlugin\s*=\s*(\S.*)$", config, re.M)
    return bool(m) and "task/none" not in m.group(1)


def transient(stderr: str) -> bool:
    """Whether srun failed to create the step for a reason that passes (retry, not fail).
    Only srun's own lines count (``srun: ...``), not what the task itself printed."""
    own = "\n".join(line for line in stderr.splitlines() if line.startswith("srun:")).lower()
    return any(t in own for t in TRANSIENT)


_KILLED = re.compile(r"^srun: error: \S+: tasks? [\d,-]+: (?!Exited with exit code)(.+)$", re.M)


def signalled(o: Outcome, stderr: str) -> Outcome:
    """The outcome of a step whose task was killed by a signal, as the local backend words it:
    ``srun`` exits 128+N and says ``task 0: Segmentation fault`` (not ``Exited with exit
    code``); that is a ``crash``, not an ``exit``."""
    code = o.exit_code
    if code is None or not 128 < code < 160 or o.kind != "exit" or not _KILLED.search(stderr):
        return o
    kind, words = describe_exit(128 - code)
    error = o.error.replace(f"the process exited with code {code}", words)
    if error == o.error:
        error = f"{words}\n{o.error}"
    return dataclasses.replace(o, kind=kind, error=error, exit_code=128 - code)


# -- pure: building the step ------------------------------------------------------------------
def _mask(cores: Sequence[int]) -> str:
    return hex(sum(1 << c for c in cores))


def cpu_bind(cores: Sequence[int], ranks: int) -> str:
    """``--cpu-bind`` for ``ranks`` ranks on ``cores`` of one node (cores split evenly)."""
    if ranks <= 0 or not cores:
        return ""
    per = len(cores) // ranks
    if per <= 1:
        return "--cpu-bind=map_cpu:" + ",".join(str(c) for c in cores[:ranks])
    groups = [cores[i * per : (i + 1) * per] for i in range(ranks)]
    return "--cpu-bind=mask_cpu:" + ",".join(_mask(g) for g in groups)


def step_argv(
    job: Job,
    hosts: Sequence[str],
    command: list[str],
    *,
    bind: bool = True,
    srun: str = "srun",
    mpi: str | None = None,
    jobid: str | None = None,
) -> list[str]:
    """The ``srun`` line that runs ``command`` where ``job.placement`` says."""
    p: Placement = job.placement
    names = [hosts[s.node] for s in p.slots]
    ranks = sum(s.ranks for s in p.slots)
    argv = [
        srun,
        "--exact",
        f"--nodes={len(p.slots)}",
        f"--ntasks={ranks}",
        f"--cpus-per-task={job.cpus}",
        f"--nodelist={','.join(names)}",
        f"--job-name=shoal-{job.task}",
        "--kill-on-bad-exit=1",
    ]
    if jobid:
        argv.append(f"--jobid={jobid}")
    if len(p.slots) > 1:  # ranks where the placement put them: SLURM_HOSTFILE, one per rank
        argv.append("--distribution=arbitrary")
    if len(p.slots) == 1 and p.slots[0].memory:
        argv.append(f"--mem={p.slots[0].memory}M")
    if bind and len(p.slots) == 1:
        flag = cpu_bind(p.slots[0].cores, p.slots[0].ranks)
        if flag:
            argv.append(flag)
    if mpi:
        argv.append(f"--mpi={mpi}")
    per_node = max(len(s.gpus) for s in p.slots)
    argv.append(f"--gres=gpu:{per_node}" if per_node else "--gres=none")
    return [*argv, *command]


def hostfile_text(p: Placement, hosts: Sequence[str]) -> str:
    """One line per rank, naming its node (for ``srun --distribution=arbitrary``)."""
    return "".join(f"{hosts[s.node]}\n" * s.ranks for s in p.slots)


# -- the runner ----------------------------------------------------------------------------------
def run(argv: list[str], timeout: float = 60) -> str:
    """Run a Slurm command; its stdout, or a BackendError that says what went wrong."""
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise BackendError(
            f"{argv[0]} was not found: the Slurm backend needs Slurm's commands on PATH"
        ) from None
    except subprocess.TimeoutExpired:
        raise BackendError(f"{shlex.join(argv)} did not answer in {timeout:g} s") from None
    if out.returncode != 0:
        raise BackendError(f"{shlex.join(argv)} failed: {out.stderr.strip() or out.returncode}")
    return out.stdout


def allocation(job_id: str) -> list[Node]:
    """The nodes of allocation ``job_id``: their names from ``SLURM_JOB_NODELIST`` (the job's
    ``NodeList`` when the driver is not inside that job), expanded by ``scontrol show
    hostnames``; the core ids and GPU indices of each from ``scontrol show job -d``."""
    detail = run(["scontrol", "show", "job", "-d", job_id])
    inside = os.environ.get("SLURM_JOB_ID") == job_id
    nodelist = os.environ.get("SLURM_JOB_NODELIST") if inside else None
    nodelist = nodelist or field(detail, "NodeList")
    if not nodelist or nodelist == "(null)":
        raise BackendError(f"allocation {job_id} has no nodes yet: is the job running?")
    names = run(["scontrol", "show", "hostnames", nodelist]).split()
    layout: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    for expr, cores, gpus in job_layout(detail):
        for name in run(["scontrol", "show", "hostnames", expr]).split():
            layout[name] = (cores, gpus)
    missing = [n for n in names if n not in layout]
    if missing:
        raise BackendError(
            f"scontrol show job -d {job_id} gives no core ids for {', '.join(missing)}"
        )
    return [Node(n, *layout[n]) for n in names]


def end_time(job_id: str) -> float | None:
    """When allocation ``job_id`` ends (epoch seconds), or None when it has no time limit."""
    text = run(["squeue", "-h", "-j", job_id, "-o", "%e"]).strip()
    if not text or text in ("N/A", "NONE", "Unknown"):
        return None
    try:
        return time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None


class _Steps(Processes):
    """Processes whose failures to create a step are tried again after a back-off."""

    def _one(self, chain: object, job: Job) -> Outcome:  # type: ignore[override]
        tries = 0
        while True:
            outcome = super()._one(chain, job)  # type: ignore[arg-type]
            if outcome.ok:
                return outcome
            err = job.taskdir / "stderr"
            text = err.read_text(errors="replace") if err.exists() else ""
            outcome = signalled(outcome, text)
            if tries >= len(BACKOFF) or self.closing or not transient(text):
                return outcome
            err.unlink(missing_ok=True)
            (job.taskdir / "stdout").unlink(missing_ok=True)
            pause = time.monotonic() + BACKOFF[tries]
            while time.monotonic() < pause:  # a cancel or a close ends the wait
                if self.closing or getattr(chain, "cancelled", False):
                    return outcome
                time.sleep(0.05)
            tries += 1


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
        self.pool: Any = None  # the Dask backend of the persistent workers
        self.where: dict[tuple[int, int], str] = {}
        self.functions: dict[int, bytes] = {}
        cores = sum(len(n.cores) for n in self._nodes)
        self.limit = max_concurrent_steps or cores
        self.steps: _Steps | None = None
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
        self.steps = _Steps(self._prepare, set(), lambda: None, rundir / "workers", self.limit)

    def _workers(self) -> Any:
        """The persistent workers, started on the first Python task."""
        if self.pool is None:
            from shoal.backends.dask import DaskBackend

            assert self.rundir is not None
            pool = DaskBackend.in_allocation(
                self.job,
                host=self.host,
                python=self.python,
                overlap=True,
                folder=self.rundir / "dask",
            )
            by_name = {n.name: n for n in pool.nodes()}
            pool._nodes = [by_name[h] for h in self.hosts]  # the same node order as here
            for fid, payload in self.functions.items():
                pool.define(fid, payload)
            pool.start(self.rundir)
            self._notes.extend(pool.notes())
            self.pool = pool
        return self.pool

    def define(self, function: int, payload: bytes) -> None:
        self.functions[function] = payload
        if self.pool is not None:
            self.pool.define(function, payload)

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
            self.pool.cancel(task, attempt)
        else:
            self._started().cancel(task, attempt)

    def poll(self, timeout: float) -> list[Outcome]:
        steps = self._started()
        deadline = time.monotonic() + max(timeout, 0)
        got: list[Outcome] = []
        while True:
            out = got + steps.drain()
            got = []
            if self.pool is not None:
                out += self.pool.poll(0)
            if out:
                for o in out:
                    self.where.pop((o.task, o.attempt), None)
                return out
            left = deadline - time.monotonic()
            if left <= 0:
                return []
            try:  # wait on the steps; look at the workers at least every 10 ms
                got = [steps.outcomes.get(timeout=min(left, 0.01 if self.pool else left))]
            except Exception:  # queue.Empty
                continue

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None
        if self.steps is not None:
            self.steps.close()
            self.steps = None

    # -- steps ------------------------------------------------------------------------------
    def _started(self) -> _Steps:
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
            from shoal.backends.local import _python_path

            env["PYTHONPATH"] = _python_path()
        return argv, env, None
