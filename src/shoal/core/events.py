"""The backend's report of an attempt: :class:`Outcome`.

The core never reads it: the runtime turns each outcome into a stimulus (``Succeeded``,
``Failed``, ``Returned``; :mod:`shoal.core.stimuli`) and stores the outcome itself. It lives
here, below both the backends that make it and the store that writes it. (The stimuli,
commands and refusals, once defined in this module too, are in ``stimuli.py``,
``commands.py`` and ``refusals.py``; ``shoal.core`` exports them all.)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Outcome:
    """What a backend reported about an attempt: the data behind a Succeeded or Failed event."""

    task: int
    attempt: int
    ok: bool
    started: float | None = None
    ended: float | None = None
    kind: str = ""
    error: str = ""
    exit_code: int | None = None
    worker: str = ""
    result: bytes | None = None  # pickled return value (None for failures)
    returned: bool = False  # given back unstarted: neither success nor failure

    @classmethod
    def unstarted(cls, task: int, attempt: int, ended: float, kind: str, error: str) -> Outcome:
        """A failure of an attempt that never started (cancelled while queued, refused)."""
        return cls(task, attempt, False, None, ended, kind, error)
