"""The progress bar shown while a run goes on, and the summary printed at its end."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.progress import (
    Progress as Bar,
)
from rich.table import Table

from shoal.core.states import TERMINAL, State

if TYPE_CHECKING:
    from shoal.runtime.run import Run

console = Console(stderr=True)


class Progress:
    def __init__(self, name: str, total: int) -> None:
        self.bar = Bar(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.task = self.bar.add_task(name, total=total, detail="")

    def __enter__(self) -> Progress:
        self.bar.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.stop()

    def update(self, counts: dict[State, int], total: int) -> None:
        done = sum(counts[s] for s in TERMINAL)
        bad = counts[State.FAILED] + counts[State.DEP_FAILED]
        detail = f"running {counts[State.RUNNING]}"
        if bad:
            detail += f"  [red]failed {counts[State.FAILED]} dep_failed {counts[State.DEP_FAILED]}"
        self.bar.update(self.task, completed=done, total=total, detail=detail)


def summary(run: Run) -> None:
    """Print counts, and the failures with their reasons and log folders."""
    st = run.status()
    counts = st["counts"]
    parts = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    colour = "green" if run.ok else "red"
    console.print(f"[{colour}]run {run.name} {run.state}[/]: {parts}  ({run.dir})", soft_wrap=True)
    if run.ok:
        return
    fails = run.failures()
    if fails:
        table = Table(title="failed tasks", show_lines=False)
        for col in ("id", "name", "kind", "reason", "logs"):
            table.add_column(col, overflow="fold")
        for f in fails[:10]:
            table.add_row(
                str(f["id"]),
                f["name"],
                str(f["kind"] or ""),
                f["reason"] or "",
                f["logs"] or "none (it printed nothing)",
            )
        console.print(table)
        if len(fails) > 10:
            console.print(f"... and {len(fails) - 10} more: shoal tasks {run.dir} --state failed")
