"""Unpickling user data in the driver without letting it end the run.

A pickle runs code of the user's classes (``__reduce__``, ``__setstate__``) and imports their
modules: loading one may raise anything, ``SystemExit`` and ``ModuleNotFoundError`` included.
In the driver such an error belongs to the task whose data it is (its inputs cannot be made),
never to the run: :func:`loads` turns it into a :class:`~shoal.errors.DefinitionError` that
says what could not be loaded and why. Only ``KeyboardInterrupt`` (the user's second Ctrl-C)
goes through.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any

from shoal.errors import DefinitionError


def why(err: BaseException) -> str:
    """An error in words, with what to do when it is an import that failed."""
    text = f"{type(err).__name__}: {err}".rstrip(": ")
    if isinstance(err, ImportError | AttributeError):
        text += (
            " (the module or class it needs does not import in the driver: run or resume "
            "where it imports, or put its folder on PYTHONPATH)"
        )
    return text


def loads(data: bytes, what: str, load: Callable[[bytes], Any] = pickle.loads) -> Any:
    """``load(data)``; any error but KeyboardInterrupt as a DefinitionError naming ``what``."""
    try:
        return load(data)
    except KeyboardInterrupt:
        raise
    except BaseException as err:  # user code: SystemExit is its error too
        raise DefinitionError(f"cannot load {what}: {why(err)}") from None
