"""A temperature sweep of an external program: command tasks, ordering and a Python fan-in.

The program is ``scripts/anneal.py``, a stand-alone 2D Ising Monte Carlo that takes ``--T`` and
``--steps`` and prints one JSON line. Any executable would do (LAMMPS, a Fortran code, a shell
pipeline): shoal only fills in the command line and captures what it prints.

What this example shows:

* **Command tasks.** ``shoal.command("{python} {script} --T {T} ...")`` is a factory; each call
  fills the ``{placeholders}`` by name (every value is shell-quoted) and records one task.
  A command task's output is a dict: ``returncode``, ``stdout`` (the text it printed, up to
  1 MiB) and ``dir`` (its task folder, which also holds the ``stdout`` and ``stderr`` files).
  A non-zero exit status fails the task.
* **Environment.** ``env=`` on the factory applies to every call (here ``OMP_NUM_THREADS=1``,
  so numpy does not start threads on cores that other tasks hold); ``env=`` on one call adds
  to it (here a different ``ANNEAL_SEED`` per temperature).
* **Ordering without data.** ``after=[smoke]`` makes every sweep point wait until a short smoke
  test of the program succeeded. If the program is broken, one task fails and the sweep is
  marked dependency-failed instead of failing forty times.
* **Fan-in of parts of outputs.** ``summarize`` takes ``[t.out["stdout"] for t in sweep]``:
  a list of references to *one field* of each command's output. It parses every JSON line,
  estimates the critical temperature from the peak of the specific heat (Onsager: 2.269 J/k_B)
  and returns the rows and a table.

Run it with ``python examples/commands.py`` or ``shoal run examples/commands.py`` (add
``--quick`` for a short sweep). Run directories go to ``$SHOAL_BASE`` if set, else to the
current directory.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import shoal

SCRIPT = Path(__file__).resolve().parent / "scripts" / "anneal.py"
TEMPERATURES = (1.5, 1.8, 2.0, 2.1, 2.2, 2.25, 2.3, 2.35, 2.4, 2.5, 2.7, 3.0, 3.5)
QUICK = (1.5, 2.3, 3.5)

anneal = shoal.command(
    "{python} {script} --T {T} --steps {steps} --size {size}",
    env={"OMP_NUM_THREADS": "1"},
)


@shoal.task
def summarize(stdouts: list[str]) -> dict[str, object]:
    """Parse the JSON line each sweep point printed; estimate T_c; make a table."""
    import json

    rows = []
    for text in stdouts:
        lines = [line for line in text.splitlines() if line.strip().startswith("{")]
        if not lines:
            raise ValueError(f"no JSON result in the output: {text[-200:]!r}")
        rows.append(json.loads(lines[-1]))
    rows.sort(key=lambda r: r["T"])
    peak = max(rows, key=lambda r: r["specific_heat"])
    header = f"{'T':>6} {'E/N':>8} {'|m|':>7} {'C/N':>7} {'chi/N':>8} {'seed':>5}"
    table = [header, "-" * len(header)]
    for r in rows:
        table.append(
            f"{r['T']:>6.2f} {r['energy']:>8.4f} {r['magnetization']:>7.4f} "
            f"{r['specific_heat']:>7.3f} {r['susceptibility']:>8.3f} {r['seed']:>5d}"
        )
    table.append(f"specific heat peaks at T = {peak['T']:.2f} (Onsager T_c = 2.269)")
    text = "\n".join(table)
    print(text)  # kept in this task's stdout file too
    return {"rows": rows, "count": len(rows), "Tc": peak["T"], "table": text}


def build(
    temperatures: tuple[float, ...] | list[float] = TEMPERATURES, steps: int = 600, size: int = 16
) -> tuple[shoal.Workflow, list[shoal.Task], shoal.Task]:
    """The workflow, its sweep tasks (one per temperature) and the summarizing task."""
    common = {"python": sys.executable, "script": str(SCRIPT), "size": size}
    with shoal.Workflow("ising-sweep") as wf:
        smoke = anneal.options(name="smoke-test")(T=5.0, steps=4, **{**common, "size": 4})
        sweep = [
            anneal.options(name=f"anneal-T{T:g}")(
                T=T, steps=steps, **common, env={"ANNEAL_SEED": str(i)}, after=[smoke]
            )
            for i, T in enumerate(temperatures)
        ]
        summary = summarize([t.out["stdout"] for t in sweep])
    return wf, sweep, summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="three temperatures, fewer sweeps")
    args = parser.parse_args(argv)

    temps, steps = (QUICK, 200) if args.quick else (TEMPERATURES, 600)
    wf, _, summary = build(temps, steps)
    run = wf.run(base=os.environ.get("SHOAL_BASE") or os.getcwd())
    if not run.ok:
        for f in run.failures():
            print(f"failed: #{f['id']} {f['name']}: {f['reason']} (logs: {f['logs']})")
        sys.exit(1)
    print(run.result(summary)["table"])


if __name__ == "__main__":
    main()
