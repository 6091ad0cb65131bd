"""What a request names, checked against the store before it is sent: the tasks a retry,
rerun or cancel would touch (``shoal retry/rerun/cancel`` and the dashboard's actions refuse
at once what the driver would refuse)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn

from shoal.errors import DefinitionError
from shoal.store.queries import Reader

REOPENABLE = ("failed", "cancelled")  # what retry takes (shoal.core.reopen)
FINISHED = ("succeeded", "failed", "dep_failed", "cancelled", "skipped")


def refuse(rundir: Path, what: str) -> NoReturn:
    raise DefinitionError(f"{what} (run {rundir}); nothing was asked of it")


def _named(r: Any, tasks: tuple[str, ...]) -> list[Any]:
    """The rows of the tasks named (ids or unique names); a missing one exits 2."""
    return [r.find(task_ref(t)) for t in tasks]


def check_retry(rundir: Path, tasks: tuple[str, ...], failed: bool, tag: str | None) -> None:
    """Refuse at once what the driver would refuse: a task that does not exist, or that is not
    failed or cancelled (only those can be retried), or a selection that names nothing."""
    with Reader(rundir) as r:
        for row in _named(r, tasks):
            if row.state in REOPENABLE:
                continue
            why = f"cannot retry task #{row.id} {row.name}: it is {row.state}; only failed or "
            why += "cancelled tasks can be retried"
            if row.state == "dep_failed":
                why += " (retry the task upstream of it that failed; it reopens with it)"
            elif row.state in FINISHED:
                why += f" (to run a finished task again: shoal rerun {row.id} --run {rundir})"
            else:
                why += " (it has not finished)"
            refuse(rundir, why)
        if tasks:
            return
        found = r.tasks(state="failed") if failed else []
        if tag:
            found += [t for t in r.tasks(tag=tag) if t.state in REOPENABLE]
    if not found:
        what = " or ".join(
            x
            for x in (
                "failed tasks" if failed else "",
                f"failed or cancelled tasks tagged {tag!r}" if tag else "",
            )
            if x
        )
        refuse(rundir, f"there are no {what} to retry")


def chosen_to_rerun(
    rundir: Path, tasks: tuple[str, ...], tag: str | None, states: tuple[str, ...]
) -> list[int]:
    """The ids a rerun names: TASKS, or every finished task of ``tag`` and ``states``; each
    must exist and have finished."""
    if not (tasks or tag or states):
        refuse(rundir, "name tasks, or give --tag T or --state S")
    wanted = tuple(x.strip() for s in states for x in s.split(",") if x.strip())
    bad = [s for s in wanted if s not in FINISHED]
    if bad:
        refuse(
            rundir,
            f"--state {', '.join(bad)}: a rerun takes finished tasks ({', '.join(FINISHED)})",
        )
    with Reader(rundir) as r:
        if tasks:
            rows = [r.find(task_ref(t)) for t in tasks]
            for row in rows:
                if row.state not in FINISHED:
                    refuse(
                        rundir,
                        f"cannot rerun task #{row.id} {row.name}: it is {row.state}; it has "
                        f"not finished (wait for it, or cancel it first: shoal cancel {row.id} "
                        f"--run {rundir})",
                    )
            return [row.id for row in rows]
        found, _ = r.table(wanted or FINISHED, tag=tag)
    if not found:
        refuse(rundir, "no finished task" + (f" of tag {tag}" if tag else "") + " to rerun")
    return [t["id"] for t in found]


def check_cancel(rundir: Path, tasks: tuple[str, ...], tag: str | None) -> None:
    """A cancel needs tasks that exist and have not finished."""
    with Reader(rundir) as r:
        for row in _named(r, tasks):
            if row.state in FINISHED:
                refuse(
                    rundir,
                    f"cannot cancel task #{row.id} {row.name}: it already ended {row.state}",
                )
        if tag and not tasks and not [t for t in r.tasks(tag=tag) if t.state not in FINISHED]:
            refuse(rundir, f"no unfinished task is tagged {tag!r}: nothing to cancel")


def task_ref(text: str) -> int | str:
    """A task as named on the command line: an id, or a name."""
    return int(text) if text.isdigit() else text
