"""What became of remote runs: their batch jobs' states, asked of each host at once (one
command a host, over its master connection), written back to the registry."""

from __future__ import annotations

from collections import defaultdict

from shoal.batch import JobState, system
from shoal.errors import BatchError, DefinitionError, RemoteError
from shoal.remote import hosts, registry
from shoal.remote.ssh import Connection

FINAL = {s.value for s in JobState if s.ended} | {"failed"}


def refresh() -> list[registry.RemoteRun]:
    """Every remote run, with the state of its batch job as its host says now (a host that
    cannot be reached leaves its runs as they were, with a note)."""
    runs = registry.all_runs()
    by_host: dict[str, list[registry.RemoteRun]] = defaultdict(list)
    for r in runs:
        if r.job and r.state not in FINAL:
            by_host[r.host].append(r)
    for name, waiting in by_host.items():
        try:
            host = hosts.find(name)
            jobs = system(host.batch.value).ask(
                Connection(host).runner(), [r.job for r in waiting if r.job]
            )
        except (RemoteError, BatchError, DefinitionError) as err:
            for r in waiting:
                registry.update(r, note=f"not asked: {str(err)[:200]}")
            continue
        for r in waiting:
            job = jobs.get(r.job or "")
            if job is None:
                continue
            note = job.reason or None
            if job.state is JobState.UNKNOWN:
                note = "the batch system no longer knows the job: shoal remote status tells"
            registry.update(r, state=job.state.value, note=note)
    return registry.all_runs()
