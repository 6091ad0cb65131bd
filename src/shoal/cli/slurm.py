"""``shoal slurm submit``: get a run into a Slurm allocation, and into the next one.

The batch script starts the driver inside the allocation with ``--time-left``, so the driver
stops starting tasks before the allocation ends and leaves the run resumable; ``--resume
RUN_DIR`` writes a script that continues that run in a new allocation.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import click


def minutes(limit: str) -> float:
    """Slurm's time formats (MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS) in minutes."""
    from shoal.batch import seconds
    from shoal.errors import DefinitionError

    try:
        return seconds(limit) / 60
    except DefinitionError as err:
        raise click.UsageError(f"--time: {err}") from None


def script(
    target: str,
    *,
    nodes: int,
    time_limit: str,
    partition: str | None,
    account: str | None,
    resume: bool,
    time_left: float,
    extra: tuple[str, ...],
    workdir: Path,
    python: str = sys.executable,
) -> str:
    """The batch script (written by the batch layer, as for remote runs): #SBATCH lines,
    then the driver inside the allocation, its tasks as job steps."""
    from shoal.batch import Request, system

    name = re.sub(r"[^A-Za-z0-9_.+-]", "_", Path(target).stem if not resume else Path(target).name)
    verb = ["resume", target] if resume else ["run", target]
    req = Request(
        name=f"shoal-{name}"[:64],
        nodes=nodes,
        time_limit=round(minutes(time_limit) * 60),
        account=account,
        queue=partition,
        output=str(workdir / "shoal-slurm-%j.out"),
        workdir=str(workdir),
        options=extra,
        environment=("export SHOAL_BACKEND=slurm",),
    )
    cmd = [python, "-m", "shoal.cli.main", *verb, "--time-left", f"{time_left:g}"]
    return system("slurm").script(req, cmd)


def _partition_nodes(partition: str | None) -> tuple[str, int] | None:
    """The partition a job goes to (the default one when none is named) and its node count,
    from ``sinfo``; None when sinfo cannot say."""
    argv = ["sinfo", "-h", "-o", "%P %D"] + (["-p", partition] if partition else [])
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return None
    counts: dict[str, int] = {}
    default = None
    for line in out.stdout.splitlines():
        name, _, count = line.partition(" ")
        if name.endswith("*"):
            name = default = name[:-1]
        if count.strip().isdigit():
            counts[name] = counts.get(name, 0) + int(count)
    chosen = partition or default
    if chosen is None or chosen not in counts:
        return None
    return chosen, counts[chosen]


def check_cluster(nodes: int, partition: str | None, batch: Path) -> None:
    """Refuse, before anything is submitted, a job that no part of the cluster can run: more
    nodes than the partition has (Slurm would queue it and it would pend forever without a
    word), or a request no node can satisfy (``sbatch --test-only`` says so)."""
    have = _partition_nodes(partition)
    if have is not None and nodes > have[1]:
        raise click.UsageError(
            f"--nodes {nodes}: partition {have[0]} has {have[1]} node(s) (sinfo), so the job "
            f"would wait forever; ask for at most {have[1]}, or name another --partition"
        )
    try:
        out = subprocess.run(
            ["sbatch", "--test-only", str(batch)], capture_output=True, text=True, timeout=60
        )
    except FileNotFoundError:
        raise click.UsageError("sbatch was not found: is Slurm installed here?") from None
    except subprocess.TimeoutExpired:
        return  # the controller is slow: let the real submission tell
    if out.returncode != 0:
        raise click.UsageError(
            f"Slurm cannot run this job anywhere (sbatch --test-only: "
            f"{out.stderr.strip() or out.stdout.strip()}); compare --nodes, --partition and "
            f"the --sbatch options with what sinfo shows. Nothing was submitted."
        )


