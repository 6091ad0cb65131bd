"""Streaming statistics per task group, in constant memory.

A :class:`Stream` keeps count, mean and variance (Welford's update, numerically stable), min,
max and three quantiles (median, p90, p99) estimated with the P² algorithm of Jain and
Chlamtac (1985): five markers per quantile, adjusted by piecewise-parabolic interpolation as
values arrive, so memory stays constant however many tasks a group holds. Below five values the
quantiles are exact.

A :class:`TagStats` is what shoal keeps for each tag: counts by state, a stream for run times, one
for queue waits (ready until started), and one per result field the user tracks.
"""

from __future__ import annotations

import math
from typing import Any

QUANTILES = (0.5, 0.9, 0.99)


class Quantile:
    """One P² estimator of the ``p`` quantile."""

    __slots__ = ("dn", "heights", "p", "pos", "want")

    def __init__(self, p: float) -> None:
        self.p = p
        self.heights: list[float] = []  # the first five values, then the marker heights
        self.pos = [1.0, 2.0, 3.0, 4.0, 5.0]
        self.want = [1.0, 1 + 2 * p, 1 + 4 * p, 3 + 2 * p, 5.0]
        self.dn = (0.0, p / 2, p, (1 + p) / 2, 1.0)

    def add(self, x: float) -> None:
        q = self.heights
        if len(q) < 5:
            q.append(x)
            q.sort()
            return
        if x < q[0]:
            q[0] = x
            k = 0
        elif x >= q[4]:
            q[4] = x
            k = 3
        else:
            k = 0
            while x >= q[k + 1]:
                k += 1
        n = self.pos
        for i in range(k + 1, 5):
            n[i] += 1
        want, dn = self.want, self.dn
        for i in range(5):
            want[i] += dn[i]
        for i in (1, 2, 3):
            d = want[i] - n[i]
            if (d >= 1 and n[i + 1] - n[i] > 1) or (d <= -1 and n[i - 1] - n[i] < -1):
                s = 1 if d > 0 else -1
                guess = q[i] + s / (n[i + 1] - n[i - 1]) * (
                    (n[i] - n[i - 1] + s) * (q[i + 1] - q[i]) / (n[i + 1] - n[i])
                    + (n[i + 1] - n[i] - s) * (q[i] - q[i - 1]) / (n[i] - n[i - 1])
                )
                if not q[i - 1] < guess < q[i + 1]:  # parabola overshoots: go linear
                    guess = q[i] + s * (q[i + s] - q[i]) / (n[i + s] - n[i])
                q[i] = guess
                n[i] += s

    def value(self) -> float:
        q = self.heights
        if not q:
            return math.nan
        if len(q) < 5 or self.pos[4] <= 5:  # exact while the buffer holds every value
            rank = self.p * (len(q) - 1)
            lo = math.floor(rank)
            hi = min(lo + 1, len(q) - 1)
            return q[lo] + (q[hi] - q[lo]) * (rank - lo)
        return q[2]


class Stream:
    """Count, mean, variance, min, max and approximate quantiles of a stream of numbers."""

    __slots__ = ("count", "m2", "max", "mean", "min", "quantiles")

    def __init__(self) -> None:
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.min = math.inf
        self.max = -math.inf
        self.quantiles = tuple(Quantile(p) for p in QUANTILES)

    def add(self, x: float) -> None:
        self.count += 1
        delta = x - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (x - self.mean)
        if x < self.min:
            self.min = x
        if x > self.max:
            self.max = x
        for q in self.quantiles:
            q.add(x)

    @property
    def var(self) -> float:
        """Sample variance (n - 1 in the denominator); nan below two values."""
        return self.m2 / (self.count - 1) if self.count > 1 else math.nan

    @property
    def std(self) -> float:
        return math.sqrt(self.var) if self.count > 1 else math.nan

    def quantile(self, p: float) -> float:
        """The estimate for ``p`` (one of 0.5, 0.9, 0.99)."""
        for q in self.quantiles:
            if q.p == p:
                return q.value()
        known = ", ".join(str(q) for q in QUANTILES)
        raise ValueError(f"quantile {p} is not tracked; shoal tracks {known}")

    @property
    def median(self) -> float:
        return self.quantiles[0].value()

    def summary(self) -> dict[str, float | int | None]:
        """Plain numbers for JSON (None where there is no value yet)."""

        def clean(x: float) -> float | None:
            return None if math.isnan(x) or math.isinf(x) else round(x, 6)

        out: dict[str, float | int | None] = {"count": self.count}
        out["mean"] = clean(self.mean) if self.count else None
        out["std"] = clean(self.std)
        out["min"] = clean(self.min)
        out["max"] = clean(self.max)
        for q in self.quantiles:
            out[f"p{round(q.p * 100):d}"] = clean(q.value())
        return out


class TagStats:
    """What shoal knows about the tasks of one tag: counts by state and streams of numbers."""

    __slots__ = ("counts", "fields", "runtime", "wait")

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.runtime = Stream()
        self.wait = Stream()
        self.fields: dict[str, Stream] = {}

    def moved(self, old: str | None, new: str) -> None:
        c = self.counts
        if old is not None:
            c[old] -= 1
        c[new] = c.get(new, 0) + 1

    def stream(self, name: str) -> Stream:
        """``runtime``, ``wait`` or a tracked result field."""
        if name == "runtime":
            return self.runtime
        if name == "wait":
            return self.wait
        s = self.fields.get(name)
        if s is None:
            s = self.fields[name] = Stream()
        return s

    def __getitem__(self, name: str) -> Stream:
        return self.stream(name)

    def count(self, state: str) -> int:
        return self.counts.get(state, 0)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> dict[str, Any]:
        return {
            "counts": {k: v for k, v in sorted(self.counts.items()) if v},
            "runtime": self.runtime.summary(),
            "wait": self.wait.summary(),
            "fields": {k: s.summary() for k, s in sorted(self.fields.items())},
        }
