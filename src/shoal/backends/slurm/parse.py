"""Pure helpers of the Slurm backend: they build ``srun`` lines and parse Slurm's output, and
run nothing (tested on recorded output)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

from shoal.backends.base import Job
from shoal.backends.execute import describe_exit
from shoal.core.events import Outcome
from shoal.core.resources import Placement
from shoal.spec.kinds import Failure

# srun's own messages when a step cannot be created for a passing reason (retry later)
TRANSIENT = (
    "step creation temporarily disabled",
    "step limit reached",
    "unable to contact slurm controller",
    "socket timed out",
    "slurm_receive_msg",
    "too many steps",
)


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
    return m is not None and "task/none" not in m.group(1)


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
    if code is None or not 128 < code < 160 or o.kind != Failure.EXIT or not _KILLED.search(stderr):
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


def worker_step(job: str, name: str, cores: int, overlap: bool) -> list[str]:
    """The ``srun`` words that start one persistent Dask worker on node ``name`` as a job
    step holding ``cores`` (``overlap``: steps can still be created beside it)."""
    return [
        "srun",
        f"--jobid={job}",
        "--overlap" if overlap else "--exact",
        "-N1",
        "-n1",
        f"--cpus-per-task={cores}",
        f"--nodelist={name}",
        f"--job-name=shoal-dask-{name}",
    ]
