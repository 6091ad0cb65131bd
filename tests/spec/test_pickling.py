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


def test_a_decorated_function_of_a_module_workers_cannot_import_goes_by_value(
    tmp_path: Any,
) -> None:
    """A module loaded from a file outside the import path (``importlib`` from a path): the
    workers could not import it, so the function goes by value, as before."""
    import importlib.util
    import sys

    path = tmp_path / "elsewhere_mod.py"
    path.write_text("from tests_keeps import keeps\n@keeps\ndef f(x):\n    return x * 3\n")
    sys.modules["tests_keeps"] = sys.modules[__name__]
    spec = importlib.util.spec_from_file_location("elsewhere_mod", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["elsewhere_mod"] = mod
    try:
        spec.loader.exec_module(mod)
        data = cdumps(mod.f.original)
        del sys.modules["elsewhere_mod"]  # as in a worker: not importable
        assert pickle.loads(data)(2) == 6
    finally:
        sys.modules.pop("elsewhere_mod", None)
        sys.modules.pop("tests_keeps", None)
