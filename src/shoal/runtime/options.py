"""The options of a run, defined once: ``RunOptions``.

Its fields are the keyword arguments of ``shoal.run``, ``shoal.submit`` and ``shoal.resume``
(unknown ones are refused with a did-you-mean), the options stored in the run's ``meta`` for a
resume (``stored=True``), and the text of the docs (each field's ``doc``, shown by
``help(shoal.run)`` and written into docs/python-api.md's table).

What the command line sets for the runs a script starts (``shoal run --time-left``, progress
bars) is passed through :func:`defaults`, a context the CLI opens around the script, never a
module global.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import inspect
import json
import os
from collections.abc import Iterator
from dataclasses import MISSING, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal

from shoal.errors import DefinitionError, hint

if TYPE_CHECKING:
    from shoal.backends.base import Backend
    from shoal.runtime.run import Run


StopMode = Literal["cancel", "finish"]  # on a stop: cancel the running tasks, or let them finish


def _m(doc: str, stored: bool = True) -> dict[str, Any]:
    """A field's metadata: its doc, and whether a resume takes it up again."""
    return {"doc": doc, "stored": stored}


@dataclass(frozen=True)
class RunOptions:
    """Every option of a run (see each field's ``doc``)."""

    cpus: int | None = field(
        default=None, metadata=_m("pretend a node with this many cores (default: this machine)")
    )
    gpus: int | None = field(default=None, metadata=_m("pretend a node with this many GPUs"))
    memory: int | str | None = field(
        default=None, metadata=_m("pretend a node with this much memory ('64GB')")
    )
    backend: Backend | str | None = field(
        default=None,
        metadata=_m(
            "'local', 'slurm', 'dask', 'flux' or a backend object (default: by environment)",
            stored=False,
        ),
    )
    base: str | os.PathLike[str] | None = field(
        default=None,
        metadata=_m("where run directories go (default: the current directory)", stored=False),
    )
    policy: Literal["backfill", "waves", "adaptive", "non-adaptive"] = field(
        default="backfill", metadata=_m("'backfill' or 'waves' ('adaptive'/'non-adaptive' too)")
    )
    reserve_after: float = field(
        default=60.0, metadata=_m("seconds before a waiting large task gets a reservation")
    )
    pin: bool | str | None = field(
        default=None, metadata=_m("pin tasks to their cores: True, 'fold' or False")
    )
    launcher: str = field(
        default="mpiexec -n {ranks}", metadata=_m("the MPI launcher template, with {ranks}")
    )
    mpi: str | None = field(
        default=None,
        metadata=_m(
            "under Slurm, srun's --mpi plug-in for tasks of several ranks: 'pmix' for Open "
            "MPI, 'pmi2' for MPICH (default: the cluster's MpiDefault)"
        ),
    )
    progress: bool | None = field(
        default=None,
        metadata=_m("show a progress bar (default: only under shoal run)", stored=False),
    )
    prefetch: int | None = field(
        default=None,
        metadata=_m(
            "at most this many tasks queued behind each running short task (default: the "
            "backend's, 64 for local; 0 turns it off)"
        ),
    )
    prefetch_window: float | None = field(
        default=None, metadata=_m("seconds of expected work queued behind each running task")
    )
    order: Literal["fifo", "largest"] = field(
        default="fifo", metadata=_m("'fifo', or 'largest' first among equal priority")
    )
    stop_at: Any = field(
        default=None,
        metadata=_m(
            "a deadline: epoch seconds or a datetime (default: shoal run --time-left)", stored=False
        ),
    )
    stop_mode: StopMode = field(
        default="cancel", metadata=_m("on a stop, 'cancel' the running tasks or let them 'finish'")
    )
    retries: int = field(
        default=0, metadata=_m("a retry policy for tasks without their own: how many retries")
    )
    backoff: Any = field(
        default=0.0, metadata=_m("seconds before a retry, or {'delay', 'factor', 'cap', 'jitter'}")
    )
    retry_on: Any = field(
        default=(), metadata=_m("failure kinds (or exit codes) to retry; default: every kind")
    )
    escalate: Any = field(
        default=None, metadata=_m("{'timeout': 2.0, 'memory': 1.5}: multiply them on each retry")
    )
    preload: tuple[str, ...] | list[str] = field(
        default=(),
        metadata=_m(
            "modules to import before the first task (once in the local fork server, before "
            "it forks the workers; in each Dask or Slurm worker at start), e.g. "
            "['atomate2.vasp.jobs.core']"
        ),
    )
    state_dir: str | os.PathLike[str] | None = field(
        default=None,
        metadata=_m("keep the live store on node-local disk, copied to the run directory"),
    )

    def __post_init__(self) -> None:
        bad = [m for m in self.preload if not isinstance(m, str) or not m]
        if isinstance(self.preload, str) or bad:
            raise DefinitionError(
                f"preload must be a list of module names (['numpy', 'ase.calculators.emt']), "
                f"got {self.preload!r}"
            )
        if self.stop_mode not in ("cancel", "finish"):
            raise DefinitionError(
                f"stop_mode must be 'cancel' (stop running tasks when the run is stopped, the "
                f"default) or 'finish' (let them finish), got {self.stop_mode!r}"
            )

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def of(cls, options: dict[str, Any]) -> RunOptions:
        """The options given as keywords, refusing an unknown name with a did-you-mean."""
        known = cls.names()
        for name in options:
            if name not in known:  # the same did-you-mean as task options (errors.hint)
                raise DefinitionError(
                    f"unknown run option {name!r}{hint(name, known)}. Run options are: "
                    f"{', '.join(known)}"
                )
        return cls(**options)

    def stored(self) -> dict[str, Any]:
        """The options a resume takes up again (those that are plain data)."""
        out = {}
        for f in fields(self):
            if not f.metadata["stored"]:
                continue
            value = getattr(self, f.name)
            if f.name == "state_dir" and value is not None:
                value = os.fspath(value)
            if _jsonable(value):
                out[f.name] = value
        return out

    def deadline(self) -> float | None:
        """``stop_at`` as epoch seconds; the command line's ``--time-left`` applies when the
        run gives none."""
        stop_at = self.stop_at
        if stop_at is None:
            return _current().stop_at
        if isinstance(stop_at, datetime.datetime):
            return stop_at.timestamp()
        if isinstance(stop_at, bool) or not isinstance(stop_at, int | float):
            raise DefinitionError(
                f"stop_at must be a time (epoch seconds or a datetime), got {stop_at!r}"
            )
        return float(stop_at)

    def shows_progress(self) -> bool:
        return _current().cli if self.progress is None else self.progress


