"""Ensembles from config files: ``shoal run sweep.yaml`` and ``shoal plan sweep.yaml``.

Three formats are read, all into one :class:`~shoal.config.ensemble.Ensemble`:

* shoal's own (YAML, JSON or TOML; :mod:`shoal.config.model`), with ``groups:``;
* Ensemble Launcher JSON, with ``ensembles:`` (:mod:`shoal.config.launcher`);
* ensemble-python YAML, with ``jobs:`` and ``rules:`` (:mod:`shoal.config.epython`).

:func:`load` reads the file, applies ``--set`` overrides, validates everything (errors name the
file, the line and the key) and returns the ensemble; :func:`shoal.config.build.workflow` builds
what runs.

Rules of this package: a config file becomes the same ``Workflow`` a script would build
(``build.py``); config imports spec (and the local backend, to detect GPUs), never runtime:
running is the CLI's call. Every error names the file, the line and the key.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from shoal.config.ensemble import Ensemble
from shoal.config.source import Source, parse_set, read
from shoal.errors import DefinitionError

__all__ = ["Ensemble", "detect", "load"]


def detect(src: Source) -> str:
    """Which format a file is in, from its top-level keys."""
    keys = set(src.data)
    if "groups" in keys:
        return "shoal"
    if "ensembles" in keys:
        return "ensemble-launcher"
    if "jobs" in keys:
        return "ensemble-python"
    if {"ncpus", "ngpus"} & keys or (keys <= {"name", "cpus", "gpus"} and {"cpus", "gpus"} & keys):
        raise DefinitionError(
            f"{src.path}: this is an Ensemble Launcher system description (ncpus, ngpus, cpus, "
            "gpus), not an ensemble. Give the ensembles file to shoal run, and the machine's "
            "size as resources: in a shoal file or with --set resources.cpus=N"
        )
    if {"task_executor_name", "child_executor_name", "comm_name", "nlevels"} & keys:
        raise DefinitionError(
            f"{src.path}: this is an Ensemble Launcher launcher configuration (executors, "
            "communication), not an ensemble. shoal has its own engine: give it the ensembles "
            "file; the launcher settings have no counterpart and are not needed"
        )
    raise DefinitionError(
        f"{src.path}: not an ensemble file shoal knows: a shoal file has 'groups:', an Ensemble "
        "Launcher file 'ensembles:', an ensemble-python file 'jobs:'. Top-level keys here: "
        + (", ".join(sorted(map(str, keys))) or "none")
    )


def load(
    path: str | Path,
    sets: Sequence[str] = (),
    max_tasks: int | None = None,
    imports: bool = True,
) -> Ensemble:
    """Read, override and check a config file; ``max_tasks`` overrides the limit on the number
    of tasks (default :data:`~shoal.config.sweep.MAX_TASKS`, or the file's ``max_tasks``).
    ``imports=False`` (``shoal plan``) finds each ``module:function`` without importing it, so
    no code of the user's runs; the ensemble then cannot be built, only planned."""
    if max_tasks is not None and max_tasks < 1:
        raise DefinitionError(f"--max-tasks {max_tasks}: give a positive number of tasks")
    src = read(path)
    src.max_tasks = max_tasks
    src.imports = imports
    kind = detect(src)
    if kind == "shoal":
        from shoal.config import native as fmt
    elif kind == "ensemble-launcher":
        from shoal.config import launcher as fmt  # type: ignore[no-redef]
    else:
        from shoal.config import epython as fmt  # type: ignore[no-redef]
    for text in sets:
        parts, value = parse_set(text)
        fmt.override(src, parts, value, text)
    ens = fmt.ensemble(src)
    if max_tasks is not None:
        ens.max_tasks = max_tasks
    ens.check()
    return ens
