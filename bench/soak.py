"""Soak: thousands of random workflows (tests/e2e/randomflow.py), each checked against the
reference interpreter; prints how many ran and the seeds that failed, with replay commands.

    python bench/soak.py --cases 2000                      # basic mix, default prefetch
    python bench/soak.py --cases 500 --prefetch 0 --burners 2
    python bench/soak.py --minutes 10 --mode crash --start 10000
    python bench/soak.py --cases 200 --modes basic,requests,crash --jobs 2

``--burners N`` runs N CPU-burning processes beside the runs (load makes races show);
``--jobs N`` runs N cases at once; ``--shrink`` shrinks the first failure and prints it as
a regression test. Seeds go up from ``--start``, so a soak is reproducible.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "src"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from tests.e2e.randomflow import (  # noqa: E402
    Setup,
    regression,
    replay_line,
    run_seed,
    shrink_seed,
)


def burn(stop: float) -> None:
    """Keep one core busy until ``stop`` (time.time())."""
    x = 0
    while time.time() < stop:
        for i in range(100_000):
            x += i * i


def one(seed: int, mode: str, prefetch: int | None, timeout: float) -> tuple[int, str, list[str]]:
    setup = Setup(prefetch=prefetch, timeout=timeout)
    return seed, mode, run_seed(seed, mode, setup, None, quiet=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=1000)
    ap.add_argument("--minutes", type=float, help="stop starting cases after this long")
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--modes", "--mode", default="basic", help="basic, requests, crash (a list)")
    ap.add_argument("--prefetch", type=int)
    ap.add_argument("--burners", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per case")
    ap.add_argument("--shrink", action="store_true")
    args = ap.parse_args()
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    modes = args.modes.split(",")
    end = time.time() + args.minutes * 60 if args.minutes else float("inf")
    burners = [
        multiprocessing.Process(target=burn, args=(min(end, time.time() + 86400),), daemon=True)
        for _ in range(args.burners)
    ]
    for b in burners:
        b.start()
    failed: list[tuple[int, str]] = []
    done = 0
    t0 = time.time()
    seeds = [
        (s, modes[i % len(modes)]) for i, s in enumerate(range(args.start, args.start + args.cases))
    ]
    try:
        with ProcessPoolExecutor(args.jobs) as pool:
            pending = iter(seeds)
            futures = set()
            while True:
                while len(futures) < args.jobs and time.time() < end:
                    nxt = next(pending, None)
                    if nxt is None:
                        break
                    futures.add(pool.submit(one, nxt[0], nxt[1], args.prefetch, args.timeout))
                if not futures:
                    break
                finished = {f for f in futures if f.done()}
                if not finished:
                    time.sleep(0.05)
                    continue
                futures -= finished
                for f in finished:
                    seed, mode, problems = f.result()
                    done += 1
                    if problems:
                        failed.append((seed, mode))
                        print(
                            f"FAIL seed {seed} ({mode}): {problems[0]}"
                            + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else "")
                        )
                        print("  " + replay_line(seed, mode, Setup(prefetch=args.prefetch)))
                    if done % 25 == 0:
                        print(
                            f"{done} cases, {len(failed)} failed, {time.time() - t0:.0f} s",
                            flush=True,
                        )
    finally:
        for b in burners:
            b.terminate()
    print(
        f"{done} cases run (modes {','.join(modes)}, prefetch {args.prefetch}, "
        f"{args.burners} burners) in {time.time() - t0:.0f} s: {len(failed)} failed"
    )
    if failed:
        print("failing seeds: " + " ".join(f"{s}:{m}" for s, m in failed))
        if args.shrink:
            seed, mode = failed[0]
            setup = Setup(prefetch=args.prefetch, timeout=args.timeout)
            small = shrink_seed(seed, mode, setup, 600.0)
            print(regression(small, setup, ["see the replay command"]))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
