"""Metric conditions are parsed safely: the grammar is small, and anything else is refused."""

from __future__ import annotations

import pytest

from shoal.errors import DefinitionError
from shoal.runtime.steering.stats import TagStats
from shoal.spec.expr import compile_condition


def group() -> TagStats:
    g = TagStats()
    for _ in range(3):
        g.moved(None, "succeeded")
    g.moved(None, "failed")
    for x in (10.0, 20.0, 60.0):
        g.runtime.add(x)
        g["energy"].add(-x)
    return g


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mean(runtime) > 29", True),
        ("mean(runtime) > 31", False),
        ("max(runtime) >= 60 and min(energy) < -50", True),
        ("failed / total > 0.2", True),
        ("failed / total > 0.3", False),
        ("succeeded == 3 and not failed > 1", True),
        ("10 < median(runtime) <= 20", True),
        ("count(energy) == 3 or pending > 0", True),
        ("std(runtime) > 0 and var(runtime) > 0", True),
        ("p90(runtime) > 20 and p99(runtime) <= 60", True),
        ("finished == 4 and running == 0", True),
        ("-mean(energy) > 2 ** 5", False),
        ("mean(wait) > 1", False),  # no values yet: nan compares false
        ("running / ready > 1", False),  # 0/0 is nan, not an error
    ],
)
def test_conditions_evaluate(text: str, expected: bool) -> None:
    assert bool(compile_condition(text, "rule 'r'")(group())) is expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("__import__('os').system('true')", "unknown function"),
        ("runtime.__class__", "not allowed here"),
        ("mean(runtime) > x", "unknown name 'x'"),
        ("avg(runtime) > 1", "unknown function"),
        ("mean(runtime, wait) > 1", "takes one field name"),
        ("mean('runtime') > 1", "takes one field name"),
        ("[1, 2]", "not allowed here"),
        ("lambda: 1", "not allowed here"),
        ("mean(runtime) >", "cannot read"),
        ("", "needs an expression"),
        ("'a' == 'a'", "not allowed here"),
    ],
)
def test_anything_else_is_refused_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(DefinitionError, match="rule 'r'") as err:
        compile_condition(text, "rule 'r'")
    assert message in str(err.value)
