"""A chain of allocations: what each batch job of a chained run does, inside its allocation
(``shoal chain``, written into the batch script by ``shoal remote submit --until-done``).

1. It submits its own continuation first: the same batch script, held until this job ends
   however it ends (afterany), so that the chain goes on even when this job is killed at its
   time limit or its node fails; no workstation takes part.
2. It runs the workflow (``shoal run FILE``), or resumes the run an earlier link left
   (``shoal resume RUN``), with ``--time-left``: the driver stops starting tasks before the
   allocation ends and leaves the run resumable.
3. When the run ended (every task ran or could not), it cancels the continuation. When the
   driver stopped early, the continuation resumes it, unless this link finished no task:
   then the chain stops, and says why (a task longer than an allocation would repeat
   forever).

Each link appends a line of JSON to ``chain.log`` in the run's folder: the link, its job, the
next job, tasks finished before and after, and what it decided.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shoal.batch import system
from shoal.batch.base import BatchSystem
from shoal.store.runs import find_runs, summary

LOG = "chain.log"
STOPPED = 3  # shoal run/resume: stopped early (deadline, signal), resumable
ENDED = ("succeeded", "failed", "dep_failed", "cancelled", "skipped")


def finished(rundir: Path | None) -> int:
    """Tasks that reached an end in the run (0 when there is no run yet)."""
    if rundir is None:
        return 0
    counts = summary(rundir)["counts"]
    return sum(int(v) for k, v in counts.items() if k in ENDED)


def links(folder: Path) -> list[dict[str, Any]]:
    """What ``chain.log`` says, oldest first (lines cut off by a kill are skipped)."""
    try:
        lines = (folder / LOG).read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def _log(folder: Path, **entry: Any) -> None:
    entry["time"] = time.time()
    with open(folder / LOG, "a") as fh:
        fh.write(json.dumps(entry) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def run_link(
    folder: Path,
    target: str,
    kind: str,
    script: str,
    time_left: float,
    until_done: bool,
    args: Sequence[str] = (),
) -> int:
    """One link of the chain (or the only job, without ``until_done``); its exit code is
    the driver's. ``args``: the script's own arguments (a resume does not need them)."""
    batch = system(kind)
    # this job's id: the batch system's variable; without one (the shell), the process that
    # runs the batch script is the job
    this = os.environ.get(batch.job_variable, "") if batch.job_variable else str(os.getppid())
    number = len([e for e in links(folder) if e.get("event") == "start"]) + 1
    runs = find_runs(folder, depth=1)
    rundir = runs[0] if runs else None
    before = finished(rundir)
    chained = until_done and this and batch.job_variable
    following, refused = _continue(batch, script, this) if chained else (None, "")
    _log(folder, event="start", link=number, job=this, next=following, finished=before)
    verb = ["resume", str(rundir)] if rundir else ["run", target]
    argv = [sys.executable, "-m", "shoal.cli.main", *verb, "--time-left", f"{time_left:g}"]
    argv += ["--", *args] if args and not rundir else []
    code = subprocess.call(argv, cwd=folder)
    runs = find_runs(folder, depth=1)
    after = finished(runs[0] if runs else None)
    if code == STOPPED and following and after > before:
        why = f"stopped before the allocation's end; job {following} resumes it"
        _log(folder, event="end", link=number, job=this, next=following, finished=after,
             code=code, decision="continue", why=why)  # fmt: skip
        return code
    if following:
        _cancel(batch, following)
    if code == STOPPED and following:
        why = (
            f"link {number} finished no task (still {after}): the chain stops rather than "
            "repeat. A task may need longer than one allocation: give a longer --time, or "
            "split the task"
        )
        decision = "no progress"
    elif code == STOPPED:
        why = refused or (
            "the driver stopped early (the allocation's end was near, or a stop was asked) "
            f"and no chain was asked (--until-done): shoal remote resume {folder.name} "
            "continues the run in a new job"
        )
        decision = "stopped"
    else:
        why = "the run ended" if code in (0, 1) else f"the driver exited with code {code}"
        decision = "done" if code in (0, 1) else "crashed"
    _log(folder, event="end", link=number, job=this, next=None, finished=after, code=code,
         decision=decision, why=why)  # fmt: skip
    return code


def _continue(batch: BatchSystem, script: str, this: str) -> tuple[str | None, str]:
    """Submit the continuation (the same script, after this job): its job id, or None and
    why the batch system refused it (the run then stops with this allocation)."""
    for wait in (0, 5, 20, 60):  # a site's limit on jobs may lift
        time.sleep(wait)
        out = _run(batch.submit(script, after=this))
        if out.code == 0:
            return batch.submitted(out), ""
        if not batch.limit_hit(out):
            break
    why = f"the continuation was refused: {out.stderr.strip()[-300:]}"
    print(f"shoal chain: {why}", file=sys.stderr)
    return None, why


def _cancel(batch: BatchSystem, job: str) -> None:
    _run(batch.cancel([job]))


def _run(argv: list[str]) -> Any:
    from shoal.batch import local

    return local(argv)
