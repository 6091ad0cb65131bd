"""The closed sets of words shoal uses for kinds of things, one enum each.

Each is a ``StrEnum``: a member equals its word (``Failure.TIMEOUT == "timeout"``), so the
words stored in ``shoal.db``, written in config files and typed on the command line stay as
they were, while the code names a kind by its member and a typo is an ``AttributeError``.
"""

from __future__ import annotations

import enum


class Failure(enum.StrEnum):
    """Why an attempt failed (``Outcome.kind`` of a failure, ``retry_on`` of a policy)."""

    ERROR = "error"  # the Python function raised
    EXIT = "exit"  # the command exited non-zero
    TIMEOUT = "timeout"  # it ran past its timeout and was killed
    CRASH = "crash"  # the process running it died (a signal, out of memory)
    LOST = "lost"  # its worker or node was lost; nothing is known of the attempt
    CANCELLED = "cancelled"  # a cancel request stopped it
    STOPPED = "stopped"  # the run stopped (or a rerun took it back): it goes back to waiting

    @classmethod
    def of(cls, word: str) -> Failure:
        """The failure a backend's word names (an unknown word is an ``error``: a backend
        that reports a failure of no known kind still fails the attempt)."""
        try:
            return cls(word)
        except ValueError:
            return cls.ERROR


class KillKind(enum.StrEnum):
    """Why the core asks a backend to stop an attempt (``Kill.kind``); the backend reports the
    attempt failed with the :class:`Failure` of the same word."""

    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    STOPPED = "stopped"


class Lane(enum.StrEnum):
    """A backend queue that can hold a task behind a running task of the same lane."""

    WORKERS = "workers"  # persistent Python workers
    PROCESS = "process"  # a chain of processes started one after another on one placement


RETRYABLE = frozenset({Failure.ERROR, Failure.EXIT, Failure.TIMEOUT, Failure.CRASH, Failure.LOST})
