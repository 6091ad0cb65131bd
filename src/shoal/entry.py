"""``shoal.run`` and ``shoal.submit``: a shoal Workflow, or a jobflow Job or Flow.

A jobflow object goes to :mod:`shoal.jobflow` (which imports jobflow); anything else to
:mod:`shoal.runtime.api`, which checks it.
"""

from __future__ import annotations

from typing import Any

from shoal.jobflow.graph import is_jobflow
from shoal.runtime import api
from shoal.runtime.run import Run


def run(wf: Any, **options: Any) -> Run:
    if is_jobflow(wf):
        from shoal.jobflow.manager import run as run_flow

        return run_flow(wf, **options)
    return api.run(wf, **options)


def submit(wf: Any, **options: Any) -> Run:
    if is_jobflow(wf):
        from shoal.jobflow.manager import submit as submit_flow

        return submit_flow(wf, **options)
    return api.submit(wf, **options)


_FLOW = """
    ``wf`` may also be a jobflow Job or Flow (``shoal.jobflow.run``): then ``store=`` names
    the JobStore that receives the outputs, and ``allow_external_references=`` is jobflow's."""
run.__doc__ = (api.run.__doc__ or "") + _FLOW
submit.__doc__ = (api.submit.__doc__ or "") + _FLOW
run.__signature__ = api.run.__signature__  # type: ignore[attr-defined]
submit.__signature__ = api.submit.__signature__  # type: ignore[attr-defined]
