"""Bootstrap over identities: weights, intervals, paired differences, gap closed (issue 16)."""
from __future__ import annotations

import numpy as np
import pytest

from facekd.errors import DataError
from facekd.evaluation.metrics import SortedScores
from facekd.config import BootstrapParams
from facekd.evaluation.uncertainty import (
    pair_identities,
    pair_weights,
    paired_study,
    roc_bands,
    share_interval,
)


def _tar(s: SortedScores) -> float:
    return s.tar_at_far([1e-2])[1e-2]


def _study_data(n_ids: int, seed: int = 0, shifts=(("teacher", 2.5), ("none", 1.0), ("good", 2.0), ("same", 1.0))):
    """Genuine pairs (two per identity) and impostors across identities; each identity has its own
    difficulty, shared by every model (what makes pairs of one identity dependent)."""
    rng = np.random.default_rng(seed)
    ids = np.arange(n_ids)
    genuine = np.stack([np.repeat(ids, 2)] * 2, axis=1)
    impostor = rng.integers(0, n_ids, (40 * n_ids, 2))
    impostor = impostor[impostor[:, 0] != impostor[:, 1]]
    subjects = np.concatenate([genuine, impostor])
    labels = np.r_[np.ones(len(genuine), int), np.zeros(len(impostor), int)]
    hard = rng.normal(0, 0.7, n_ids)[subjects[:, 0]]
    noise = rng.normal(size=len(labels))
    scores = {name: labels * (shift + hard) + noise + 0.01 * rng.normal(size=len(labels)) * (name != "same")
              for name, shift in shifts}
    scores["same"] = scores["none"].copy()
    return subjects, labels, scores


def test_pair_weights_count_each_drawn_identity():
    subjects = np.array([[0, 0], [1, 1], [0, 1], [1, 2], [2, 2]])
    draws = np.array([0, 0, 2])  # identity 0 twice, 2 once, 1 never
    np.testing.assert_array_equal(pair_weights(subjects, draws, 3), [2, 0, 0, 0, 1])
    draws = np.array([0, 1, 1])
    np.testing.assert_array_equal(pair_weights(subjects, draws, 3), [1, 2, 2, 0, 0])


def test_intervals_hold_the_value_shrink_with_identities_and_repeat_with_the_seed():
    small = paired_study(*_study_data(40), _tar, baseline="none", teacher="teacher", n_resamples=200)
    large = paired_study(*_study_data(640), _tar, baseline="none", teacher="teacher", n_resamples=200)
    for study in (small, large):
        for row in study.models.values():
            assert row.low <= row.value <= row.high
    width = lambda s: s.models["good"].high - s.models["good"].low  # noqa: E731
    assert width(large) < 0.5 * width(small)
    again = paired_study(*_study_data(40), _tar, baseline="none", teacher="teacher", n_resamples=200)
    assert again == small


def test_paired_difference_marks_a_real_gain_and_not_an_identical_model():
    study = paired_study(*_study_data(300), _tar, baseline="none", teacher="teacher", n_resamples=300)
    assert study.vs_baseline["good"].excludes_zero() and study.vs_baseline["good"].low > 0
    same = study.vs_baseline["same"]
    assert (same.value, same.low, same.high) == (0.0, 0.0, 0.0) and not same.excludes_zero()
    assert study.gap_closed["teacher"] == study.gap_closed["teacher"].__class__(1.0, 1.0, 1.0)
    assert 0.0 < study.gap_closed["good"].value < 1.0 and "none" not in study.gap_closed
    assert study.identities == 300


def test_paired_intervals_are_narrower_than_the_models_own():
    """Shared hard identities move both models alike: their difference varies less than either."""
    study = paired_study(*_study_data(200), _tar, baseline="none", teacher="teacher", n_resamples=300)
    diff = study.vs_baseline["good"]
    own = study.models["good"]
    assert diff.high - diff.low < own.high - own.low + study.models["none"].high - study.models["none"].low


@pytest.mark.parametrize("broken", ["genuine_across_ids", "short_scores", "no_baseline", "subjects_shape"])
def test_inconsistent_inputs_are_refused(broken):
    subjects, labels, scores = _study_data(20)
    if broken == "genuine_across_ids":
        subjects = subjects.copy()
        subjects[0, 1] = 5
    elif broken == "short_scores":
        scores["good"] = scores["good"][:-1]
    elif broken == "no_baseline":
        scores.pop("none")
    else:
        subjects = subjects[:, :1]
    with pytest.raises(DataError):
        paired_study(subjects, labels, scores, _tar, baseline="none", teacher="teacher", n_resamples=10)


def test_pair_identities_join_templates_by_genuine_pairs_and_subjects():
    pairs = np.array([[10, 11], [11, 12], [20, 21], [10, 20], [30, 31], [12, 30]])
    labels = np.array([1, 1, 0, 0, 0, 0])
    ids = pair_identities(pairs, labels)
    assert ids[0, 0] == ids[0, 1] == ids[1, 1]  # 10 ~ 11 ~ 12 by genuine pairs
    assert len({ids[2, 0], ids[2, 1], ids[0, 0], ids[4, 0], ids[4, 1]}) == 5  # 20, 21, 30, 31 on their own
    joined = pair_identities(pairs, labels, {20: 7, 21: 7, 31: 8})
    assert joined[2, 0] == joined[2, 1] and joined[4, 0] != joined[4, 1]
    assert joined.shape == pairs.shape and joined.min() == 0


FARS = np.geomspace(1e-3, 1.0, 12)


def test_roc_bands_hold_the_curve_shrink_with_identities_and_repeat_for_a_copy():
    bands = {}
    for n_ids in (40, 640):
        subjects, labels, scores = _study_data(n_ids)
        bands[n_ids] = roc_bands(subjects, labels, scores, FARS, n_resamples=200)
        for name, band in bands[n_ids].items():
            point = np.fromiter(SortedScores.from_scores(scores[name], labels).tar_at_far(FARS).values(), float)
            assert band.far.tolist() == sorted(FARS) and (band.low <= band.high).all()
            assert np.mean((band.low <= point) & (point <= band.high)) >= 0.9, name
        same, none = bands[n_ids]["same"], bands[n_ids]["none"]
        np.testing.assert_array_equal(same.low, none.low)  # a copy of a model: the same resamples, the same band
        np.testing.assert_array_equal(same.high, none.high)
    width = lambda b: np.nanmean(b["good"].high - b["good"].low)  # noqa: E731
    assert width(bands[640]) < 0.5 * width(bands[40])
    subjects, labels, scores = _study_data(40)
    again = roc_bands(subjects, labels, scores, FARS, n_resamples=200)
    np.testing.assert_array_equal(again["good"].low, bands[40]["good"].low)


def test_share_interval_resamples_identities_not_trials():
    """One identity's trials move together: 20 identities that always hit and 20 that always miss
    give a wide interval, 2,000 independent-looking trials of them notwithstanding."""
    cfg = BootstrapParams(resamples=400)
    subjects = np.repeat(np.arange(40), 50)
    hits = subjects < 20
    low, high = share_interval(subjects, hits, cfg)
    assert low < 0.5 < high and high - low > 0.2
    trials = np.arange(2000)  # the same hits as independent identities: a narrow interval
    t_low, t_high = share_interval(trials, hits, cfg)
    assert t_high - t_low < 0.1 and t_low < 0.5 < t_high
    assert share_interval(subjects, np.ones(2000, bool), cfg) == (1.0, 1.0)
    assert share_interval(subjects, hits, cfg) == (low, high)
