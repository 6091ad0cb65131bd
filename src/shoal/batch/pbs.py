"""PBS Pro (OpenPBS) and Torque: ``qsub``, ``qstat -f`` (Torque's text; PBS Pro's JSON with
``-F json``, and ``-x`` for ended jobs), ``qdel``.

No real PBS ran where shoal is tested: the parsers are tested on the output formats of PBS
Pro's and Torque's manuals, written out by hand (tests/batch/recorded/).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from shoal.batch.base import BatchSystem, Job, JobState, Output, Request, clock
from shoal.errors import BatchError

PENDING = set("QHWTSU")  # queued, held, waiting, moving, suspended, user-suspended
RUNNING = set("RBEX")  # running, array begun, exiting; X: a finished subjob still listed
# Exit statuses the server gives to jobs it ended itself (negative: never started or killed)
WALLTIME = (-29, -11)  # PBS Pro's and Torque's JOB_EXEC_KILL_WALLTIME
KILLED = (271, 265, 143, 137)  # 256 + SIGTERM/SIGKILL (PBS), or 128 + (qdel's signals)
LIMITS = ("would exceed", "Maximum number of jobs", "too many", "cannot connect to server")


@dataclass
class PBS(BatchSystem):
    flavour: str = "pro"  # "pro" (PBS Pro, OpenPBS: select=) or "torque" (nodes=:ppn=)

    def __post_init__(self) -> None:
        if self.flavour not in ("pro", "torque"):
            raise ValueError(f"PBS flavour {self.flavour!r}: pro or torque")
        self.name = "pbs"
        self.directive = "#PBS"
        self.job_variable = "PBS_JOBID"

    def directives(self, req: Request) -> list[str]:
        cores = req.cores_per_node or 1
        if self.flavour == "pro":
            size = f"-l select={req.nodes}:ncpus={cores}:mpiprocs={cores}"
        else:
            size = f"-l nodes={req.nodes}:ppn={cores}"
        out = [
            f"-N {req.name}",
            size,
            f"-l walltime={clock(req.time_limit)}",
            f"-o {req.output}",
            "-j oe",
        ]
        return out + self.optional(
            req, queue="-q {}", account="-A {}", after="-W depend=afterany:{}"
        )

    def submit(self, script: str, after: str | None = None) -> list[str]:
        chain = ["-W", f"depend=afterany:{after}"] if after else []
        return ["qsub", *chain, script]

    def submitted(self, out: Output) -> str:
        text = out.stdout.strip()
        if out.code != 0 or not text:
            said = out.stderr.strip() or f"exit code {out.code}"
            raise BatchError(f"qsub refused the job: {said}")
        return text.splitlines()[-1].strip()  # "1234.server": PBS wants the whole id

    def limit_hit(self, out: Output) -> bool:
        return out.code != 0 and any(x in out.stderr for x in LIMITS)

    def status(self, ids: Sequence[str]) -> list[list[str]]:
        if self.flavour == "pro":
            return [["qstat", "-f", "-F", "json", "-x", *ids]]
        return [["qstat", "-f", *ids]]

    def parse_status(self, outputs: Sequence[Output], ids: Sequence[str]) -> dict[str, Job]:
        found: dict[str, Job] = {}
        for out in outputs:
            text = out.stdout.strip()
            records = _json(text) if text.startswith("{") else _text(text)
            for jid, rec in records.items():
                key = _match(jid, ids)
                if key is not None:
                    found[key] = _job(key, rec)
        return {i: found.get(i, Job(i, JobState.UNKNOWN)) for i in ids}

    def cancel(self, ids: Sequence[str]) -> list[str]:
        return ["qdel", *ids]


def _match(jid: str, ids: Sequence[str]) -> str | None:
    """The id asked for that names job ``jid`` ("12.server" asked as "12" or in full)."""
    for i in ids:
        if jid == i or jid.split(".")[0] == i.split(".")[0]:
            return i
    return None


def _json(text: str) -> dict[str, dict[str, str]]:
    try:
        jobs = json.loads(text).get("Jobs", {})
    except ValueError:
        raise BatchError(f"qstat -F json printed what is not JSON: {text[:200]!r}") from None
    return {k: {a: str(b) for a, b in v.items()} for k, v in jobs.items()}


def _text(text: str) -> dict[str, dict[str, str]]:
    """``qstat -f``'s blocks: ``Job Id: ID`` then ``    key = value`` lines (a long value
    goes on over lines that start with a tab)."""
    jobs: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    key = ""
    for line in text.splitlines():
        head = re.match(r"^Job Id:\s*(\S+)", line)
        if head:
            current = jobs.setdefault(head[1], {})
            continue
        if current is None:
            continue
        if line.startswith("\t") and key:
            current[key] += line.strip()
            continue
        k, sep, v = line.strip().partition(" = ")
        if sep:
            key = k
            current[key] = v
    return jobs


def _job(jid: str, rec: dict[str, str]) -> Job:
    letter = rec.get("job_state", "?")[:1]
    code_text = rec.get("Exit_status", rec.get("exit_status", ""))
    code = int(code_text) if re.fullmatch(r"-?\d+", code_text) else None
    comment = rec.get("comment", "")
    if letter in PENDING:
        return Job(jid, JobState.PENDING, comment)
    if letter in RUNNING and code is None:
        return Job(jid, JobState.RUNNING, comment)
    if letter in ("F", "C") or code is not None:
        if code == 0:
            state = JobState.DONE
        elif code in WALLTIME:
            state = JobState.TIMEOUT
        elif code in KILLED:
            state = JobState.CANCELLED
        else:
            state = JobState.FAILED
        return Job(jid, state, comment, code)
    return Job(jid, JobState.UNKNOWN, f"job_state {letter}")
