"""ROC readings, AUC and open-set identification against hand-built answers and reference loops."""
from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from facekd.errors import ConfigError, DataError
from facekd.evaluation import metrics

# Hand-built set: 10 impostors at 0.0 .. 0.9, 5 genuine scores.
IMPOSTOR = np.arange(10) / 10
GENUINE = np.array([0.95, 0.85, 0.55, 0.35, 0.05])
SCORES = np.concatenate([GENUINE, IMPOSTOR])
LABELS = np.concatenate([np.ones(5, int), np.zeros(10, int)])


def test_golden_nearest_and_strict():
    # FAR 0.1 = one false accept (0.9): genuine above 0.8 -> 2/5. FAR 0.36: nearest reachable is
    # 0.4 (4 false accepts, genuine above 0.5 -> 3/5) but strictly only 0.3 is allowed (-> 2/5).
    near = metrics.tar_at_far(SCORES, LABELS, [0.1, 0.34, 0.36, 1.0])
    strict = metrics.tar_at_far_strict(SCORES, LABELS, [0.1, 0.34, 0.36, 1.0])
    assert near == {0.1: 0.4, 0.34: 0.4, 0.36: 0.6, 1.0: 1.0}
    assert strict == {0.1: 0.4, 0.34: 0.4, 0.36: 0.4, 1.0: 1.0}


def test_unsupported_far_is_nan():
    near = metrics.tar_at_far(SCORES, LABELS, [0.05, 0.0])
    strict = metrics.tar_at_far_strict(SCORES, LABELS, [0.05])
    assert all(math.isnan(v) for v in near.values())
    assert math.isnan(strict[0.05])
    assert metrics.SortedScores.from_scores(SCORES, LABELS).lowest_supported_far == 0.1


def test_golden_ties_make_counts_unreachable():
    # Three impostors tie at 0.5: 1 or 2 false accepts cannot be reached, only 0, 3 or 4.
    scores = np.array([0.9, 0.5, 0.5, 0.5, 0.5, 0.1])
    labels = np.array([1, 1, 0, 0, 0, 0])
    assert metrics.tar_at_far_strict(scores, labels, [0.25, 0.5, 0.75]) == {0.25: 0.5, 0.5: 0.5, 0.75: 1.0}
    # nearest to 0.25 is FPR 0 (TAR 0.5); nearest to 0.5 is FPR 0.75 (the tied genuine comes along).
    assert metrics.tar_at_far(scores, labels, [0.25, 0.5]) == {0.25: 0.5, 0.5: 1.0}


def _sklearn_nearest(scores, labels, fars):
    """insightface's table reading on the full sklearn curve: flip, then nearest FPR."""
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    fpr, tpr = np.flipud(fpr), np.flipud(tpr)  # largest TPR first among equal FPRs
    n_imp = (labels == 0).sum()
    return {f: (math.nan if f < 1 / n_imp else float(tpr[np.argmin(np.abs(fpr - f))])) for f in fars}


def _sklearn_strict(scores, labels, fars):
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    n_imp = (labels == 0).sum()
    return {f: (math.nan if f < 1 / n_imp else float(tpr[fpr <= f].max())) for f in fars}


@pytest.mark.parametrize("levels", [7, 40, 0])
def test_readings_equal_sklearn_curve(levels):
    rng = np.random.default_rng(levels)
    for _ in range(15):
        n = int(rng.integers(20, 400))
        labels = rng.integers(0, 2, n)
        labels[:2] = [0, 1]
        raw = rng.random(n) + 0.3 * labels
        scores = np.round(raw * levels) / levels if levels else raw  # quantised -> many ties
        n_imp = int((labels == 0).sum())
        fars = [*rng.random(6), 1 / n_imp, 2 / n_imp, 0.5 / n_imp, 1.0, 3 / n_imp]
        got_near = metrics.tar_at_far(scores, labels, fars)
        got_strict = metrics.tar_at_far_strict(scores, labels, fars)
        for f, ref in _sklearn_nearest(scores, labels, fars).items():
            assert got_near[f] == ref or (math.isnan(ref) and math.isnan(got_near[f]))
        for f, ref in _sklearn_strict(scores, labels, fars).items():
            assert got_strict[f] == ref or (math.isnan(ref) and math.isnan(got_strict[f]))
        assert metrics.roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


@pytest.mark.parametrize("levels", [5, 0])
def test_compact_roc_curve_has_sklearn_corners_and_area(levels):
    rng = np.random.default_rng(11 + levels)
    labels = rng.integers(0, 2, 3000)
    raw = rng.normal(size=3000) + 1.2 * labels
    scores = np.round(raw * levels) / levels if levels else raw
    fpr, tpr = metrics.SortedScores.from_scores(scores, labels).roc_curve()
    ref_fpr, ref_tpr, _ = roc_curve(labels, scores)  # sklearn's corners (drop_intermediate=True)
    assert len(fpr) <= 2 * len(np.unique(scores[labels == 1])) + 2
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert (np.diff(fpr) >= 0).all() and (np.diff(tpr) >= 0).all()
    # every sklearn point lies on our polygon: between the TPR reached before its FPR and at it
    for x, y in zip(ref_fpr, ref_tpr, strict=True):
        below = tpr[fpr < x].max(initial=0.0)
        assert below <= y <= tpr[fpr <= x].max()


