"""Ensemble Launcher JSON (``{"ensembles": {NAME: {...}}}``), run unchanged.

The mapping (docs/config.md has the table):

* each ensemble is a group; ``cmd_template`` is its command;
* every key whose value is a list (or a ``"linspace(a, b, n)"`` string, or any other sweep
  expression) is a swept parameter, ``ppn`` and ``nnodes`` included; ``relation``
  ``one-to-one`` zips them (their lengths must match), ``many-to-many`` takes their product;
* a task has ``nnodes × ppn`` ranks of one core each, and ``ngpus_per_process`` GPUs per rank;
  with more than one rank it is launched through the MPI launcher, as Ensemble Launcher does;
* ``env`` is the environment, ``run_dir`` the working directory;
* ``cpu_affinity``/``gpu_affinity`` name core and GPU ids: shoal picks the ids itself (the
  numbers of cores and GPUs are kept), and says so in a note.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shoal.config.ensemble import Ensemble, Group, check_template
from shoal.config.source import Loc, Source, assign, suggest
from shoal.config.sweep import combine, is_expression, values
from shoal.errors import DefinitionError
from shoal.spec.task import placeholders

KNOWN = (
    "cmd_template",
    "relation",
    "nnodes",
    "ppn",
    "ngpus_per_process",
    "cpu_affinity",
    "gpu_affinity",
    "env",
    "run_dir",
    "stdout_file",
    "stderr_file",
)
RELATIONS = {"one-to-one": "zip", "many-to-many": "product"}
SHAPE = ("nnodes", "ppn", "ngpus_per_process")


@dataclass(frozen=True)
class Shape:
    """A task's ranks and GPUs from its ``nnodes``, ``ppn`` and ``ngpus_per_process``
    (fixed values, or swept parameters named here)."""

    fixed: tuple[tuple[str, Any], ...]

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        got = dict(self.fixed)
        get: dict[str, int] = {k: row.get(k, got.get(k, 0)) for k in SHAPE}
        return {"ranks": get["nnodes"] * get["ppn"], "gpus": get["ngpus_per_process"]}


def _used(src: Source, loc: Loc, template: str) -> set[str]:
    try:
        return placeholders(template)
    except DefinitionError as err:
        raise src.error(loc, str(err)) from None


def _whole(src: Source, at: Loc, key: str, value: Any, low: int) -> int:
    """A whole number >= ``low`` for ``key`` (``at`` is where it was written)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        why = (
            "; shoal gives each rank whole GPUs (for GPU sharing run several processes in one task)"
            if key == "ngpus_per_process"
            else ""
        )
        raise src.error(at, f"must be a whole number >= {low}, got {value!r}{why}")
    return value


def group(src: Source, name: str, info: Any, notes: list[str]) -> Group:
    """One ensemble as a group (``notes`` gets what shoal does differently)."""
    loc: Loc = ("ensembles", name)
    template, relation = _head(src, loc, info)
    used = _used(src, (*loc, "cmd_template"), template)
    columns, fixed = _parameters(src, loc, info, used)
    zipped = [list(columns)] if RELATIONS[relation] == "zip" and columns else []
    sweep = combine(columns, zipped, src.where((*loc, "relation") if "relation" in info else loc))
    env = _env(src, loc, info)
    _note_unused(src, loc, info, notes)
    scalars = {k: v for k, v in fixed.items() if k not in SHAPE and k in used}
    shape = {k: fixed[k] for k in SHAPE if k in fixed}
    keys: dict[str, Loc] = {
        "ranks": (*loc, "ppn"),
        "gpus": (*loc, "ngpus_per_process"),
        "cpus": (*loc, "ppn"),
        "nodes": (*loc, "nnodes"),
    }
    nodes = max(columns["nnodes"]) if "nnodes" in columns else fixed["nnodes"]
    options: dict[str, Any] = {"name": name, "cpus": 1, "tags": (name,)}
    derive: Shape | None = Shape(tuple(shape.items()))
    if not set(SHAPE) & set(columns):  # the same shape for every task
        options.update(Shape(tuple(shape.items()))({}))
        derive = None
    run_dir = info.get("run_dir")
    g = Group(
        name=name,
        loc=loc,
        src=src,
        template=template,
        fn=None,
        function=None,
        args={},
        sweep=sweep,
        count=1,
        options=options,
        keys=keys,
        workdir=str(run_dir) if run_dir is not None else None,
        env={str(k): str(v) for k, v in env.items()},
        nodes=nodes,
        derive=derive,
        shaped=SHAPE,
    )
    g.args = scalars  # scalar placeholders are filled like swept ones
    where = {"command": "cmd_template", "workdir": "run_dir", "sweep": ""}
    check_template(
        g,
        set(columns) | set(scalars),
        lambda key: src.where((*loc, *[k for k in [where.get(key, key)] if k])),
        "command",
    )
    return g


