"""No batch system: a workstation, or a login node where jobs run in the background.

A job is the batch script run by ``bash`` in its own session (``setsid``), detached from the
connection that started it; its id is its process id, and its exit code is kept in
``JOBS/<pid>.exit``. Cancelling signals its whole process group. A process id can be reused
after the job ended and its exit file was removed: keep the folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from shoal.batch.base import BatchSystem, Job, JobState, Output, Request, clock
from shoal.errors import BatchError, DefinitionError

# $0: the script, $1: its output, $2: the folder of exit codes. The job prints its own
# process id (setsid may fork), then lets go of the connection's output.
_START = (
    'mkdir -p "$2" && { setsid bash -c \'echo $$; exec > "$1" 2>&1 < /dev/null;'
    ' bash "$0"; echo $? > "$2/$$.exit"\' "$0" "$1" "$2" & }'
)
# An exit file first (the job ended); a zombie (ended, not yet reaped) is not running.
_STATUS = (
    'd="$1"; shift; for p; do if [ -f "$d/$p.exit" ]; then echo "$p exit $(cat "$d/$p.exit")";'
    ' else s=$(ps -o stat= -p "$p" 2>/dev/null); if [ -n "$s" ] && [ "${s#Z}" = "$s" ];'
    ' then echo "$p running"; else echo "$p unknown"; fi; fi; done'
)
_CANCEL = 'for p; do kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p"; done'


@dataclass
class Shell(BatchSystem):
    jobs: str = ".shoal/jobs"  # the folder of exit codes (relative: to the home folder)

    def __post_init__(self) -> None:
        self.name = "shell"
        self.directive = "# shoal:"

    def directives(self, req: Request) -> list[str]:
        return [f"job {req.name}", f"time limit {clock(req.time_limit)}", f"output {req.output}"]

    def submit(self, script: str, after: str | None = None) -> list[str]:
        if after:
            raise DefinitionError(
                "without a batch system a job cannot wait for another: chains need Slurm, "
                "PBS or Grid Engine"
            )
        return ["bash", "-c", _START, script, script + ".out", self.jobs]

    def submitted(self, out: Output) -> str:
        text = out.stdout.strip()
        if out.code != 0 or not text.isdigit():
            raise BatchError(f"could not start the job in the background: {out.stderr.strip()}")
        return text

    def status(self, ids: Sequence[str]) -> list[list[str]]:
        return [["bash", "-c", _STATUS, "status", self.jobs, *ids]]

    def parse_status(self, outputs: Sequence[Output], ids: Sequence[str]) -> dict[str, Job]:
        found: dict[str, Job] = {}
        for out in outputs:
            for line in out.stdout.splitlines():
                parts = line.split()
                if len(parts) < 2 or parts[0] not in ids:
                    continue
                if parts[1] == "running":
                    found[parts[0]] = Job(parts[0], JobState.RUNNING)
                elif parts[1] == "exit" and len(parts) > 2 and parts[2].lstrip("-").isdigit():
                    code = int(parts[2])
                    state = JobState.DONE if code == 0 else JobState.FAILED
                    found[parts[0]] = Job(parts[0], state, "", code)
        return {i: found.get(i, Job(i, JobState.UNKNOWN)) for i in ids}

    def cancel(self, ids: Sequence[str]) -> list[str]:
        return ["bash", "-c", _CANCEL, "cancel", *ids]
