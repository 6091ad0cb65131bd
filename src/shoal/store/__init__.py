"""The run's durable record: SQLite in WAL mode inside the run directory.

One writer (the driver loop) commits each iteration's changes in one transaction before it acts
on them; any number of readers (the CLI, the dashboard, ``Run``) query it concurrently through
read-only connections. The store, not the driver's memory, is the truth about a run.

* ``schema.py``: the tables and connection settings; ``writer.py``: the one writer, one
  ``_write_<table>`` per table inside one transaction; ``queries.py``: readers;
  ``recover.py``: a run read back for resume; ``requests.py``: the requests table;
  ``lock.py``: one driver per run directory; ``fs.py`` and ``pickles.py``: helpers.

Rules of this package: it imports spec and core (the data it stores), never backends (a
sibling layer), runtime, config or cli; every change of a run is one transaction.
"""

from typing import TYPE_CHECKING

from shoal.lazy import exports

if TYPE_CHECKING:
    from shoal.store.queries import Reader, TaskRow
    from shoal.store.writer import Batch, Writer

# Imported on first use: a reader (the CLI, the dashboard) never loads the writer's imports
__getattr__, __dir__ = exports(
    __name__,
    {
        "Reader": "shoal.store.queries",
        "TaskRow": "shoal.store.queries",
        "Batch": "shoal.store.writer",
        "Writer": "shoal.store.writer",
    },
    globals(),
)

__all__ = ["Batch", "Reader", "TaskRow", "Writer"]
