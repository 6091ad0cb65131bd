"""Helpers for the hostile-input probes: the real command line, and markers of code that ran."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import shoal

SRC = str(Path(shoal.__file__).resolve().parents[1])  # the shoal under test, not another one


def cli(cwd: Path, *args: str, limit_mb: int | None = None) -> subprocess.CompletedProcess[str]:
    """``shoal ARGS`` in a fresh interpreter; ``limit_mb`` caps its address space."""
    env = dict(os.environ, NO_COLOR="1", COLUMNS="200", TERM="dumb")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (SRC, env.get("PYTHONPATH")) if p)
    pre = None
    if limit_mb is not None:
        import resource

        size = limit_mb * 2**20

        def pre() -> None:
            resource.setrlimit(resource.RLIMIT_AS, (size, size))

    return subprocess.run(
        [sys.executable, "-m", "shoal.cli.main", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=pre,
    )


def run_dirs(where: Path) -> list[Path]:
    return sorted(p for p in where.rglob("shoal.db"))


def pwned(where: Path) -> list[Path]:
    """Marker files that hostile values would create if they ran."""
    return sorted(p for p in where.rglob("*") if p.name.startswith("PWNED"))


@shoal.task
def hold(started: str, flag: str) -> str:
    """A task that marks that it started, then waits for ``flag`` to exist."""
    import os
    import time

    open(started, "w").close()
    while not os.path.exists(flag):
        time.sleep(0.02)
    return "done"