def test_roc_envelope_matches_strict():
    s = metrics.SortedScores.from_scores(SCORES, LABELS)
    fars = np.array([0.1, 0.36, 1.0])
    np.testing.assert_array_equal(s.roc_envelope(fars), list(s.tar_at_far_strict(fars).values()))


@pytest.mark.parametrize(
    ("scores", "labels", "match"),
    [
        (np.array([0.1, 0.2]), np.array([1, 1]), "impostor"),
        (np.array([0.1, np.nan]), np.array([1, 0]), "finite"),
        (np.array([0.1, 0.2]), np.array([1, 2]), "label 1"),
        (np.array([0.1, 0.2]), np.array([1]), "equal length"),
    ],
)
def test_bad_scores_are_data_errors(scores, labels, match):
    with pytest.raises(DataError, match=match):
        metrics.tar_at_far(scores, labels, [0.1])


def test_bad_far_is_config_error():
    with pytest.raises(ConfigError):
        metrics.tar_at_far(SCORES, LABELS, [-0.1])


def test_rate_key():
    assert metrics.rate_key("tar@far", 1e-4) == "tar@far=1e-4"
    assert metrics.rate_key("tar@far", 0.1) == "tar@far=1e-1"
    assert metrics.rate_key("tpir@fpir", 2.5e-3) == "tpir@fpir=2.5e-3"
    assert metrics.rate_key("tar@far", 1.0) == "tar@far=1e0"


# ---------------------------------------------------------------- 1:N


def _reference_1n(sim, probe_ids, gallery_ids, fpirs, ks=(1, 5, 10)):
    """Written after insightface's IJB_evals.evaluation_1N: a loop over probes."""
    hits = dict.fromkeys(ks, 0)
    pos, neg, non = [], [], []
    for i, q in enumerate(probe_ids):
        if q in gallery_ids:
            g = np.argwhere(gallery_ids == q)[0, 0]
            order = np.argsort(sim[i])[::-1]
            for k in ks:
                hits[k] += g in order[:k]
            pos.append(sim[i][gallery_ids == q][0])
            neg.append(sim[i][gallery_ids != q])
        else:
            non.append(sim[i])
    pos, neg = np.array(pos), np.array(neg)
    correct = pos > neg.max(1)
    top_non = np.sort(np.array(non).max(1))[::-1]
    tpir = {}
    for f in fpirs:
        th = top_non[int(np.ceil(top_non.shape[0] * f)) - 1]
        tpir[f] = np.logical_and(correct, pos > th).sum() / pos.shape[0]
    return {k: v / len(pos) for k, v in hits.items()}, tpir


def test_open_set_equals_reference_loop():
    rng = np.random.default_rng(3)
    gallery_ids = rng.permutation(60)[:40]  # one entry per subject, 40 of 60 subjects
    probe_ids = rng.integers(0, 60, 300)  # about a third non-mated
    sim = rng.normal(size=(300, 40)).astype(np.float32)
    sim[probe_ids[:, None] == gallery_ids[None, :]] += 1.5
    fpirs = [0.01, 0.05, 0.1, 0.3, 1.0]
    ranks, tpir = _reference_1n(sim, probe_ids, gallery_ids, fpirs)
    assert metrics.rank_k(sim, probe_ids, gallery_ids) == {f"rank{k}": v for k, v in ranks.items()}
    assert metrics.tpir_at_fpir(sim, probe_ids, gallery_ids, fpirs) == pytest.approx(tpir, abs=0)


def test_open_set_golden():
    # probes 0,1 mated (subjects 7, 8); probe 2 (subject 9) non-mated with top score 0.6.
    sim = np.array([[0.9, 0.2], [0.5, 0.4], [0.6, 0.1]])
    probe_ids, gallery_ids = np.array([7, 8, 9]), np.array([7, 8])
    assert metrics.rank_k(sim, probe_ids, gallery_ids, ks=(1, 2)) == {"rank1": 0.5, "rank2": 1.0}
    # threshold 0.6: probe 0 (0.9, rank 1) counts; probe 1 is rank 2.
    assert metrics.tpir_at_fpir(sim, probe_ids, gallery_ids, [1.0]) == {1.0: 0.5}


def test_open_set_ties_count_against_the_probe():
    sim = np.array([[0.5, 0.5], [0.3, 0.1]])
    assert metrics.rank_k(sim, np.array([1, 5]), np.array([1, 2]), ks=(1,)) == {"rank1": 0.0}
    assert math.isnan(metrics.tpir_at_fpir(sim[:1], np.array([1]), np.array([1, 2]), [0.1])[0.1])


def test_open_set_shape_mismatch():
    with pytest.raises(DataError, match="similarity"):
        metrics.rank_k(np.zeros((2, 3)), np.array([1, 2]), np.array([1, 2]))
