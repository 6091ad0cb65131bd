"""The run's durable record: SQLite in WAL mode inside the run directory.

One writer (the driver loop) commits each iteration's changes in one transaction before it acts
on them; any number of readers (the CLI, the dashboard, ``Run``) query it concurrently through
read-only connections. The store, not the driver's memory, is the truth about a run.
"""

from shoal.store.queries import Reader, TaskRow
from shoal.store.writer import Batch, Writer

__all__ = ["Batch", "Reader", "TaskRow", "Writer"]
