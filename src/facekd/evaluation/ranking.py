"""Ranks that show ties: a student is placed below another only when the evidence separates them.

Two kinds of noise move a student's gate metric: the evaluation sample (the bootstrap interval
over identities, :mod:`facekd.evaluation.uncertainty`) and training (the spread over seeds,
``distill.seeds``). Student A is *shown better* than B when their 95% intervals do not overlap
and, where both were trained under two seeds or more, Welch's t-test over their per-seed values
rejects equal means at 5%. A student's rank is 1 + the number of students shown better than it,
so students that nothing separates share a rank (the relation need not be transitive: A over C
while B ties both gives A and B rank 1, C rank 2).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

SIGNIFICANCE = 0.05
SEEDS_KEY = "seeds"  # in a student's eval metrics: its gate metric per training seed, {"0": 0.21, "1": 0.18}


@dataclass(frozen=True)
class Evidence:
    """One student: its gate metric's bootstrap interval and its values over training seeds."""

    low: float
    high: float
    seeds: tuple[float, ...] = ()


def seed_summary(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, sample standard deviation, n) of a student's per-seed values; NaNs (unsupported
    operating points) left out; sd is NaN below two seeds."""
    finite = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if not finite.size:
        return math.nan, math.nan, 0
    sd = float(finite.std(ddof=1)) if finite.size > 1 else math.nan
    return float(finite.mean()), sd, int(finite.size)


def shown_better(a: Evidence, b: Evidence, alpha: float = SIGNIFICANCE) -> bool:
    """A above B beyond both kinds of noise (see the module docstring)."""
    if not all(math.isfinite(v) for v in (a.low, a.high, b.low, b.high)) or a.low <= b.high:
        return False
    if len(a.seeds) < 2 or len(b.seeds) < 2:
        return True
    import warnings

    from scipy.stats import ttest_ind

    with warnings.catch_warnings():  # equal values over seeds: scipy warns, the p-value stays right
        warnings.simplefilter("ignore", RuntimeWarning)
        test = ttest_ind(a.seeds, b.seeds, equal_var=False, alternative="greater")
    return bool(np.isfinite(test.pvalue) and test.pvalue < alpha)


def tied_ranks(students: Mapping[str, Evidence]) -> dict[str, int]:
    """name -> 1 + the number of students shown better than it."""
    return {name: 1 + sum(shown_better(other, mine) for o, other in students.items() if o != name)
            for name, mine in students.items()}
