"""Shared helpers for the shoal benchmarks.

* :func:`alternate` runs a reference and shoal side by side (ref, shoal, ref, shoal, ...) and
  :func:`medians` reduces the measurements to medians: this machine is noisy, so every number
  is compared against a reference measured in the same invocation.
* :func:`tempbase` is a temporary folder for run directories, deleted afterwards
  (``SHOAL_BENCH_KEEP=1`` keeps it, to look at a run that went wrong).
* :func:`run_shoal` runs a workflow under a watchdog: a run that hangs ends the benchmark with
  the run's last status instead of blocking forever.
* :func:`child_peak_rss` runs a workload in a subprocess and reports its peak RSS.
* :func:`machine` describes the machine; :func:`report` prints the one-line summary and writes
  the JSON that ``bench/run.py`` collects.

Scripts import this module as ``common`` (they run as ``python bench/<name>.py``, which puts
``bench/`` first on ``sys.path``).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
REPEATS = 3

Measure = Callable[[], dict[str, float]]


# -- timing ---------------------------------------------------------------------------------
def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds, value) of one call."""
    t0 = time.perf_counter()
    value = fn()
    return time.perf_counter() - t0, value


def alternate(
    measures: dict[str, Measure], repeats: int = REPEATS, verbose: bool = True
) -> dict[str, list[dict[str, float]]]:
    """Run every measure ``repeats`` times, interleaved in the order given (ref first).

    Each measure returns a dict of numbers; the result maps name -> one dict per run.
    """
    out: dict[str, list[dict[str, float]]] = {name: [] for name in measures}
    for i in range(repeats):
        for name, fn in measures.items():
            m = fn()
            out[name].append(m)
            if verbose:
                shown = ", ".join(f"{k}={v:.4g}" for k, v in m.items())
                print(f"  [{i + 1}/{repeats}] {name}: {shown}", file=sys.stderr, flush=True)
    return out


def medians(runs: list[dict[str, float]]) -> dict[str, float]:
    """Per-key medians over runs (keys of the first run)."""
    return {k: median([r[k] for r in runs]) for k in runs[0]}


# -- run directories ------------------------------------------------------------------------
@contextlib.contextmanager
def tempbase(prefix: str = "shoal-bench-") -> Iterator[Path]:
    """A temporary folder for run directories, removed afterwards (they can be large).

    ``SHOAL_BENCH_TMP`` chooses where it goes (default: the system's temp folder).
    """
    where = os.environ.get("SHOAL_BENCH_TMP") or None
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=where))
    try:
        yield path
    finally:
        if os.environ.get("SHOAL_BENCH_KEEP"):
            print(f"  (kept {path})", file=sys.stderr)
        else:
            shutil.rmtree(path, ignore_errors=True)


def cleanup_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so that temp folders are removed when a run is stopped."""

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(f"stopped by signal {signum}")

    signal.signal(signal.SIGTERM, stop)


# -- running shoal ----------------------------------------------------------------------------
class Hung(Exception):
    """A shoal run did not finish within its time limit."""


@contextlib.contextmanager
def watchdog(seconds: float | None, what: str) -> Iterator[None]:
    """Raise :class:`Hung` in the main thread if the block runs longer than ``seconds``."""
    if not seconds:
        yield
        return

    def on_alarm(signum: int, frame: object) -> None:
        raise Hung(f"{what} did not finish within {seconds:g} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def shoal_options(args: Any) -> dict[str, Any]:
    """Options for ``wf.run`` from the common command-line flags."""
    return {} if args.prefetch is None else {"prefetch": args.prefetch}


def run_shoal(wf: Any, base: Path, timeout: float | None, **options: Any) -> Any:
    """``wf.run(base=base, **options)`` under a watchdog; a hang or a failed run is fatal."""
    try:
        with watchdog(timeout, f"shoal run {wf.name!r}"):
            run = wf.run(base=base, **options)
    except Hung as err:
        raise SystemExit(f"HUNG: {err}; last status: {last_status(base)}") from None
    if not run.ok:
        raise SystemExit(f"shoal run {wf.name!r} ended {run.state}: {run.status()}")
    return run


def last_status(base: Path) -> str:
    """Counts and running tasks from the newest run directory's status.json, as one line."""
    dirs = sorted(base.glob("*/status.json"), key=lambda p: p.stat().st_mtime)
    if not dirs:
        return "no status.json"
    try:
        st = json.loads(dirs[-1].read_text())
    except (OSError, ValueError) as err:
        return f"unreadable status.json ({err})"
    counts = {k: v for k, v in st.get("counts", {}).items() if v}
    running = [r.get("id") for r in st.get("running", [])][:10]
    return f"counts {counts}, running task ids {running}, status updated {st.get('updated')}"


# -- memory ---------------------------------------------------------------------------------
def vm_hwm_mb(pid: int | str = "self") -> float | None:
    """Peak resident set size (VmHWM) of a live process in MB, from /proc; None if unknown."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def child_peak_rss(argv: list[str], timeout: float | None = None) -> tuple[int, float, str]:
    """Run ``argv`` to the end; return (exit code, peak RSS in MB, stdout).

    The peak comes from ``wait4``'s rusage of that one child (Linux: the larger of the
    child's own peak and that of the descendants it waited for). It also counts the memory
    the child had between fork and exec, which is this process's: measure with a small
    parent. Children that want the driver's own peak alone also print their ``VmHWM`` (see
    :func:`vm_hwm_mb`), which has neither problem.
    """
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(argv, stdout=out, cwd=ROOT)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if deadline is not None and time.monotonic() > deadline:
                proc.terminate()  # lets the child clean up; then make sure
                for _ in range(200):
                    pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                    if pid:
                        break
                    time.sleep(0.05)
                else:
                    proc.kill()
                    pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode(errors="replace")
    return proc.returncode, usage.ru_maxrss / 1024, text


# -- reporting ------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 0
    try:
        import shoal

        version = shoal.__version__
    except ImportError:
        version = "?"
    return {
        "cpus": os.cpu_count(),
        "cpus_usable": usable,
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "shoal": version,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def row(
    workload: str,
    shoal: float | None,
    reference: float | None,
    value: float | None,
    target: str,
    met: bool | None,
    unit: str = "",
) -> dict[str, Any]:
    """One line of the results table (value: the ratio, or the value checked against target)."""
    return {
        "workload": workload,
        "shoal": shoal,
        "reference": reference,
        "value": value,
        "target": target,
        "met": met,
        "unit": unit,
    }


def report(
    name: str, summary: str, rows: list[dict[str, Any]], data: dict[str, Any], args: Any
) -> None:
    """Print the one-line summary; write everything as JSON to ``args.json`` if given."""
    print(summary, flush=True)
    if args.json:
        doc = {
            "benchmark": name,
            "summary": summary,
            "machine": machine(),
            "args": vars(args),
            "rows": rows,
            **data,
        }
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")


def add_common_args(parser: Any) -> None:
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON to PATH")
    parser.add_argument(
        "--repeats", type=int, default=REPEATS, help=f"runs of each side (default {REPEATS})"
    )
    parser.add_argument("--quiet", action="store_true", help="no per-run lines on stderr")
    parser.add_argument(
        "--prefetch", type=int, default=None, help="shoal's prefetch= (default: shoal's own)"
    )
    parser.add_argument(
        "--run-timeout",
        type=float,
        default=300.0,
        help="seconds before a shoal run counts as hung (default 300; 0: no limit)",
    )


def fmt(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "-"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"
