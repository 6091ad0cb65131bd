"""Setting shoal's options on the jobs of a jobflow Flow: ``manager_config["shoal"]``."""

from __future__ import annotations

import copy
from typing import Any

from shoal.jobflow.graph import KEY
from shoal.spec.options import Options


def set_options(
    flow: Any,
    *,
    name_filter: str | None = None,
    class_filter: type | None = None,
    function_filter: Any = None,
    dynamic: bool = True,
    **options: Any,
) -> Any:
    """Give the jobs of ``flow`` (a Job or Flow) shoal task options, e.g.
    ``set_options(flow, name_filter="relax", cpus=4, gpus=1, timeout=3600)``.

    The options go into each matching job's ``manager_config["shoal"]``, merged with what is
    there (other managers' keys are kept). Filters, as jobflow's ``update_config``:
    ``name_filter`` (a part of the job's name), ``class_filter`` (the Maker class that made
    the job), ``function_filter`` (the job's function). ``dynamic``: the jobs these jobs make
    at run time (replace, detour, addition) get them too. Returns ``flow``.
    """
    where = "shoal.jobflow.set_options"
    if "name" in options:
        raise ValueError(f"{where}: 'name' is the job's own; rename the job instead")
    Options().merged(where, **options)  # unknown or bad options: refused here, named
    jobs = [flow] if hasattr(flow, "function") else [j for j, _ in flow.iterflow()]
    for job in jobs:
        if name_filter is not None and name_filter not in job.name:
            continue
        if class_filter is not None and not isinstance(job.maker, class_filter):
            continue
        if function_filter is not None and _unwrapped(job.function) != _unwrapped(function_filter):
            continue
        config = copy.deepcopy(dict(job.config.manager_config or {}))
        config[KEY] = {**(config.get(KEY) or {}), **options}
        job.update_config({"manager_config": config}, dynamic=dynamic)
    return flow


def _unwrapped(fn: Any) -> Any:
    return getattr(fn, "original", fn)
