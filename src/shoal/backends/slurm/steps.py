"""Job steps as child processes of the driver (``srun`` lines), tried again after a back-off
when Slurm refuses to create a step for a passing reason."""

from __future__ import annotations

import time

from shoal.backends.base import Job
from shoal.backends.processes import Chain, Processes
from shoal.backends.slurm.parse import signalled, transient
from shoal.core.events import Outcome

BACKOFF = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0)  # seconds before each new try of one step


class Steps(Processes):
    """Processes whose failures to create a step are tried again after a back-off."""

    def run_one(self, chain: Chain, job: Job) -> Outcome:
        tries = 0
        while True:
            outcome = super().run_one(chain, job)
            if outcome.ok:
                return outcome
            err = job.taskdir / "stderr"
            text = err.read_text(errors="replace") if err.exists() else ""
            outcome = signalled(outcome, text)
            if tries >= len(BACKOFF) or self.closing or not transient(text):
                return outcome
            err.unlink(missing_ok=True)
            (job.taskdir / "stdout").unlink(missing_ok=True)
            pause = time.monotonic() + BACKOFF[tries]
            while time.monotonic() < pause:  # a cancel or a close ends the wait
                if self.closing or chain.cancelled:
                    return outcome
                time.sleep(0.05)
            tries += 1