def register(main: click.Group) -> None:
    @main.group()
    def slurm() -> None:
        """Run shoal inside Slurm allocations."""

    @slurm.command()
    @click.argument("target", required=False)
    @click.option("--nodes", type=int, default=1, show_default=True, help="Nodes to allocate.")
    @click.option("--time", "time_limit", required=True, help="Time limit, e.g. 2:00:00.")
    @click.option("--partition", help="Slurm partition.")
    @click.option("--account", help="Slurm account.")
    @click.option(
        "--resume",
        "resume_dir",
        type=click.Path(exists=True, file_okay=False),
        help="Continue this run directory in the new allocation.",
    )
    @click.option(
        "--time-left",
        type=float,
        help="Minutes before the end at which no new task starts (default: 5 % of "
        "--time, between 0.5 and 10).",
    )
    @click.option(
        "--sbatch",
        "extra",
        multiple=True,
        metavar="OPTION",
        help="More sbatch options, e.g. --sbatch=--qos=debug (repeatable).",
    )
    @click.option("--dry-run", is_flag=True, help="Print the batch script; submit nothing.")
    def submit(
        target: str | None,
        nodes: int,
        time_limit: str,
        partition: str | None,
        account: str | None,
        resume_dir: str | None,
        time_left: float | None,
        extra: tuple[str, ...],
        dry_run: bool,
    ) -> None:
        """Submit a batch job that runs TARGET (a script or an ensemble file) inside the
        allocation, or, with --resume RUN_DIR, continues that run."""
        path, left = _checked(target, nodes, time_limit, resume_dir, time_left)
        _check_lines(path, extra)
        text = script(
            str(path),
            nodes=nodes,
            time_limit=time_limit,
            partition=partition,
            account=account,
            resume=resume_dir is not None,
            time_left=left,
            extra=extra,
            workdir=Path.cwd(),
        )
        if dry_run:
            click.echo(text, nl=False)
            return
        _submit(text, path, nodes, partition)


def _checked(
    target: str | None,
    nodes: int,
    time_limit: str,
    resume_dir: str | None,
    time_left: float | None,
) -> tuple[Path, float]:
    """The file to run (or the run to resume) and the minutes to leave, checked."""
    if bool(target) == bool(resume_dir):
        raise click.UsageError("give a FILE to run, or --resume RUN_DIR (not both)")
    if nodes < 1:
        raise click.UsageError("--nodes must be at least 1")
    from shoal.batch import stop_margin

    limit = minutes(time_limit)
    left = stop_margin(round(limit * 60)) if time_left is None else time_left
    if left >= limit:
        raise click.UsageError(
            f"--time-left {left:g} min leaves no time in a {limit:g} min allocation"
        )
    chosen = resume_dir or target
    assert chosen is not None
    path = Path(chosen).resolve()
    if not path.exists():
        raise click.UsageError(f"{chosen} does not exist")
    if resume_dir is not None and not (path / "shoal.db").exists():
        raise click.UsageError(
            f"--resume {resume_dir}: there is no run there (no shoal.db); give the run "
            "directory that shoal run made (shoal status lists runs)"
        )
    return path, left


def _check_lines(path: Path, extra: tuple[str, ...]) -> None:
    """Refuse a line break in what goes on an #SBATCH line (it would start another)."""
    for what, p in (
        ("path", str(path)),
        ("current directory", os.getcwd()),
        *(("--sbatch option", x) for x in extra),
    ):
        if any(c in p for c in "\n\r\0"):  # would end an #SBATCH line and start another
            raise click.UsageError(
                f"the {what} {p!r} holds a line break, which would split the batch "
                "script's #SBATCH lines; rename it (or run from another folder)"
            )


def _submit(text: str, path: Path, nodes: int, partition: str | None) -> None:
    """Write the batch script under ./shoal-slurm, check the cluster can run it, sbatch it."""
    folder = Path.cwd() / "shoal-slurm"
    folder.mkdir(exist_ok=True)
    batch = folder / f"{path.stem}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.sh"
    batch.write_text(text)
    try:
        check_cluster(nodes, partition, batch)
    except click.UsageError:
        batch.unlink(missing_ok=True)
        raise
    try:
        out = subprocess.run(
            ["sbatch", "--parsable", str(batch)], capture_output=True, text=True, timeout=60
        )
    except FileNotFoundError:
        raise click.UsageError("sbatch was not found: is Slurm installed here?") from None
    if out.returncode != 0:  # refused: exit 2, as every refusal of shoal
        raise click.UsageError(f"sbatch refused {batch}: {out.stderr.strip()}")
    job = out.stdout.strip().split(";")[0]
    click.echo(
        f"submitted job {job} ({batch}); its output: shoal-slurm-{job}.out; the run "
        "directory appears when the job starts"
    )