def _head(src: Source, loc: Loc, info: Any) -> tuple[str, str]:
    """The ensemble's command template and relation, checked."""
    if not isinstance(info, dict):
        raise src.error(loc, "an ensemble is a mapping of keys (cmd_template, nnodes, ...)")
    for key in ("cmd_template", "nnodes"):
        if key not in info:
            near = [k for k in info if suggest(k, [key])]
            typo = f"; {near[0]!r} looks like a misspelling of it" if near else ""
            raise src.error(loc, f"{key} is required{typo}")
    template = info["cmd_template"]
    if not isinstance(template, str) or not template.strip():
        raise src.error((*loc, "cmd_template"), "must be a command string")
    relation = info.get("relation", "one-to-one")  # README examples leave it out
    if not isinstance(relation, str) or relation not in RELATIONS:
        raise src.error(
            (*loc, "relation"),
            f"must be 'one-to-one' or 'many-to-many', got {relation!r}"
            + (suggest(relation, RELATIONS) if isinstance(relation, str) else ""),
        )
    return template, relation


def _parameters(
    src: Source, loc: Loc, info: dict[str, Any], used: set[str]
) -> tuple[dict[str, list[Any]], dict[str, Any]]:
    """The swept parameters (their values) and the fixed ones; the shape keys checked as whole
    numbers, with their defaults among the fixed ones."""
    columns: dict[str, list[Any]] = {}
    fixed: dict[str, Any] = {}
    for key, raw in info.items():
        if key in KNOWN and key not in SHAPE:
            continue
        swept = isinstance(raw, list) or is_expression(raw)
        if key not in KNOWN and key not in used:
            close = suggest(key, KNOWN)
            if close:
                raise src.error((*loc, key), f"unknown key {key!r}{close}")
        if swept:
            columns[key] = values(raw, src.where((*loc, key)), src.base)
        elif raw is None or isinstance(raw, dict):
            raise src.error(
                (*loc, key), "must be a value, a list or an expression like 'linspace(0, 1, 5)'"
            )
        else:
            fixed[key] = raw
    for key, low in (("nnodes", 1), ("ppn", 1), ("ngpus_per_process", 0)):
        if key in columns:
            columns[key] = [
                _whole(src, (*loc, key, i), key, v, low) for i, v in enumerate(columns[key])
            ]
        else:
            fixed[key] = _whole(src, (*loc, key), key, fixed.get(key, 1 if low else 0), low)
    return columns, fixed


def _env(src: Source, loc: Loc, info: dict[str, Any]) -> dict[Any, Any]:
    env = info.get("env") or {}
    if not isinstance(env, dict) or any(
        not isinstance(v, str | int | float) or isinstance(v, bool) for v in env.values()
    ):
        raise src.error((*loc, "env"), "must map variable names to text or numbers")
    return env


def _note_unused(src: Source, loc: Loc, info: dict[str, Any], notes: list[str]) -> None:
    """Notes on the keys shoal reads but does not follow: affinities and output files."""
    for key in ("cpu_affinity", "gpu_affinity"):
        if key in info:
            if not isinstance(info[key], str):
                raise src.error((*loc, key), 'must be a list of ids as text, e.g. "0,1,2,3"')
            notes.append(
                f"{src.where((*loc, key))}: shoal chooses core and GPU ids itself; it keeps the "
                "numbers asked for (ppn, ngpus_per_process) and pins to the ids it picks"
            )
    for key in ("stdout_file", "stderr_file"):
        if key in info:
            notes.append(
                f"{src.where((*loc, key))}: shoal keeps each task's stdout and stderr in the run "
                "directory (tasks/<id>/); this key is not used"
            )


def ensemble(src: Source) -> Ensemble:
    data = src.data
    ens_info = data.get("ensembles")
    if not isinstance(ens_info, dict) or not ens_info:
        raise src.error(("ensembles",), "must map ensemble names to their settings")
    other = sorted(set(data) - {"ensembles", "resources"})
    notes: list[str] = []
    if other:
        notes.append(
            f"{src.path}: top-level keys {', '.join(other)} are launcher settings; shoal's "
            "engine does not need them"
        )
    groups = {name: group(src, name, info, notes) for name, info in ens_info.items()}
    res = data.get("resources") or {}
    from shoal.config import model

    resources = model.check(model.ResourcesModel, res, src, ("resources",))
    return Ensemble(
        name=src.path.stem,
        src=src,
        format="ensemble-launcher",
        groups=groups,
        resources=resources.model_dump(exclude={"nodes"}, exclude_none=True),
        notes=notes,
        nodes=resources.nodes,
    )


def override(src: Source, parts: list[str | int], value: Any, text: str) -> None:
    """``--set NAME.ppn=4`` (an ensemble's key) or ``--set resources.cpus=8``."""
    names = list(src.data.get("ensembles") or {})
    if parts[0] in names:
        assign(src, ["ensembles", *parts], value, text)
    elif parts[0] == "resources":
        assign(src, parts, value, text)
    else:
        raise DefinitionError(
            f"--set {text}: {parts[0]!r} is not an ensemble of this file"
            f"{suggest(parts[0], [*names, 'resources'])} Ensembles: {', '.join(names)}"
        )
