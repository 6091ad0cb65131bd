"""``shoal host check NAME``: each part a remote run needs, tried in order, with what failed
and what to do: the SSH login, the work folder, the batch system's commands, and shoal
itself (found after the host's ``pre_run`` lines, and of the same version as here)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import metadata

from shoal.batch import Kind
from shoal.errors import RemoteError
from shoal.remote.hosts import Host
from shoal.remote.ssh import Connection

# The command each batch system must have on the host
COMMANDS = {
    Kind.SLURM: ("sbatch", "squeue", "scancel"),
    Kind.PBS: ("qsub", "qstat", "qdel"),
    Kind.TORQUE: ("qsub", "qstat", "qdel"),
    Kind.SGE: ("qsub", "qstat", "qdel", "qacct"),
    Kind.SHELL: ("bash", "setsid"),
}


@dataclass(frozen=True)
class Step:
    what: str
    ok: bool
    said: str


def check(host: Host, conn: Connection | None = None) -> list[Step]:
    """Try each part; stop at the first that the others need (the login)."""
    conn = conn or Connection(host)
    steps: list[Step] = []
    try:
        conn.run(["true"])
    except RemoteError as err:
        return [Step("ssh login", False, str(err))]
    steps.append(Step("ssh login", True, f"{host.ssh} answers; master connection up"))
    try:
        where = conn.private_folder(host.workdir)
        steps.append(Step("work folder", True, f"{where} (private to you)"))
    except RemoteError as err:
        steps.append(Step("work folder", False, str(err)))
    steps.append(_batch(host, conn))
    steps.append(shoal_there(host, conn))
    return steps


def _batch(host: Host, conn: Connection) -> Step:
    names = COMMANDS[host.batch]
    probe = 'for c; do command -v "$c" >/dev/null || echo "$c"; done'
    out = conn.run(["sh", "-c", probe, "sh", *names], environment=True)
    missing = out.stdout.split()
    if out.code != 0 or missing:
        return Step(
            f"batch system ({host.batch})",
            False,
            f"not found on {host.name} after pre_run: {', '.join(missing) or out.stderr.strip()}"
            f". Is it a {host.batch} cluster? Load its module in --pre-run, or give the "
            "right --batch",
        )
    return Step(f"batch system ({host.batch})", True, ", ".join(names) + " found")


def shoal_there(host: Host, conn: Connection) -> Step:
    out = conn.run(["shoal", "--version"], environment=True)
    if out.code != 0:
        return Step(
            "shoal",
            False,
            f"shoal is not found on {host.name} after pre_run ({out.stderr.strip()[-200:]}). "
            "Install it there (python -m pip install shoal) and activate its environment "
            "in --pre-run",
        )
    there = re.search(r"version (\S+)", out.stdout)
    here = metadata.version("shoal")
    if there is None or there[1] != here:
        return Step(
            "shoal",
            False,
            f"{host.name} has shoal {there[1] if there else '?'}, this machine {here}: install "
            "the same version on both (runs are read on both sides)",
        )
    return Step("shoal", True, f"shoal {here}, as here")
