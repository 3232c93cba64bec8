"""Tied ranks from bootstrap intervals and seeds (facekd.evaluation.ranking)."""
from __future__ import annotations

import math

import pytest

from facekd.evaluation.ranking import Evidence, seed_summary, shown_better, tied_ranks


def test_overlapping_intervals_are_a_tie_whatever_the_seeds():
    a, b = Evidence(0.20, 0.30, (0.30, 0.31, 0.32)), Evidence(0.10, 0.21, (0.10, 0.11, 0.12))
    assert not shown_better(a, b) and not shown_better(b, a)
    assert tied_ranks({"a": a, "b": b}) == {"a": 1, "b": 1}


def test_apart_intervals_rank_with_one_seed_but_need_the_seeds_to_agree_with_several():
    high, low = Evidence(0.30, 0.40), Evidence(0.10, 0.20)
    assert shown_better(high, low) and not shown_better(low, high)
    noisy_high = Evidence(0.30, 0.40, (0.35, 0.05, 0.30))  # training noise as large as the gap
    steady_low = Evidence(0.10, 0.20, (0.15, 0.14, 0.16))
    assert not shown_better(noisy_high, steady_low)
    steady_high = Evidence(0.30, 0.40, (0.35, 0.34, 0.36))
    assert shown_better(steady_high, steady_low)


def test_ranks_are_one_plus_the_students_shown_better_so_ties_share_a_rank():
    students = {"a": Evidence(0.50, 0.60), "b": Evidence(0.45, 0.55), "c": Evidence(0.30, 0.48),
                "d": Evidence(0.10, 0.20)}
    # a over c and d; b ties a and c; c over d.
    assert tied_ranks(students) == {"a": 1, "b": 1, "c": 2, "d": 4}


def test_missing_intervals_rank_nothing():
    unknown = Evidence(math.nan, math.nan)
    assert tied_ranks({"a": Evidence(0.5, 0.6), "b": unknown}) == {"a": 1, "b": 1}


@pytest.mark.parametrize(("values", "expected"), [
    ([0.2, 0.3, 0.4], (0.3, 0.1, 3)),
    ([0.2, math.nan], (0.2, math.nan, 1)),
    ([], (math.nan, math.nan, 0)),
])
def test_seed_summary(values, expected):
    mean, sd, n = seed_summary(values)
    assert n == expected[2]
    for got, want in ((mean, expected[0]), (sd, expected[1])):
        assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want)
