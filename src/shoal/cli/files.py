"""Config-file ensembles on the command line: ``shoal run FILE.yaml`` and ``shoal plan FILE``."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

FILES = (".yaml", ".yml", ".json", ".toml")


MAX_TASKS_HELP = (
    "The most tasks the run may have, all groups together (default 10,000,000, or the file's "
    "max_tasks); larger ensembles are refused before anything is built."
)


def run_file(file: str, sets: tuple[str, ...], max_tasks: int | None = None) -> list[Any]:
    """Build the ensemble of ``file`` and run it; returns the runs (one)."""
    from shoal.config import load
    from shoal.config.build import workflow
    from shoal.runtime.api import run

    ens = load(file, sets, max_tasks)
    for note in dict.fromkeys(ens.notes):
        click.secho(f"shoal: note: {note}", fg="yellow", err=True)
    wf = workflow(ens)
    r = run(wf, **ens.run_options())
    _leaves(ens, wf, r)
    return [r]


def _leaves(ens: Any, wf: Any, r: Any, most: int = 5) -> None:
    """Print the results of the last function groups (those nothing waits for), when small."""
    needed = {up for g in ens.groups.values() for up in ens.needs(g)}
    for name, g in ens.groups.items():
        if name in needed or g.fn is None or not g.start or g.size > most:
            continue
        for t in wf.tasks:
            if t.options.tags[:1] != (name,):
                continue
            try:
                value = repr(r.result(t))
            except Exception as err:  # failed or never ran: say so, briefly
                value = f"no result ({type(err).__name__})"
            click.echo(f"{name}: {value[:500]}{' ...' if len(value) > 500 else ''}")


def _plan_text(p: dict[str, Any]) -> str:
    lines = [
        f"{p['name']} ({p['format']} format, {p['file']}): {p['tasks']:,} tasks start with "
        f"the run, on {p['resources']}"
    ]
    for g in p["groups"]:
        head = f"  {g['group']}: {g['tasks']:,} tasks, {g['starts']}, each {g['each']}"
        if g.get("nodes"):
            head += f", {g['nodes']} nodes"
        if g.get("after"):
            head += f", after {', '.join(g['after'])}"
        if g.get("duration") is not None:
            head += f", {g['duration']:g} s each ({g['core_hours']:,} core-hours)"
        lines.append(head)
        for c in g["first"]:
            lines.append(f"      {c}")
        if g["tasks"] > len(g["first"]):
            lines.append(f"      ... ({g['tasks'] - len(g['first']):,} more)")
    if p.get("core_hours") is not None:
        left = p.get("core_hours_without")
        but = f" (not counting {', '.join(left)}: no duration given)" if left else ""
        lines.append(f"  total: {p['core_hours']:,} core-hours{but}")
    if p["rules"]:
        lines.append("  rules:")
        lines.extend(f"    {r}" for r in p["rules"])
    for note in p.get("notes", []):
        lines.append(f"  note: {note}")
    return "\n".join(lines)


def register(main: click.Group) -> None:
    @main.command()
    @click.argument("file", type=click.Path(exists=True, dir_okay=False))
    @click.option(
        "--set",
        "sets",
        multiple=True,
        metavar="GROUP.KEY=VALUE",
        help="Override a value of the file, e.g. --set relax.cpus=4 (repeatable).",
    )
    @click.option("--first", default=3, show_default=True, help="Commands shown per group.")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @click.option("--max-tasks", type=int, default=None, help=MAX_TASKS_HELP)
    def plan(
        file: str, sets: tuple[str, ...], first: int, as_json: bool, max_tasks: int | None
    ) -> None:
        """Show what FILE (a .yaml, .json or .toml ensemble) would run, without running it:
        tasks per group, the first commands, resources, rules, and core-hours when the
        groups give a duration."""
        if not file.endswith(FILES):
            raise click.UsageError(f"{file}: shoal plan reads .yaml, .json or .toml files")
        from shoal.config import load

        p = load(file, sets, max_tasks, imports=False).plan(first=first)
        if as_json:
            click.echo(json.dumps(p, indent=2))
        else:
            click.echo(_plan_text(p))
        sys.stdout.flush()
