"""Batch systems (Slurm, PBS Pro and Torque, Grid Engine, or none: a shell): batch scripts,
and the commands that submit, ask about and cancel jobs, with parsers for what they print.

Pure: commands run through a :class:`~shoal.batch.base.Runner` (a local one here, one over
SSH for remote hosts), so every batch system is tested on recorded output.
"""

from __future__ import annotations

import enum
import subprocess
from collections.abc import Sequence
from typing import Any

from shoal.batch.base import (
    BatchSystem,
    Job,
    JobState,
    Output,
    Request,
    clock,
    seconds,
    stop_margin,
)
from shoal.errors import BatchError, DefinitionError


class Kind(enum.StrEnum):
    """The batch systems shoal drives."""

    SLURM = "slurm"
    PBS = "pbs"  # PBS Pro, OpenPBS
    TORQUE = "torque"
    SGE = "sge"  # Son of Grid Engine, Univa/Altair Grid Engine
    SHELL = "shell"  # none: jobs run in the background


def system(kind: str, **options: Any) -> BatchSystem:
    """The batch system named ``kind`` (slurm, pbs, torque, sge or shell)."""
    try:
        k = Kind(kind)
    except ValueError:
        known = ", ".join(k.value for k in Kind)
        raise DefinitionError(f"no batch system {kind!r}: use one of {known}") from None
    if k is Kind.SLURM:
        from shoal.batch.slurm import Slurm

        return Slurm()
    if k in (Kind.PBS, Kind.TORQUE):
        from shoal.batch.pbs import PBS

        return PBS(flavour="torque" if k is Kind.TORQUE else "pro")
    if k is Kind.SGE:
        from shoal.batch.sge import SGE

        return SGE()
    from shoal.batch.shell import Shell

    return Shell(**options)


def local(argv: Sequence[str], stdin: str | None = None, timeout: float = 120) -> Output:
    """Run a command here (the runner for a batch system on this machine)."""
    try:
        done = subprocess.run(
            list(argv), input=stdin, capture_output=True, text=True, timeout=timeout
        )
    except FileNotFoundError:
        raise BatchError(
            f"{argv[0]} was not found: is this batch system installed here (on PATH)?"
        ) from None
    except subprocess.TimeoutExpired:
        raise BatchError(f"{argv[0]} did not answer in {timeout:g} s") from None
    return Output(done.returncode, done.stdout, done.stderr)


__all__ = [
    "BatchSystem",
    "Job",
    "JobState",
    "Kind",
    "Output",
    "Request",
    "clock",
    "local",
    "seconds",
    "stop_margin",
    "system",
]
