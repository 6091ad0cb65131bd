"""jobflow Jobs and Flows as shoal tasks: the driver turns the flow it is given into tasks, and
a worker turns the jobs a jobflow Response makes into the tasks of a shoal Response.

Each job becomes one Python task that calls :func:`shoal.jobflow.execute.run_job` with the job
itself, the run's :class:`Setup` and the outputs of the tasks of the jobs it refers to (its
inputs). A task's output is the :data:`Bundle` of its job: the document jobflow wrote for it,
its blobs, and what jobflow's own ``Job.run`` returned. A replaced job's dependents see the
bundle of its stand-in (shoal's ``replace``), so a reference always reads the newest index, as
in jobflow.

The task's name is ``"{job name} {uuid}/{index}"``: ``shoal status``, ``shoal tasks`` and
``shoal logs UUID`` show and find jobs by what jobflow calls them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from shoal.errors import DefinitionError
from shoal.spec.options import Options
from shoal.spec.task import Task, TaskFactory

TAG = "jobflow"  # every task of a jobflow job carries it
KEY = "shoal"  # the key of shoal's options in a job's manager_config

# What a job's task returns (and its dependents receive): see execute.bundle.
Bundle = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Setup:
    """What every job's task needs to know of the run (one constant argument of each task).

    ``stores``: the names of the user's JobStore's additional stores (None: any name, as with
    jobflow's default store). ``folders``: run each job in a folder of its own (its task's
    folder, or ``root`` when given: a new ``job_<time>-<n>`` folder there, as jobflow's
    ``run_locally(create_folders=True)`` names them). ``root``: the folder jobs run in when
    they get none of their own. ``keep``: keep a failed job's exception in its task folder
    (``run_locally(raise_immediately=True)`` raises it)."""

    stores: tuple[str, ...] | None
    folders: bool = True
    root: str | None = None
    keep: bool = False


def is_jobflow(obj: Any) -> bool:
    """Whether ``obj`` is a jobflow Job or Flow (a list of them too), without importing
    jobflow."""
    if isinstance(obj, list | tuple) and obj:
        return all(is_jobflow(o) for o in obj)
    return any(c.__module__.startswith("jobflow.") for c in type(obj).__mro__[:-1])


def label(job: Any) -> str:
    """A job as jobflow's log lines name it: name and uuid."""
    return f"{job.name} ({job.uuid})"


def task_name(job: Any) -> str:
    return f"{job.name} {job.uuid}/{job.index}"


def options_of(job: Any) -> dict[str, Any]:
    """The shoal options in the job's ``manager_config["shoal"]``, checked."""
    config = getattr(job.config, "manager_config", None) or {}
    mine = config.get(KEY) if isinstance(config, Mapping) else None
    if mine is None:
        return {}
    where = f"job {label(job)}: manager_config[{KEY!r}]"
    if not isinstance(mine, Mapping):
        raise DefinitionError(
            f"{where} must be a dict of shoal task options (cpus, gpus, memory, timeout, ...), "
            f"got {type(mine).__name__}"
        )
    if "name" in mine:
        raise DefinitionError(f"{where}: 'name' is the job's own; rename the job instead")
    Options().merged(where, **mine)  # refuses unknown or bad options, naming the job
    return dict(mine)


def tolerates(job: Any) -> bool:
    """Whether the job runs when a job it refers to failed (``on_missing_references`` NONE or
    PASS: it then resolves that reference to None, or leaves it), as jobflow-remote readies
    it; one whose parent never ran (it failed upstream) ends with that parent."""
    on = getattr(job.config, "on_missing_references", "error")
    return str(getattr(on, "value", on)) != "error"


def unknown_store(job: Any, setup: Setup, err: BaseException) -> DefinitionError | None:
    """The error for a job that had something to save into an additional store the user's
    JobStore does not have (jobflow's ValueError ``err``); None for any other error. jobflow
    refuses only a value there, not the keyword: atomate2's jobs all name ``data=``, and save
    into it only what is not None."""
    text = str(err)
    if not isinstance(err, ValueError) or not text.startswith("Unrecognised additional store"):
        return None
    name = text.rsplit(":", 1)[-1].strip()
    have = ", ".join(setup.stores or ()) or "none"
    return DefinitionError(
        f"job {label(job)} has output to save into the additional store {name!r}, which the "
        f"JobStore does not have (it has: {have}); add it to the JobStore's "
        f"additional_stores (JobStore(docs, additional_stores={{{name!r}: MemoryStore()}})), "
        "or drop it from the job's @job(...) keywords"
    )


def flat(flow: Any) -> list[Any]:
    """The jobs of ``flow`` and of the flows inside it, in the order they were added."""
    out: list[Any] = []
    todo = [flow]
    while todo:
        item = todo.pop()
        if hasattr(item, "function"):
            out.append(item)
        else:
            todo.extend(reversed(item.jobs))
    return out


