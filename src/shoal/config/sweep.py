"""Sweeps: the values a parameter takes, and how parameters combine into tasks.

A parameter's values are a list, or one of a few expressions written as text (as config files
do): ``linspace(0, 10, 5)``, ``logspace(-3, 0, 4)``, ``range(1, 9, 2)``, ``arange(0, 1, 0.25)``,
``csv("runs.csv", "T")``, ``glob("inputs/*.xyz")``, ``lines("list.txt")``, and random samples
with a seed: ``uniform(0, 1, 8, seed=1)``, ``normal(300, 20, 8, seed=1)``,
``randint(1, 6, 8, seed=1)``, ``choice(["Cu", "Ag"], 8, seed=1)``. Expressions are parsed with
:mod:`ast` and only these calls with literal arguments are accepted; nothing is evaluated.

Parameters combine by ``product`` (every combination) unless they are zipped (taken one-to-one;
their lengths must match). A :class:`Sweep` is a product of zipped blocks; its rows are made on
demand (``row(i)`` and iteration), so a million-task sweep never holds a million dicts.
"""

from __future__ import annotations

import ast
import csv
import glob as globmod
import itertools
import math
import random
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shoal.errors import DefinitionError, hint

Value = Any
_CALL = re.compile(r"^\s*[A-Za-z_]\w*\s*\(.*\)\s*$", re.DOTALL)


def is_expression(value: object) -> bool:
    """True for text that looks like a call, e.g. ``"linspace(0, 1, 5)"``."""
    return isinstance(value, str) and bool(_CALL.match(value))


def _number(x: float) -> float | int:
    """Floats that are whole stay floats; rounding noise of the grid is removed."""
    return float(f"{x:.15g}")


MAX_VALUES = 10_000_000  # per parameter: more is a typo (products multiply them anyway)
MAX_TASKS = 10_000_000  # per run, all groups together, unless the file or --max-tasks says more


