"""(Son of) Grid Engine: ``qsub -terse``, ``qstat`` (jobs it still holds), ``qacct -j``
(ended ones, from its accounting file), ``qdel``.

A job of more than one slot needs a parallel environment (``-pe NAME SLOTS``), whose name
each site chooses: give it in the request's options, e.g. ``-pe mpi 64``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from shoal.batch.base import BatchSystem, Job, JobState, Output, Request, Runner, clock
from shoal.errors import BatchError, DefinitionError

LIMITS = ("jobs are allowed per user", "jobs are allowed per cluster", "unable to contact qmaster")


@dataclass
class SGE(BatchSystem):
    def __post_init__(self) -> None:
        self.name = "sge"
        self.directive = "#$"
        self.job_variable = "JOB_ID"

    def directives(self, req: Request) -> list[str]:
        if req.nodes > 1 and not any(o.startswith("-pe ") for o in req.options):
            raise DefinitionError(
                f"{req.nodes} nodes on Grid Engine need a parallel environment: add an option "
                "such as '-pe mpi SLOTS' (qconf -spl lists the site's)"
            )
        out = [
            f"-N {req.name}",
            "-S /bin/bash",
            f"-l h_rt={clock(req.time_limit)}",
            f"-o {req.output}",
            "-j y",
        ]
        return out + self.optional(req, queue="-q {}", account="-A {}", after="-hold_jid {}")

    def submit(self, script: str, after: str | None = None) -> list[str]:
        chain = ["-hold_jid", after] if after else []
        return ["qsub", "-terse", *chain, script]

    def submitted(self, out: Output) -> str:
        text = out.stdout.strip()
        if out.code != 0 or not text:
            said = out.stderr.strip() or f"exit code {out.code}"
            raise BatchError(f"qsub refused the job: {said}")
        return text.splitlines()[-1].split(".")[0].strip()  # "ID", or "ID.1-10:1" (array)

    def limit_hit(self, out: Output) -> bool:
        return out.code != 0 and any(x in out.stderr for x in LIMITS)

    def status(self, ids: Sequence[str]) -> list[list[str]]:
        return [["qstat"], *[["qacct", "-j", i] for i in ids]]

    def parse_status(self, outputs: Sequence[Output], ids: Sequence[str]) -> dict[str, Job]:
        found: dict[str, Job] = {}
        if outputs:
            found.update(_qstat(outputs[0].stdout, ids))
        for out in outputs[1:]:
            job = _qacct(out.stdout) if out.code == 0 else None
            if job is not None and job.id in ids and job.id not in found:
                found[job.id] = job
        return {i: found.get(i, Job(i, JobState.UNKNOWN)) for i in ids}

    def ask(self, run: Runner, ids: Sequence[str]) -> dict[str, Job]:
        """qstat for all; then ``qacct -j`` only for the jobs qstat no longer lists."""
        first = run(["qstat"])
        jobs = self.parse_status([first], ids)
        gone = [i for i, j in jobs.items() if j.state is JobState.UNKNOWN]
        more = [run(["qacct", "-j", i]) for i in gone]
        return self.parse_status([first, *more], ids)

    def cancel(self, ids: Sequence[str]) -> list[str]:
        return ["qdel", *ids]


def _state(code: str) -> JobState:
    """qstat's state letters: qw, hqw, r, t, Rr, s, dr, Eqw..."""
    if "E" in code:
        return JobState.FAILED  # an error state: the job stays until deleted
    # "d" (being deleted) is not an end yet: a qdel, or the end of a job whose qrsh -inherit
    # tasks are being cleaned up; qacct tells how it ended once qstat forgets it
    if "r" in code or "t" in code:
        return JobState.RUNNING
    return JobState.PENDING


def _qstat(text: str, ids: Sequence[str]) -> dict[str, Job]:
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[0] in ids:
            out[parts[0]] = Job(parts[0], _state(parts[4]), f"qstat state {parts[4]}")
    return out


def _qacct(text: str) -> Job | None:
    """The last record of ``qacct -j ID`` (a job resubmitted has several)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("==="):
            fields = {}
            continue
        key, _, value = line.partition(" ")
        if key:
            fields[key] = value.strip()
    if "jobnumber" not in fields:
        return None
    code_text = (fields.get("exit_status", "").split() or [""])[0]  # "137  (Killed)"
    code = int(code_text) if re.fullmatch(r"-?\d+", code_text) else None
    failed = fields.get("failed", "0")
    if failed.startswith("0") and code == 0:
        state = JobState.DONE
    elif "qdel" in failed or (failed.startswith("100") and code in (137, 143)):
        state = JobState.CANCELLED
    elif "h_rt" in failed or "limit" in failed:
        state = JobState.TIMEOUT
    else:
        state = JobState.FAILED
    reason = f"failed {failed}" if not failed.startswith("0") else ""
    return Job(fields["jobnumber"], state, reason, code)
