"""Run one Python task in a fresh process: ``python -m shoal.backends.isolated TASKDIR``.

The local backend writes ``TASKDIR/input.pkl`` = (function payload, arguments payload) and
starts this module, under an MPI launcher when the task has several ranks. Rank 0 (or the only
process) writes ``TASKDIR/reply.pkl`` = (ok, result, kind, error, started, ended) and exits 0;
the other ranks only run the function.
"""

from __future__ import annotations

import os
import pickle
import sys

import cloudpickle

from shoal.backends.execute import call

_RANK_VARS = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID", "MPI_LOCALRANKID")


def rank() -> int:
    for var in _RANK_VARS:
        if var in os.environ:
            try:
                return int(os.environ[var])
            except ValueError:
                pass
    return 0


def main(taskdir: str) -> int:
    with open(os.path.join(taskdir, "input.pkl"), "rb") as fh:
        fn_payload, payload = pickle.load(fh)
    fn = cloudpickle.loads(fn_payload)
    reply = call(fn, payload, taskdir)
    if rank() == 0:
        tmp = os.path.join(taskdir, "reply.tmp")
        with open(tmp, "wb") as fh:
            pickle.dump(reply, fh, protocol=5)
        os.replace(tmp, os.path.join(taskdir, "reply.pkl"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
