"""Steering a live run: rules, strategies and per-tag statistics, inside the driver.

* ``engine``: :class:`Steering`, which calls the rules and strategies, times them, keeps their
  memory and turns what they ask into core stimuli;
* ``controller``: what a handler is given, the public ``Event`` and ``Controller``; it sees the
  engine only through its ``Engine`` protocol (so it never imports the engine);
* ``stats``: streaming statistics per tag (``TagStats``) (counts, run times, tracked fields).

Rules of this package: the engine performs no I/O of its own and takes the time as an
argument; it sees the driver only through its ``Host`` protocol.
"""

from shoal.runtime.steering.controller import SLOW, Controller, Event, Owner, TaskView
from shoal.runtime.steering.engine import Host, Steering
from shoal.runtime.steering.stats import Stream, TagStats

__all__ = [
    "SLOW",
    "Controller",
    "Event",
    "Host",
    "Owner",
    "Steering",
    "Stream",
    "TagStats",
    "TaskView",
]
