"""A resumed run imports what the run imported: its import path and working directory.

``shoal run script.py`` puts the script's folder on the import path, and a script run from
its folder finds its own modules (``mylib.py``) through the working directory. The tasks,
their arguments and their outputs are pickles that name those modules; the driver unpickles
some of them (arguments of commands, outputs it resolves) and the workers all of them. So a
run records both (``meta.path``, ``meta.cwd``), and a resume, from any directory, puts them
back before the driver loads anything and before it starts workers (which take the driver's
import path and working directory: backends/env.py ``python_path``).

Then :func:`check` loads every stored function and the arguments of every unfinished task,
and refuses the resume up front, with what to do, if one does not load: going on would fail
those tasks one by one (or, before, crash every resume at the same place).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from shoal.errors import DefinitionError

SHOWN = 5  # problems named in a refusal


def recorded() -> dict[str, Any]:
    """What a new run stores: its import path (absolute) and working directory."""
    cwd = os.getcwd()
    path = [os.path.join(cwd, p) if p and not os.path.isabs(p) else p or cwd for p in sys.path]
    return {"path": list(dict.fromkeys(path)), "cwd": cwd}


@contextmanager
def restored(meta: dict[str, Any]) -> Iterator[str]:
    """Put the run's import path entries that are missing here at the front of sys.path (in
    their order) and change to its working directory, for as long as the run is driven;
    both are undone after. Yields what changed, in words ("" if nothing). Entries and a
    directory that no longer exist are skipped (check() then says what does not load)."""
    stored = [p for p in meta.get("path") or [] if isinstance(p, str)]
    cwd = meta.get("cwd")
    cwd = cwd if isinstance(cwd, str) else ""
    here = os.getcwd()
    added = [p for p in stored if p not in sys.path and os.path.isdir(p)]
    sys.path[:0] = added
    moved = bool(cwd) and cwd != here and os.path.isdir(cwd)
    if moved:
        os.chdir(cwd)
    said = []
    if added:
        said.append(f"added {os.pathsep.join(added)} to the import path")
    if moved:
        said.append(f"working directory {cwd} (resumed from {here})")
    try:
        yield "; ".join(said)
    finally:
        if moved:
            with contextlib.suppress(OSError):  # deleted meanwhile: stay where the run was
                os.chdir(here)
        for p in added:
            with contextlib.suppress(ValueError):
                sys.path.remove(p)


def check(
    rundir: Any,
    meta: dict[str, Any],
    functions: list[tuple[str, bytes]],
    unfinished: list[tuple[str, int, bytes]],
    tracked: str | None,
) -> None:
    """Refuse (DefinitionError) if a stored function, the arguments of an unfinished task
    (``(name, id, payload)``) or the tracked fields do not load here."""
    import pickle

    import cloudpickle

    problems: list[str] = []
    count = 0

    def attempt(what: str, data: bytes, load: Any = pickle.loads) -> None:
        nonlocal count
        try:
            load(data)
        except KeyboardInterrupt:
            raise
        except BaseException as err:  # the user's code, SystemExit too
            count += 1
            if len(problems) < SHOWN:
                problems.append(f"{what}: {type(err).__name__}: {err}")

    for name, payload in functions:
        attempt(f"function {name}", payload, cloudpickle.loads)
    for name, tid, payload in unfinished:
        attempt(f"the arguments of {name!r} (#{tid})", payload)
    if tracked:
        import base64

        attempt("the tracked fields", base64.b64decode(tracked), cloudpickle.loads)
    if not problems:
        return
    more = f"\n  ... and {count - len(problems)} more" if count > len(problems) else ""
    path = os.pathsep.join(meta.get("path") or []) or "(not recorded)"
    raise DefinitionError(
        f"cannot resume {rundir}: {count} stored function(s) or argument(s) do not load "
        "here:\n  " + "\n  ".join(problems) + more + "\n"
        f"The run was started in {meta.get('cwd') or '(not recorded)'} with the import path "
        f"{path}, which shoal restored. Make the modules importable again (restore their "
        "files, activate the environment the run was started in, or add their folder to "
        "PYTHONPATH), then resume again. Nothing was run."
    )
