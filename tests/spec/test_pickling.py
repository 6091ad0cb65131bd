"""What shoal's pickler (spec/lower.py) sends by reference where cloudpickle would send a
value: the function under a decorator that keeps it as ``original`` (jobflow's ``@job``)."""

from __future__ import annotations

import contextvars
import functools
import pickle
from collections.abc import Callable
from typing import Any

from shoal.spec.lower import cdumps

SETTING = contextvars.ContextVar("SETTING", default=1)


def keeps(fn: Callable[..., Any]) -> Any:
    """A decorator that keeps the function it wraps as ``original``, as jobflow's ``@job``."""

    @functools.wraps(fn)
    def wrapper(*args: Any) -> Any:
        return fn(*args)

    wrapper.original = fn  # type: ignore[attr-defined]
    return wrapper


@keeps
def twice(x: int) -> int:
    return 2 * x * SETTING.get()


def test_a_decorated_function_goes_by_reference() -> None:
    """The undecorated function is not the module's attribute, so pickle refuses it and
    cloudpickle sends its code and globals; shoal sends where it lives."""
    original = twice.original  # type: ignore[attr-defined]
    data = cdumps(original)
    assert pickle.loads(data) is original  # the same object: not a copy made from its code
    assert b"co_code" not in data and b"_make_function" not in data


def test_a_local_decorated_function_still_goes_by_value() -> None:
    @keeps
    def inner(x: int) -> int:
        return x + 1

    copy = pickle.loads(cdumps(inner.original))
    assert copy is not inner.original and copy(1) == 2
