"""``status.json``: a small summary of a live run, rewritten atomically a few times a second."""

from __future__ import annotations

import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shoal.core.machine import Scheduler
from shoal.core.states import TERMINAL, State

INTERVAL = 0.25  # at most four writes a second


class StatusFile:
    def __init__(self, path: Path, name: str, total: int) -> None:
        self.path = path
        self.name = name
        self.total = total
        self.started = time.time()
        self.last = 0.0
        self.window: deque[tuple[float, int]] = deque(maxlen=40)  # (time, finished count)

    def maybe_write(
        self,
        s: Scheduler,
        log: logging.Logger,
        extra: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        now = time.monotonic()
        if now - self.last >= INTERVAL:
            self.last = now
            try:
                self.write(s, "running", extra() if extra is not None else None)
            except OSError as err:  # a status file is a convenience, never a reason to stop
                log.warning("cannot write %s: %s", self.path, err)

    def snapshot(self, s: Scheduler, state: str) -> dict[str, Any]:
        now = time.time()
        finished = sum(s.counts[x] for x in TERMINAL)
        self.window.append((now, finished))
        t0, f0 = self.window[0]
        elapsed = now - self.started
        totals = s.pool.totals()
        running = sorted(s.running())[:10]
        return {
            "run": self.name,
            "state": state,
            "started": self.started,
            "updated": now,
            "elapsed": round(elapsed, 3),
            "total": self.total,
            "counts": {x.value: s.counts[x] for x in State},
            "resources": {
                "cores": totals["cores"],
                "cores_used": totals["cores"] - totals["free_cores"],
                "gpus": totals["gpus"],
                "gpus_used": totals["gpus"] - totals["free_gpus"],
            },
            "throughput": {
                "recent": round((finished - f0) / (now - t0), 2) if now > t0 else 0.0,
                "overall": round(finished / elapsed, 2) if elapsed > 0 else 0.0,
            },
            "running": [
                {
                    "id": t,
                    "attempt": s.attempt(t),
                    "cores": list(p.cores) if (p := s.placement(t)) else [],
                }
                for t in running
            ],
        }

    def write(self, s: Scheduler, state: str, extra: dict[str, Any] | None = None) -> None:
        """Write the file atomically; ``extra`` adds sections (groups and rules)."""
        snap = self.snapshot(s, state)
        if extra:
            snap.update(extra)
        data = json.dumps(snap, indent=1)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w") as fh:
            fh.write(data)
        os.replace(tmp, self.path)
