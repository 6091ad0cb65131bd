"""The placement environment, the same for every backend: which variables carry a task's GPUs
and thread count, how cores of a pretend node fold onto real ones, the import path of the
Python processes a backend starts, and how many GPUs this machine has.

This is the one place that names GPU and thread variables; each backend decides which of them
it sets, and in what order the task's own environment wins.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

# A task's GPUs, for CUDA, ROCm and oneAPI (Level Zero) alike
GPU_VARS = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "ZE_AFFINITY_MASK")
# Threads of the numerical libraries, read once, when they are imported
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def gpu_vars(gpus: Sequence[int]) -> dict[str, str]:
    """Every GPU variable set to the GPU indices ``gpus`` (empty: no GPU visible)."""
    text = ",".join(str(g) for g in gpus)
    return {var: text for var in GPU_VARS}


def thread_vars(cpus: int) -> dict[str, str]:
    """Every thread variable set to ``cpus``."""
    return {var: str(cpus) for var in THREAD_VARS}


def detect_gpus() -> int:
    """GPUs visible to this process: CUDA_VISIBLE_DEVICES if set, else /dev/nvidia* devices."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return len([x for x in env.split(",") if x.strip() and x.strip() != "-1"])
    try:
        return len([d for d in os.listdir("/dev") if d[6:].isdigit() and d.startswith("nvidia")])
    except OSError:
        return 0


def fold(cores: tuple[int, ...], real: list[int]) -> list[int]:
    """Real cores for a placement on a pretend node larger than the machine: as many distinct
    real cores as the task has cores (up to all of them), starting where its first core lands."""
    n = len(real)
    if not cores:
        return []
    start = cores[0] % n
    return sorted(real[(start + j) % n] for j in range(min(len(cores), n)))


def python_path() -> str:
    """The driver's import path (and its working directory) for Python processes it starts,
    so that functions pickled by reference import there as they do here."""
    paths = [p for p in sys.path if p]
    if os.getcwd() not in paths:
        paths.insert(0, os.getcwd())
    return os.pathsep.join(paths)
