"""What became of remote runs: their batch jobs' states, asked of each host at once (one
command a host, over its master connection), and, for a job that ended, what its link of
the chain decided (``chain.log`` in the run's folder): the run goes on in the next job,
ended, or stopped. Written back to the registry."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from shoal.batch import Job, JobState, system
from shoal.errors import BatchError, DefinitionError, RemoteError
from shoal.remote import hosts, registry
from shoal.remote.chain import LOG
from shoal.remote.ssh import Connection

# A run in one of these states is not asked about again
FINAL = {"done", "stalled", "crashed", "stopped", "failed", "cancelled", "timeout"}
DECIDED = {"no progress": "stalled", "done": "done", "crashed": "crashed", "stopped": "stopped"}


def refresh() -> list[registry.RemoteRun]:
    """Every remote run, as its host says now (a host that cannot be reached leaves its runs
    as they were, with a note)."""
    by_host: dict[str, list[registry.RemoteRun]] = defaultdict(list)
    for r in registry.all_runs():
        if r.job and r.state not in FINAL:
            by_host[r.host].append(r)
    for waiting in by_host.values():
        try:
            _refresh_host(registry.host_of(waiting[0]), waiting)
        except (RemoteError, BatchError, DefinitionError) as err:
            for r in waiting:
                registry.update(r, note=f"not asked: {str(err)[:200]}")
    return registry.all_runs()


def _refresh_host(host: hosts.Host, waiting: list[registry.RemoteRun]) -> None:
    conn = Connection(host)
    jobs = system(host.batch.value).ask(conn.runner(), [r.job for r in waiting if r.job])
    for r in waiting:
        job = jobs.get(r.job or "")
        if job is None:
            continue
        if not job.state.ended and job.state is not JobState.UNKNOWN:
            registry.update(r, state=job.state.value, note=job.reason or None)
            continue
        last = _last_link(conn, r.folder, r.job or "")
        if last is None:  # killed before it could say: the batch system's word
            registry.update(r, state=_silent_state(job), note=_silent_note(r, job))
        elif last.get("decision") == "continue" and last.get("next"):
            registry.update(r, job=str(last["next"]), state="pending", note=last.get("why"))
        else:
            state = DECIDED.get(str(last.get("decision")), "done")
            registry.update(r, state=state, note=last.get("why"))


def _last_link(conn: Connection, folder: str, job: str) -> dict[str, Any] | None:
    """The end entry of job ``job`` in the run's chain.log, None when it has none."""
    out = conn.run(["sh", "-c", 'tail -n 50 "$1" 2>/dev/null || true', "sh", f"{folder}/{LOG}"])
    found = None
    for line in out.stdout.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") == "end" and str(entry.get("job")) == job:
            found = entry
    return found


def _silent_state(job: Job) -> str:
    return job.state.value if job.state.ended else "unknown"


def _silent_note(r: registry.RemoteRun, job: Job) -> str:
    """What to say of a job that ended without its driver saying how (killed)."""
    said = f" ({job.reason})" if job.reason else ""
    if job.state is JobState.TIMEOUT:
        return (
            f"the allocation's time limit ended job {job.id} before its driver stopped{said}. "
            f"The run is kept: shoal remote resume {r.name} continues it in a new job; give "
            "a later submit a longer --time, or --until-done"
        )
    if job.state is JobState.CANCELLED:
        return f"job {job.id} was cancelled{said}; shoal remote resume {r.name} continues the run"
    return (
        f"job {job.id} ended without a word in chain.log{said} (killed, or its node failed): "
        f"see batch.out (shoal remote fetch {r.name}); shoal remote resume {r.name} continues "
        "the run"
    )
