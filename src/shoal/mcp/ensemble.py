"""An ensemble as one tool call: ``shoal.mcp.ensemble_tool(fn)`` in the server's script turns
``fn`` into an MCP tool whose arguments are lists (or sweep expressions such as
``"linspace(3.4, 3.8, 5)"``) of ``fn``'s parameters. One call runs every combination (or the
zipped lists) as a shoal run under the server's base folder (durable: a resume carries it on;
steerable: the run's tools work on it), and returns every result, or at once the run's folder.

``register(fn)`` only lets config files submitted through the server name ``fn``
(``function: "module:fn"``); no other Python runs from a tool call.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

FILE_EXPRESSIONS = ("csv(", "lines(", "glob(")  # read files: not from an agent


@dataclass
class EnsembleTool:
    fn: Callable[..., Any]
    name: str
    description: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def parameters(self) -> list[inspect.Parameter]:
        return list(inspect.signature(self.fn).parameters.values())


_TOOLS: dict[str, EnsembleTool] = {}
_REGISTERED: dict[str, Callable[..., Any]] = {}


def key(fn: Callable[..., Any]) -> str:
    """How a config file names ``fn``: ``module:qualname``."""
    return f"{fn.__module__}:{fn.__qualname__}"


def register(fn: F) -> F:
    """Let config files submitted through the server name ``fn``."""
    _REGISTERED[key(fn)] = fn
    return fn


def ensemble_tool(
    fn: F | None = None,
    *,
    name: str | None = None,
    description: str | None = None,
    **options: Any,
) -> Any:
    """Make ``fn`` an MCP tool that runs an ensemble of it (``options``: task options such
    as ``cpus=2``, ``timeout=600``). Use it bare or with arguments; ``fn`` is returned."""

    def wrap(f: F) -> F:
        from shoal.spec.options import Options

        Options().merged(f"ensemble_tool {f.__name__}", **options)  # checked now, not later
        doc = description or inspect.getdoc(f) or f"an ensemble of {f.__name__}"
        tool = EnsembleTool(f, name or f.__name__, doc, options)
        _TOOLS[tool.name] = tool
        register(f)
        return f

    return wrap(fn) if fn is not None else wrap


def tools() -> dict[str, EnsembleTool]:
    return dict(_TOOLS)


def registered() -> set[str]:
    return set(_REGISTERED)


def rows(tool: EnsembleTool, given: dict[str, Any], zipped: bool) -> list[dict[str, Any]]:
    """The calls of one ensemble: every combination of the given lists (or, ``zipped``, the
    lists side by side). Raises :class:`~shoal.mcp.guard.Refused` for bad arguments."""
    from shoal.config.sweep import values
    from shoal.errors import DefinitionError
    from shoal.mcp.guard import Refused

    lists: dict[str, list[Any]] = {}
    for p in tool.parameters:
        if p.name not in given or given[p.name] is None:
            if p.default is inspect.Parameter.empty:
                raise Refused(
                    "bad_argument", f"{tool.name} needs {p.name}", p.name,
                    f"give {p.name} as a list of values or a sweep expression",
                )  # fmt: skip
            continue
        raw = given[p.name]
        if isinstance(raw, str) and raw.strip().startswith(FILE_EXPRESSIONS):
            raise Refused(
                "not_allowed", f"{raw!r} reads files", p.name,
                "give the values as a list, or range/linspace/logspace/... expressions",
            )  # fmt: skip
        try:
            lists[p.name] = values(raw if isinstance(raw, str | list) else [raw], p.name)
        except DefinitionError as err:
            raise Refused("bad_argument", str(err), p.name, "give a list or a sweep expression "
                          "such as linspace(0, 1, 5)") from None  # fmt: skip
    names = list(lists)
    if zipped:
        sizes = {len(v) for v in lists.values()}
        if len(sizes) > 1:
            raise Refused(
                "bad_argument", f"zipped lists differ in length: {sorted(sizes)}", "zip",
                "give lists of one length, or zip=false for every combination",
            )  # fmt: skip
        combos = list(zip(*lists.values(), strict=True))
    else:
        combos = list(itertools.product(*lists.values()))
    return [dict(zip(names, c, strict=True)) for c in combos]
