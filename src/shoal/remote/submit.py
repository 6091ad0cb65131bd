"""Send a run to a remote host: stage the script or config file and the inputs named with it,
write the batch script for the host's batch system, submit it, and record the run.

The driver then runs inside the allocation exactly as ``shoal run`` does there (with
``--time-left``, so that it stops starting tasks before the allocation ends and leaves the
run resumable); nothing on the compute nodes reaches back to this machine.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from pathlib import Path

from shoal.batch import JobState, Request, stop_margin, system
from shoal.batch.base import BatchSystem
from shoal.errors import BatchError, DefinitionError, RemoteError
from shoal.remote import registry
from shoal.remote.check import shoal_there
from shoal.remote.hosts import Host
from shoal.remote.ssh import Connection

SUBMIT_TRIES = 6  # a submission a site limit refuses is tried again this often
SUBMIT_WAIT = 30.0  # seconds before the first retry (doubled each time)


def run_name(target: Path, now: float | None = None) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", target.stem)[:40] or "run"
    return f"{stem}-{time.strftime('%Y%m%d-%H%M%S', time.localtime(now))}"


def inputs(target: Path, include: Sequence[str]) -> list[str]:
    """The files to stage, relative to the target's folder: the target, and each file the
    ``include`` globs match there (a glob that matches nothing is an error: a typo)."""
    root = target.parent
    found = [target.name]
    for pattern in include:
        if Path(pattern).is_absolute() or ".." in Path(pattern).parts:
            raise DefinitionError(
                f"--include {pattern!r}: give a glob relative to {root} (inputs are staged "
                "beside the workflow, in the same layout)"
            )
        matched = sorted(p for p in root.glob(pattern) if p.is_file())
        if not matched:
            raise DefinitionError(f"--include {pattern!r} matches no file in {root}")
        found += [
            str(p.relative_to(root)) for p in matched if str(p.relative_to(root)) not in found
        ]
    return found


def submit(
    host: Host,
    target: Path,
    *,
    nodes: int = 1,
    limit: int = 3600,
    include: Sequence[str] = (),
    options: Sequence[str] = (),
    until_done: bool = False,
    minutes_left: float | None = None,
    conn: Connection | None = None,
    args: Sequence[str] = (),
) -> registry.RemoteRun:
    """Stage, write the batch script, submit; the recorded run. ``until_done``: a chain of
    allocations (:mod:`shoal.remote.chain`) until the run ends; ``args``: the script's own
    arguments (``sys.argv[1:]`` there)."""
    if until_done and host.batch.value == "shell":
        raise DefinitionError(
            f"--until-done needs a batch system on {host.name} (its jobs wait for each "
            "other); without one a run has no time limit to outlive"
        )
    if not target.is_file():
        raise DefinitionError(f"{target}: no such file to run")
    if args and target.suffix != ".py":
        raise DefinitionError(f"{target}: extra arguments {' '.join(args)!r} are for scripts")
    files = inputs(target, include)
    conn = conn or Connection(host)
    batch = system(host.batch.value)
    same_shoal(host, conn)
    base = conn.private_folder(host.workdir)
    name = run_name(target)
    folder = f"{base}/{name}"
    run = registry.add(name, host, folder, target.name)
    try:
        conn.private_folder(folder)
        conn.put_tree(target.parent, files, folder)
        req = Request(
            name=f"shoal-{name}"[:64],
            nodes=nodes,
            time_limit=limit,
            account=host.account,
            queue=host.queue,
            output=f"{folder}/batch.out",
            workdir=folder,
            options=(*host.options, *options),
            environment=host.pre_run,
        )
        script = f"{folder}/job.sh"
        left = stop_margin(limit) if minutes_left is None else minutes_left
        command = ["shoal", "chain", target.name, "--batch", host.batch.value]
        command += ["--script", script, "--time-left", f"{left:g}"]
        command += ["--until-done"] if until_done else []
        command += ["--", *args] if args else []
        conn.run(
            ["sh", "-c", 'cat > "$1" && chmod 700 "$1"', "sh", script], batch.script(req, command)
        )
        job = _submit(conn, batch, script)
    except (RemoteError, BatchError, DefinitionError) as err:
        registry.update(run, state="failed", note=str(err))
        raise
    return registry.update(run, job=job, state=JobState.PENDING.value)


def resubmit(
    run: registry.RemoteRun, host: Host, conn: Connection | None = None
) -> registry.RemoteRun:
    """Submit the run's batch script again: its driver resumes the run where the last job
    left it (an allocation that expired, a job killed or cancelled, tasks marked for
    another try). Refused while a job of the run may still be queued or running."""
    if run.state in ("submitting", "pending", "running", "unknown") and run.job:
        raise DefinitionError(
            f"remote run {run.name} has batch job {run.job} ({run.state}): it resumes the run "
            f"itself. Wait for it (shoal remote list), or end it first (shoal remote stop "
            f"{run.name})"
        )
    if run.job is None:
        raise DefinitionError(
            f"remote run {run.name} was never submitted ({run.note or run.state}): send it "
            "again with shoal remote submit"
        )
    conn = conn or Connection(host)
    same_shoal(host, conn)
    job = _submit(conn, system(host.batch.value), f"{run.folder}/job.sh")
    return registry.update(run, job=job, state=JobState.PENDING.value, note="resumed")


def same_shoal(host: Host, conn: Connection) -> None:
    """Refuse to send a run to a host whose shoal is missing or another version: the run
    would be written there by one and read here by the other."""
    step = shoal_there(host, conn)
    if not step.ok:
        raise RemoteError(f"{host.name}: {step.said}")


def _submit(conn: Connection, batch: BatchSystem, script: str) -> str:
    """Submit, trying again (with back-off) while a site's limit on jobs refuses it."""
    wait = SUBMIT_WAIT
    for attempt in range(SUBMIT_TRIES):
        out = conn.run(batch.submit(script), environment=True)
        if out.code == 0 or not batch.limit_hit(out) or attempt == SUBMIT_TRIES - 1:
            return batch.submitted(out)
        time.sleep(wait)
        wait *= 2
    raise AssertionError("unreachable")


def in_folder(folder: str, argv: Sequence[str]) -> list[str]:
    """``argv`` run in ``folder`` there."""
    return ["sh", "-c", 'cd "$1" && shift && exec "$@"', "sh", folder, *argv]
