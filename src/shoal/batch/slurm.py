"""Slurm: ``sbatch``, ``squeue`` (jobs it still holds), ``sacct`` (ended ones, where the site
keeps accounting), ``scancel``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from shoal.batch.base import BatchSystem, Job, JobState, Output, Request, clock
from shoal.errors import BatchError

# Slurm's job states (squeue's %T, sacct's State) in shoal's words
STATES = {
    "PENDING": JobState.PENDING,
    "CONFIGURING": JobState.PENDING,
    "REQUEUED": JobState.PENDING,
    "REQUEUE_HOLD": JobState.PENDING,
    "REQUEUE_FED": JobState.PENDING,
    "RESV_DEL_HOLD": JobState.PENDING,
    "SUSPENDED": JobState.PENDING,
    "RUNNING": JobState.RUNNING,
    "COMPLETING": JobState.RUNNING,
    "STAGE_OUT": JobState.RUNNING,
    "SIGNALING": JobState.RUNNING,
    "RESIZING": JobState.RUNNING,
    "COMPLETED": JobState.DONE,
    "FAILED": JobState.FAILED,
    "NODE_FAIL": JobState.FAILED,
    "BOOT_FAIL": JobState.FAILED,
    "OUT_OF_MEMORY": JobState.FAILED,
    "PREEMPTED": JobState.FAILED,
    "DEADLINE": JobState.TIMEOUT,
    "TIMEOUT": JobState.TIMEOUT,
    "CANCELLED": JobState.CANCELLED,
    "REVOKED": JobState.CANCELLED,
    "SPECIAL_EXIT": JobState.FAILED,
}
# What sbatch says when a site limit refuses a job for now (retry later, not a failure)
LIMITS = (
    "MaxSubmitJob",  # QOSMaxSubmitJobPerUserLimit, AssocMaxSubmitJobLimit
    "MaxSubmit",
    "Job violates accounting/QOS policy",
    "Socket timed out",
    "Unable to contact slurm controller",
)


@dataclass
class Slurm(BatchSystem):
    def __post_init__(self) -> None:
        self.name = "slurm"
        self.directive = "#SBATCH"
        self.job_variable = "SLURM_JOB_ID"

    def directives(self, req: Request) -> list[str]:
        out = [
            f"--job-name={req.name}",
            f"--nodes={req.nodes}",
            f"--time={clock(req.time_limit)}",
            "--exclusive",
            f"--output={req.output}",
        ]
        return out + self.optional(
            req, queue="--partition={}", account="--account={}", after="--dependency=afterany:{}"
        )

    def submit(self, script: str, after: str | None = None) -> list[str]:
        chain = [f"--dependency=afterany:{after}"] if after else []
        return ["sbatch", "--parsable", *chain, script]

    def submitted(self, out: Output) -> str:
        text = out.stdout.strip()
        if out.code != 0 or not text:
            said = out.stderr.strip() or f"exit code {out.code}"
            raise BatchError(f"sbatch refused the job: {said}")
        return text.splitlines()[-1].split(";")[0].strip()  # "ID" or "ID;cluster"

    def limit_hit(self, out: Output) -> bool:
        """Whether a refusal is a site's limit on jobs (or a busy controller): try later."""
        return out.code != 0 and any(x in out.stderr for x in LIMITS)

    def status(self, ids: Sequence[str]) -> list[list[str]]:
        joined = ",".join(ids)
        return [
            ["squeue", "-h", "-t", "all", "-j", joined, "-o", "%i|%T|%r"],
            ["sacct", "-n", "-P", "-X", "-j", joined, "-o", "JobID,State,ExitCode,Reason"],
        ]

    def parse_status(self, outputs: Sequence[Output], ids: Sequence[str]) -> dict[str, Job]:
        found: dict[str, Job] = {}
        if outputs:  # squeue: "ID|STATE|REASON"; it exits 1 when it knows none of the ids
            for line in outputs[0].stdout.splitlines():
                parts = line.strip().split("|")
                if len(parts) >= 2 and parts[0] in ids:
                    reason = parts[2] if len(parts) > 2 and parts[2] != "None" else ""
                    found[parts[0]] = Job(parts[0], _state(parts[1]), reason)
        if len(outputs) > 1 and outputs[1].code == 0:  # sacct: "ID|STATE|EXIT:SIGNAL|REASON"
            for line in outputs[1].stdout.splitlines():
                parts = line.strip().split("|")
                if len(parts) >= 3 and parts[0] in ids and parts[0] not in found:
                    code = parts[2].split(":")[0]
                    reason = parts[3] if len(parts) > 3 and parts[3] != "None" else ""
                    found[parts[0]] = Job(
                        parts[0], _state(parts[1]), reason, int(code) if code.isdigit() else None
                    )
        return {i: found.get(i, Job(i, JobState.UNKNOWN)) for i in ids}

    def cancel(self, ids: Sequence[str]) -> list[str]:
        return ["scancel", *ids]


def _state(text: str) -> JobState:
    """``CANCELLED by 1000`` and ``RUNNING`` alike: the first word decides."""
    word = text.split()[0].rstrip("+") if text.split() else ""
    return STATES.get(word, JobState.UNKNOWN)