def order(flow: Any) -> list[Any]:
    """The jobs of ``flow``, each after the jobs it refers to (otherwise as added); a cycle
    is refused, named. Made here rather than by jobflow's ``iterflow``, which builds a
    networkx graph of the flow first: a third of the time a no-op job costs."""
    jobs = flat(flow)
    index = {job.uuid: job for job in jobs}
    waiting = {job.uuid: len(set(job.input_uuids) & index.keys()) for job in jobs}
    children: dict[str, list[Any]] = {}
    for job in jobs:
        for uuid in set(job.input_uuids) & index.keys():
            children.setdefault(uuid, []).append(job)
    ready = [job for job in reversed(jobs) if not waiting[job.uuid]]
    out: list[Any] = []
    while ready:
        job = ready.pop()
        out.append(job)
        for child in reversed(children.get(job.uuid, ())):
            waiting[child.uuid] -= 1
            if not waiting[child.uuid]:
                ready.append(child)
    if len(out) == len(jobs):
        return out
    return _cycle(flow)


def _cycle(flow: Any) -> list[Any]:
    """Refuse ``flow``, naming a cycle in it (jobflow's order, should it find none)."""
    try:
        return [job for job, _ in flow.iterflow()]
    except ValueError as err:
        if "cycle" not in str(err):
            raise
        import networkx

        cycle = networkx.find_cycle(flow.graph)
        names = {j.uuid: label(j) for j in flow.jobs if hasattr(j, "function")}
        steps = " -> ".join(names.get(a, a) for a, _ in cycle)
        raise DefinitionError(
            f"flow {flow.name!r} ({flow.uuid}) has a dependency cycle: {steps} -> back to "
            f"the first; a job cannot (even indirectly) use its own output"
        ) from None


def tasks_of(
    flow: Any,
    setup: Setup,
    outside: Mapping[str, Any],
    run: TaskFactory[..., Any],
    jobs: list[Any] | None = None,
) -> dict[str, Task]:
    """A task for each job of ``flow`` (a jobflow Flow), keyed by uuid, in dependency order.

    ``outside``: for a uuid that is not a job of the flow, what its dependents take as that
    job's output (a task, a stored reference, or a bundle read from the store; None:
    nothing, the job's ``on_missing_references`` decides); a reference to any other job is
    refused, naming both. ``run``: the task factory of ``execute.run_job``; ``jobs``: the
    flow's jobs in order, when known already."""
    made: dict[str, Task] = {}
    for job in order(flow) if jobs is None else jobs:
        inputs = []
        for uuid in sorted(job.input_uuids):
            if uuid in made:
                inputs.append(made[uuid])
            elif uuid in outside:
                if outside[uuid] is not None:
                    inputs.append(outside[uuid])
            else:
                raise DefinitionError(
                    f"job {label(job)} refers to the output of job {uuid}, which is not in "
                    f"flow {flow.name!r}: add that job to the flow, or (shoal.jobflow.run and "
                    "run_locally) pass allow_external_references=True to read its output from "
                    "the JobStore"
                )
        opts = options_of(job)
        tags = (TAG, *opts.pop("tags", ()))
        if tolerates(job):
            opts.setdefault("tolerate", True)
        made[job.uuid] = run.options(name=task_name(job), tags=tags, **opts)(job, setup, *inputs)
    return made


def external(jobs: list[Any]) -> list[tuple[Any, str]]:
    """The (job, uuid) pairs where one of ``jobs`` refers to a job not among them."""
    mine = {j.uuid for j in jobs}
    return [(j, u) for j in jobs for u in sorted(j.input_uuids) if u not in mine]


def modules_of(jobs: list[Any]) -> tuple[str, ...]:
    """The modules the jobs' functions (or their Makers) live in: imported once before the
    workers start (the run option ``preload``, after jobflow itself), not in every worker. A
    script's own functions (``__main__``) are sent by value and need none."""
    out: list[str] = []
    for job in jobs:
        fn = job.function
        owner = getattr(fn, "__self__", None)  # a Maker's make method
        name = type(owner).__module__ if owner is not None else getattr(fn, "__module__", None)
        if name and name != "__main__" and not name.startswith("builtins"):
            out.append(name)
    return tuple(dict.fromkeys(out))


def stand_in_last(tasks: dict[str, Task], uuid: str) -> tuple[list[Task], bool]:
    """The tasks of a replacement, its stand-in (the job that takes the replaced ``uuid``)
    last, as shoal's ``replace`` wants; False when no job takes the uuid (a Flow without an
    output: nothing stands in, the dependents read the replaced job's own output)."""
    standin = tasks.get(uuid)
    rest: Iterable[Task] = (t for u, t in tasks.items() if u != uuid)
    if standin is None:
        return list(rest), False
    return [*rest, standin], True
