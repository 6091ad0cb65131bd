"""How ready tasks are placed: the policy a run chooses (see :mod:`shoal.core.placement`)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from shoal.errors import DefinitionError


class Mode(enum.StrEnum):
    """``backfill``: start the most urgent ready task that fits whenever resources free up.
    ``waves``: start everything that fits, then nothing until all of it has finished."""

    BACKFILL = "backfill"
    WAVES = "waves"


class Order(enum.StrEnum):
    """Among ready tasks of equal priority: ``fifo`` (submission order) or ``largest`` first."""

    FIFO = "fifo"
    LARGEST = "largest"


# MatEnsemble calls the two "adaptive" and "non-adaptive": the same policies.
ALIASES = {"adaptive": Mode.BACKFILL, "non-adaptive": Mode.WAVES}


@dataclass(frozen=True, slots=True)
class Policy:
    """How ready tasks are placed: ``backfill`` (default) or ``waves``; see core/placement.py.

    ``mode`` and ``order`` take the enum members or their words (``"waves"``)."""

    mode: Mode = Mode.BACKFILL
    reserve_after: float = 60.0
    order: Order = Order.FIFO
    prefetch: int = 0  # tasks queued behind each running one at most (core/chains.py)
    prefetch_window: float = 0.02  # seconds of expected work queued behind each at most
    follow: bool = False  # queue dependents behind the task they wait for (core/chains.py)

    def __post_init__(self) -> None:
        mode = ALIASES.get(self.mode, self.mode)
        if mode not in Mode.__members__.values():
            raise DefinitionError(
                f"unknown policy {self.mode!r}: use 'backfill' (the default; also called "
                "'adaptive') or 'waves' ('non-adaptive')"
            )
        object.__setattr__(self, "mode", Mode(mode))
        if self.order not in Order.__members__.values():
            raise DefinitionError(
                f"unknown order {self.order!r}: use 'fifo' (the default) or 'largest'"
            )
        object.__setattr__(self, "order", Order(self.order))
        if self.reserve_after < 0:
            raise DefinitionError(f"reserve_after must be >= 0 seconds, got {self.reserve_after}")
        if self.prefetch < 0:
            raise DefinitionError(f"prefetch must be >= 0, got {self.prefetch}")