def doc() -> str:
    """One line per option, for docstrings and docs."""
    out = []
    for f in fields(RunOptions):
        default = "" if f.default is MISSING or f.default is None else f" (default {f.default!r})"
        out.append(f"``{f.name}``: {f.metadata['doc']}{default}")
    return "\n".join(out)


def signature(first: str) -> inspect.Signature:
    """The signature of ``run``/``submit``/``resume``: ``first``, then every option as a
    keyword (what ``help()`` and editors show)."""
    params = [inspect.Parameter(first, inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    params += [
        inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default)
        for f in fields(RunOptions)
    ]
    return inspect.Signature(params)


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


# -- what the command line sets for the runs of a script ---------------------------------------
@dataclass
class Defaults:
    """Set by the CLI around the script it runs: progress bars and summaries on, a deadline
    for every run, and the runs the script started (for the exit code)."""

    cli: bool = False
    stop_at: float | None = None
    runs: list[Run] = field(default_factory=list)


_DEFAULTS: contextvars.ContextVar[Defaults | None] = contextvars.ContextVar(
    "shoal_defaults", default=None
)
_PLAIN = Defaults()  # outside the CLI (never collects runs: started() looks at ``cli``)


def _current() -> Defaults:
    return _DEFAULTS.get() or _PLAIN


@contextlib.contextmanager
def defaults(*, cli: bool = True, stop_at: float | None = None) -> Iterator[Defaults]:
    """Within the ``with`` block, runs show progress (``cli``) and stop at ``stop_at`` unless
    they say otherwise; the runs started are collected in the yielded ``Defaults.runs``."""
    token = _DEFAULTS.set(Defaults(cli=cli, stop_at=stop_at))
    try:
        yield _current()
    finally:
        _DEFAULTS.reset(token)


def started(run: Run) -> None:
    """Note a run started (the CLI's exit code looks at them); outside the CLI a no-op."""
    current = _current()
    if current.cli:
        current.runs.append(run)