def _span(args: Sequence[Value]) -> int:
    """``len(range(*args))`` by arithmetic (``len`` overflows for huge bounds)."""
    start, stop, step = (0, args[0], 1) if len(args) == 1 else (*args, 1)[:3]
    if step > 0:
        return max(0, int(-(-(stop - start) // step)))
    return max(0, int(-(-(start - stop) // -step)))


def length(raw: Value) -> int | None:
    """How many values ``raw`` has, found without making them (None: unknown until the
    values are made, e.g. a file's lines, or an expression with bad arguments)."""
    if isinstance(raw, list | tuple):
        return len(raw)
    if not is_expression(raw):
        return 1
    try:
        call = ast.parse(str(raw).strip(), mode="eval").body
        assert isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
        args = [ast.literal_eval(a) for a in call.args]
        kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
        name = call.func.id
        if name == "range":
            n = _span(args)
        elif name == "arange":
            lo, hi, step = (*args, kwargs.get("step", 1))[:3]
            n = math.ceil((hi - lo) / step - 1e-9)
        elif name in ("linspace", "logspace", "uniform", "normal", "randint"):
            n = args[2] if len(args) > 2 else kwargs["n"]
        elif name == "choice":
            n = args[1] if len(args) > 1 else kwargs["n"]
        else:
            return None
    except Exception:  # the real call says what is wrong
        return None
    return n if isinstance(n, int) and not isinstance(n, bool) and n >= 0 else None


def _count(where: str, n: Value) -> int:
    if isinstance(n, int) and not isinstance(n, bool) and n > MAX_VALUES:
        shown = f"{n:,}" if n < 10**15 else f"{float(n):.3g}"
        raise DefinitionError(
            f"{where}: {shown} values is more than one parameter may have ({MAX_VALUES:,})"
        )
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise DefinitionError(
            f"{where}: the number of values must be a positive integer, got {n!r}"
        )
    return n


def _real(where: str, x: Value, what: str) -> float:
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
        raise DefinitionError(f"{where}: {what} must be a number, got {x!r}")
    return float(x)


def _linspace(where: str, a: Value, b: Value, n: Value) -> list[Value]:
    lo, hi, k = _real(where, a, "the start"), _real(where, b, "the end"), _count(where, n)
    if k == 1:
        return [_number(lo)]
    step = (hi - lo) / (k - 1)
    return [_number(lo + i * step) for i in range(k - 1)] + [_number(hi)]


def _logspace(where: str, a: Value, b: Value, n: Value, base: Value = 10) -> list[Value]:
    root = _real(where, base, "base")
    if root <= 0:
        raise DefinitionError(f"{where}: the base must be a positive number, got {base!r}")
    try:
        out = [_number(root**e) for e in _linspace(where, a, b, n)]
    except OverflowError:
        raise DefinitionError(f"{where}: {base}**{b} is too large for a number") from None
    if not all(math.isfinite(x) for x in out):
        raise DefinitionError(f"{where}: {base}**{b} is too large for a number")
    return out


def _range(where: str, *args: Value) -> list[Value]:
    if not 1 <= len(args) <= 3 or any(isinstance(x, bool) or not isinstance(x, int) for x in args):
        raise DefinitionError(
            f"{where}: range takes 1 to 3 integers (stop, or start, stop[, step]); for "
            "fractional steps use arange(start, stop, step)"
        )
    if len(args) == 3 and args[2] == 0:
        raise DefinitionError(f"{where}: range step must not be 0")
    _count(where, max(_span(args), 1))
    values = list(range(*args))
    if not values:
        raise DefinitionError(f"{where}: range{tuple(args)} is empty")
    return values


def _arange(where: str, a: Value, b: Value, step: Value = 1) -> list[Value]:
    lo, hi, d = (
        _real(where, a, "the start"),
        _real(where, b, "the stop"),
        _real(where, step, "step"),
    )
    if d == 0:
        raise DefinitionError(f"{where}: arange step must not be 0")
    try:
        n = math.ceil((hi - lo) / d - 1e-9)  # the stop is excluded, as in numpy
    except (OverflowError, ValueError):
        raise DefinitionError(f"{where}: arange({a}, {b}, {step}) has too many values") from None
    _count(where, max(n, 1))
    if n < 1:
        raise DefinitionError(f"{where}: arange({a}, {b}, {step}) is empty")
    ints = all(isinstance(x, int) for x in (a, b, step))
    return [int(lo) + i * int(d) if ints else _number(lo + i * d) for i in range(n)]


def _draws(where: str, n: Value, seed: Value) -> tuple[int, random.Random]:
    """How many samples, and the generator for them (its own, seeded: reproducible)."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DefinitionError(f"{where}: seed must be an integer, got {seed!r}")
    return _count(where, n), random.Random(seed)


def _uniform(where: str, a: Value, b: Value, n: Value, seed: Value = 0) -> list[Value]:
    lo, hi = _real(where, a, "low"), _real(where, b, "high")
    k, r = _draws(where, n, seed)
    return [r.uniform(lo, hi) for _ in range(k)]


def _normal(where: str, mu: Value, sigma: Value, n: Value, seed: Value = 0) -> list[Value]:
    m, s = _real(where, mu, "mean"), _real(where, sigma, "std")
    k, r = _draws(where, n, seed)
    if s < 0:
        raise DefinitionError(f"{where}: the standard deviation must be >= 0, got {sigma}")
    return [r.gauss(m, s) for _ in range(k)]


def _randint(where: str, a: Value, b: Value, n: Value, seed: Value = 0) -> list[Value]:
    if any(isinstance(x, bool) or not isinstance(x, int) for x in (a, b)) or a > b:
        raise DefinitionError(f"{where}: randint(low, high, n) needs integers low <= high")
    k, r = _draws(where, n, seed)
    return [r.randint(a, b) for _ in range(k)]  # both ends included


def _choice(where: str, items: Value, n: Value, seed: Value = 0) -> list[Value]:
    if not isinstance(items, list) or not items:
        raise DefinitionError(f"{where}: choice(values, n) needs a non-empty list of values")
    k, r = _draws(where, n, seed)
    return [r.choice(items) for _ in range(k)]


def _scalar(text: str) -> Value:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def _file(where: str, base: Path, name: Value) -> Path:
    if not isinstance(name, str) or not name:
        raise DefinitionError(f"{where}: give the file name as a string")
    path = Path(name) if Path(name).is_absolute() else base / name
    if not path.is_file():
        raise DefinitionError(f"{where}: no such file {str(path)!r} (paths are relative to {base})")
    return path


def _csv(where: str, base: Path, name: Value, column: Value = 0) -> list[Value]:
    path = _file(where, base, name)
    with path.open(newline="", errors="strict") as fh:
        try:
            rows = [r for r in csv.reader(fh) if r and any(c.strip() for c in r)]
        except (UnicodeDecodeError, csv.Error) as err:
            raise DefinitionError(f"{where}: cannot read {path} as CSV text: {err}") from None
    if not rows:
        raise DefinitionError(f"{where}: {path} is empty")
    header = [c.strip() for c in rows[0]]
    if isinstance(column, str):
        if column not in header:
            raise DefinitionError(
                f"{where}: {path} has no column {column!r}{hint(column, header)} Columns: "
                f"{', '.join(header)}"
            )
        index, body = header.index(column), rows[1:]
    elif isinstance(column, int) and not isinstance(column, bool):
        index, body = column, rows  # by position: every row is data
        if not 0 <= index < len(header):
            raise DefinitionError(
                f"{where}: column {column} does not exist: {path} has {len(header)} columns, "
                f"numbered from 0 to {len(header) - 1}"
            )
    else:
        raise DefinitionError(f"{where}: the column is a header name or a 0-based index")
    values = []
    for line, r in enumerate(body, start=2 if isinstance(column, str) else 1):
        if index >= len(r) or not r[index].strip():
            raise DefinitionError(
                f"{where}: {path} line {line} has no value in column {column!r}; fill it in, or "
                "remove the row"
            )
        values.append(_scalar(r[index].strip()))
    if not values:
        raise DefinitionError(f"{where}: {path} has a header but no rows")
    return values


def _lines(where: str, base: Path, name: Value) -> list[Value]:
    path = _file(where, base, name)
    try:
        text = path.read_text()
    except UnicodeDecodeError as err:
        raise DefinitionError(f"{where}: {path} is not text: {err}") from None
    values = [_scalar(s.strip()) for s in text.splitlines() if s.strip()]
    if not values:
        raise DefinitionError(f"{where}: {path} has no lines")
    return values


def _glob(where: str, base: Path, pattern: Value) -> list[Value]:
    if not isinstance(pattern, str) or not pattern:
        raise DefinitionError(f"{where}: glob needs a pattern string, e.g. glob('inputs/*.xyz')")
    root = "" if Path(pattern).is_absolute() else str(base) + "/"
    found = sorted(globmod.glob(root + pattern, recursive=True))
    if not found:
        raise DefinitionError(f"{where}: glob({pattern!r}) matches no files under {base}")
    return [p[len(root) :] if root and p.startswith(root) else p for p in found]


PURE: dict[str, Callable[..., list[Value]]] = {
    "linspace": _linspace,
    "logspace": _logspace,
    "range": _range,
    "arange": _arange,
    "uniform": _uniform,
    "normal": _normal,
    "randint": _randint,
    "choice": _choice,
}
FILES: dict[str, Callable[..., list[Value]]] = {"csv": _csv, "lines": _lines, "glob": _glob}
FUNCTIONS = (*PURE, *FILES)


def _literal(node: ast.AST, where: str, text: str) -> Value:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float | str):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        inner = _literal(node.operand, where, text)
        if isinstance(inner, int | float) and not isinstance(inner, bool):
            return -inner if isinstance(node.op, ast.USub) else inner
    if isinstance(node, ast.List | ast.Tuple):
        return [_literal(e, where, text) for e in node.elts]
    piece = ast.get_source_segment(text, node) or type(node).__name__
    raise DefinitionError(
        f"{where}: {text!r}: only literal numbers, strings and lists may be arguments, not "
        f"{piece!r}; nothing in a config file is evaluated"
    )


def expression(text: str, where: str, base: Path = Path(".")) -> list[Value]:
    """The values of an expression such as ``"linspace(0, 10, 5)"`` (parsed, never eval'd)."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as err:
        raise DefinitionError(f"{where}: cannot read {text!r}: {err.msg}") from None
    call = tree.body
    if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name):
        raise DefinitionError(
            f"{where}: {text!r} is not a sweep expression; use a list or one of "
            f"{', '.join(f + '(...)' for f in FUNCTIONS)}"
        )
    name = call.func.id
    if name not in FUNCTIONS:
        raise DefinitionError(
            f"{where}: unknown function {name!r} in {text!r}{hint(name, FUNCTIONS)} Known: "
            f"{', '.join(FUNCTIONS)}"
        )
    args = [_literal(a, where, text) for a in call.args]
    kwargs = {}
    for kw in call.keywords:
        if kw.arg is None:
            raise DefinitionError(f"{where}: {text!r}: ** is not allowed")
        kwargs[kw.arg] = _literal(kw.value, where, text)
    spot = f"{where}: {name}(...)"
    try:
        if name in FILES:
            return FILES[name](spot, base, *args, **kwargs)
        return PURE[name](spot, *args, **kwargs)
    except TypeError as err:
        message = str(err).replace("_" + name + "()", name + "()")
        raise DefinitionError(f"{where}: {text!r}: wrong arguments ({message})") from None


def values(raw: Value, where: str, base: Path = Path(".")) -> list[Value]:
    """A parameter's values: a list as it is, an expression's values, or one scalar."""
    if raw is None:
        raise DefinitionError(f"{where}: no value (null); give a value, a list or an expression")
    if isinstance(raw, list | tuple):
        if not raw:
            raise DefinitionError(f"{where}: the list of values is empty")
        if any(v is None for v in raw):
            i = next(i for i, v in enumerate(raw) if v is None)
            raise DefinitionError(f"{where}: value {i} of the list is empty (null)")
        return list(raw)
    if is_expression(raw):
        return expression(str(raw), where, base)
    if isinstance(raw, Mapping):
        raise DefinitionError(f"{where}: values are a list or an expression, not a mapping")
    return [raw]


@dataclass(frozen=True, slots=True)
class Block:
    """Parameters taken one-to-one: ``names[k]`` has ``columns[k]``, all of one length."""

    names: tuple[str, ...]
    columns: tuple[Sequence[Value], ...]

    def __len__(self) -> int:
        return len(self.columns[0]) if self.columns else 1


class Sweep:
    """The product of blocks; each row is a dict of parameter values."""

    def __init__(self, blocks: Sequence[Block] = ()) -> None:
        self.blocks = tuple(b for b in blocks if b.names)
        self.names = tuple(n for b in self.blocks for n in b.names)
        self.size = math.prod(len(b) for b in self.blocks)

    def __len__(self) -> int:
        return self.size

    def row(self, i: int) -> dict[str, Value]:
        if not 0 <= i < self.size:
            raise IndexError(i)
        out: dict[str, Value] = {}
        for b in reversed(self.blocks):  # the last block varies fastest, as in itertools
            i, k = divmod(i, len(b))
            for name, col in zip(b.names, b.columns, strict=True):
                out[name] = col[k]
        return {n: out[n] for n in self.names}

    def tally(self, names: Sequence[str]) -> dict[tuple[Value, ...], int]:
        """How many rows have each combination of the values of ``names`` (in that order),
        without making the rows: a million-row sweep with three distinct values is three
        entries."""
        wanted = set(names)
        parts: list[dict[tuple[tuple[str, Value], ...], int]] = []
        rest = 1
        for b in self.blocks:
            keep = [k for k, n in enumerate(b.names) if n in wanted]
            if not keep:
                rest *= len(b)
                continue
            counts: dict[tuple[tuple[str, Value], ...], int] = {}
            for i in range(len(b)):
                key = tuple((b.names[k], b.columns[k][i]) for k in keep)
                counts[key] = counts.get(key, 0) + 1
            parts.append(counts)
        out: dict[tuple[Value, ...], int] = {}
        for combo in itertools.product(*(p.items() for p in parts)):
            values = dict(pair for key, _ in combo for pair in key)
            n = rest * math.prod(c for _, c in combo)
            out[tuple(values[name] for name in names)] = n
        return out

    def __iter__(self) -> Iterator[dict[str, Value]]:
        names = self.names
        parts = [list(zip(*b.columns, strict=True)) for b in self.blocks]
        for combo in itertools.product(*parts):
            yield dict(zip(names, itertools.chain.from_iterable(combo), strict=True))


def combine(
    columns: Mapping[str, Sequence[Value]],
    zipped: Sequence[Sequence[str]],
    where: str,
) -> Sweep:
    """Build a sweep: the parameters in each list of ``zipped`` go one-to-one, and the blocks
    (with every other parameter alone) are combined by product, in the order given."""
    seen: dict[str, int] = {}
    for k, group in enumerate(zipped):
        for name in group:
            if name not in columns:
                raise DefinitionError(
                    f"{where}: zip names {name!r}, which is not a swept parameter"
                    f"{hint(name, columns)} "
                    f"Parameters: {', '.join(columns) or 'none'}"
                )
            if name in seen:
                raise DefinitionError(f"{where}: {name!r} is in more than one zip")
            seen[name] = k
        lengths = {n: len(columns[n]) for n in group}
        if len(set(lengths.values())) > 1:
            shown = ", ".join(f"{n} has {m}" for n, m in lengths.items())
            raise DefinitionError(
                f"{where}: zipped parameters must have the same number of values, but {shown}; "
                "make them equal, or combine them by product instead"
            )
    blocks: list[Block] = []
    placed: set[int] = set()
    for name in columns:  # blocks in the order their first parameter was written
        at = seen.get(name)
        if at is None:
            blocks.append(Block((name,), (columns[name],)))
        elif at not in placed:
            placed.add(at)
            group = tuple(zipped[at])
            blocks.append(Block(group, tuple(columns[n] for n in group)))
    return Sweep(blocks)
