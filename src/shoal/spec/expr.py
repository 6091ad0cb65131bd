"""Safe expressions over group statistics, for metric rules: ``when="mean(runtime) > 30"``.

The text is parsed with :mod:`ast` and checked against a small grammar, never evaluated with
``eval``: numbers, comparisons (chained too), ``and``/``or``/``not``, arithmetic, state counts
by name (``succeeded``, ``failed``, ``running``, ``total``, ``finished`` ...), and statistics
of a stream: ``mean(x)``, ``std(x)``, ``var(x)``, ``min(x)``, ``max(x)``, ``count(x)``,
``median(x)``, ``p90(x)``, ``p99(x)``, where ``x`` is ``runtime``, ``wait`` or a tracked result
field. Anything else is refused when the rule is defined, with the reason.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Any, Protocol

from shoal.errors import DefinitionError


class StreamLike(Protocol):
    count: int
    mean: float
    min: float
    max: float

    @property
    def var(self) -> float: ...
    @property
    def std(self) -> float: ...
    def quantile(self, p: float) -> float: ...


class GroupLike(Protocol):
    def stream(self, name: str) -> Any: ...
    def count(self, state: str) -> int: ...
    @property
    def total(self) -> int: ...


STATES = (
    "pending",
    "ready",
    "queued",
    "running",
    "succeeded",
    "failed",
    "dep_failed",
    "cancelled",
    "skipped",
)
FINISHED = ("succeeded", "failed", "dep_failed", "cancelled", "skipped")


def _stat(name: str) -> Callable[[Any], float]:
    table: dict[str, Callable[[Any], float]] = {
        "mean": lambda s: s.mean if s.count else math.nan,
        "std": lambda s: s.std,
        "var": lambda s: s.var,
        "min": lambda s: s.min if s.count else math.nan,
        "max": lambda s: s.max if s.count else math.nan,
        "count": lambda s: float(s.count),
        "median": lambda s: s.quantile(0.5),
        "p50": lambda s: s.quantile(0.5),
        "p90": lambda s: s.quantile(0.9),
        "p99": lambda s: s.quantile(0.99),
    }
    return table[name]


FUNCTIONS = ("mean", "std", "var", "min", "max", "count", "median", "p50", "p90", "p99")
NAMES = (*STATES, "total", "finished")

_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_COMPARE: dict[type, Callable[[Any, Any], Any]] = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}

Compiled = Callable[[GroupLike], Any]


def compile_condition(text: str, where: str) -> Compiled:
    """Check ``text`` and return a function of a group's statistics."""
    if not isinstance(text, str) or not text.strip():
        raise DefinitionError(f"{where}: when= needs an expression, e.g. 'mean(runtime) > 30'")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as err:
        raise DefinitionError(f"{where}: cannot read when={text!r}: {err.msg}") from None

    def bad(node: ast.AST, why: str) -> DefinitionError:
        piece = ast.get_source_segment(text.strip(), node) or type(node).__name__
        return DefinitionError(
            f"{where}: when={text!r}: {why} ({piece!r}). Allowed: numbers, comparisons, "
            f"and/or/not, + - * / % **, counts ({', '.join(NAMES)}) and "
            f"{', '.join(f + '(x)' for f in FUNCTIONS)} of runtime, wait or a tracked field."
        )

    def build(node: ast.AST) -> Compiled:
        if isinstance(node, ast.Constant) and type(node.value) in (int, float, bool):
            value = node.value
            return lambda g: value
        if isinstance(node, ast.Name):
            name = node.id
            if name == "total":
                return lambda g: g.total
            if name == "finished":
                return lambda g: sum(g.count(s) for s in FINISHED)
            if name in STATES:
                return lambda g: g.count(name)
            raise bad(node, f"unknown name {name!r}")
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
                raise bad(node, "unknown function")
            if len(node.args) != 1 or node.keywords or not isinstance(node.args[0], ast.Name):
                raise bad(node, "a statistic takes one field name, e.g. mean(runtime)")
            fn = _stat(node.func.id)
            field = node.args[0].id
            return lambda g: fn(g.stream(field))
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            op = _BINARY[type(node.op)]
            left, right = build(node.left), build(node.right)

            def arith(g: GroupLike) -> Any:
                try:
                    return op(left(g), right(g))
                except (ZeroDivisionError, OverflowError):
                    return math.nan

            return arith
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.Not):
            inner = build(node.operand)
            if isinstance(node.op, ast.Not):
                return lambda g: not inner(g)
            return lambda g: -inner(g)
        if isinstance(node, ast.BoolOp):
            parts = [build(v) for v in node.values]
            if isinstance(node.op, ast.And):
                return lambda g: all(p(g) for p in parts)
            return lambda g: any(p(g) for p in parts)
        if isinstance(node, ast.Compare) and all(type(o) in _COMPARE for o in node.ops):
            first = build(node.left)
            rest = [
                (_COMPARE[type(o)], build(c))
                for o, c in zip(node.ops, node.comparators, strict=True)
            ]

            def compare(g: GroupLike) -> bool:
                a = first(g)
                for op, nxt in rest:
                    b = nxt(g)
                    if not op(a, b):
                        return False
                    a = b
                return True

            return compare
        raise bad(node, "not allowed here")

    return build(tree.body)
