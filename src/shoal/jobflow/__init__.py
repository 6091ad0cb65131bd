"""jobflow and atomate2 Flows on shoal: the same Jobs, Flows and Makers, packed into one machine
or one allocation, with a run directory that keeps every output.

    from jobflow import Flow, job
    import shoal

    run = shoal.run(flow, store=my_jobstore, cpus=16)   # every shoal.run option works
    run.result(some_job)                                # its newest output, as jobflow reads it

    from shoal.jobflow import run_locally               # jobflow's, same signature and return
    responses = run_locally(flow, store=store, create_folders=True, ensure_success=True)

Each job runs through jobflow's own ``Job.run`` in a worker (execute.py); shoal manages the
graph, the resources (``manager_config["shoal"]``: :func:`set_options`), the Responses, and
the run directory, from which the user's JobStore is filled (manager.py). jobflow is imported
only when this package is used (the extra ``shoal[jobflow]``).

Rules of this package: it sits above the runtime (it runs workflows through
``shoal.runtime.api``); ``graph`` and ``execute`` are what workers import, so they import
nothing of the runtime.
"""

from __future__ import annotations

from shoal.lazy import exports

_WHERE = {
    "FlowRun": "shoal.jobflow.manager",
    "is_jobflow": "shoal.jobflow.graph",
    "outputs": "shoal.jobflow.jobstore",
    "replay": "shoal.jobflow.jobstore",
    "resume": "shoal.jobflow.manager",
    "run": "shoal.jobflow.manager",
    "run_locally": "shoal.jobflow.manager",
    "set_options": "shoal.jobflow.config",
    "submit": "shoal.jobflow.manager",
}
__all__ = sorted(_WHERE)

__getattr__, __dir__ = exports(__name__, _WHERE, globals())
