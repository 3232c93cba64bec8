"""10-fold .bin verification: identical to a loop written after insightface's calculate_roc."""
from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.model_selection import KFold

from facekd.errors import ConfigError, DataError
from facekd.evaluation import verification
from facekd.evaluation.verification import DEFAULT_THRESHOLDS, fold_accuracy, pair_embeddings, verification_metrics


def _reference(dist, issame, thresholds, n_folds=10):
    """Per-fold accuracy and best threshold, one threshold at a time (insightface's loop)."""

    def accuracy(threshold, d, same):
        predict = np.less(d, threshold)
        tp = np.sum(predict & same)
        tn = np.sum(~predict & ~same)
        return float(tp + tn) / d.size

    accs, best = [], []
    for train, test in KFold(n_splits=n_folds, shuffle=False).split(np.arange(len(dist))):
        acc_train = np.zeros(len(thresholds))
        for i, t in enumerate(thresholds):
            acc_train[i] = accuracy(t, dist[train], issame[train])
        j = np.argmax(acc_train)
        best.append(thresholds[j])
        accs.append(accuracy(thresholds[j], dist[test], issame[test]))
    return np.array(accs), np.array(best)


def _embeddings(n, d, rng, noise):
    """Unit embeddings of n pairs, same pairs being noisy copies."""
    a = rng.normal(size=(n, d)).astype(np.float32)
    issame = rng.random(n) < 0.5
    b = np.where(issame[:, None], a + noise * rng.normal(size=(n, d)), rng.normal(size=(n, d))).astype(np.float32)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    return a, b, issame


@pytest.mark.parametrize(("n", "noise"), [(600, 1.0), (613, 1.6), (47, 2.5)])
def test_accuracy_identical_to_reference_loop(n, noise):
    a, b, issame = _embeddings(n, 32, np.random.default_rng(n), noise)
    dist = np.sum(np.square(a - b), axis=1)
    ref_acc, ref_best = _reference(dist, issame, DEFAULT_THRESHOLDS)
    got = verification_metrics(a, b, issame)
    assert got["accuracy"] == np.mean(ref_acc)
    assert got["accuracy_std"] == np.std(ref_acc)
    assert got["best_threshold"] == np.mean(ref_best)
    assert 0.5 < got["accuracy"] < 1.0  # not a trivial set


def test_distances_on_the_threshold_grid():
    # Distances equal to grid values test the strict "dist < threshold" and first-argmax ties.
    rng = np.random.default_rng(0)
    thresholds = np.arange(0, 4, 0.01)
    dist = thresholds[rng.integers(50, 250, 500)]
    issame = (dist + rng.normal(scale=0.6, size=500)) < 1.5
    acc, best = fold_accuracy(dist, issame, n_folds=10, thresholds=thresholds)
    ref_acc, ref_best = _reference(dist, issame, thresholds)
    np.testing.assert_array_equal(acc, ref_acc)
    np.testing.assert_array_equal(best, ref_best)


def test_perfect_separation_and_tar():
    rng = np.random.default_rng(1)
    a, b, issame = _embeddings(400, 64, rng, 0.05)
    got = verification_metrics(a, b, issame, fars=(1e-2, 1e-4))
    assert got["accuracy"] == 1.0 and got["accuracy_std"] == 0.0
    assert got["tar@far=1e-2"] == 1.0 and got["auc"] == 1.0
    assert math.isnan(got["tar@far=1e-4"])  # ~200 impostor pairs cannot measure 1e-4


def test_pair_embeddings_splits_consecutive_rows():
    emb = np.arange(12, dtype=np.float32).reshape(6, 2)
    a, b = pair_embeddings(emb)
    np.testing.assert_array_equal(a, emb[[0, 2, 4]])
    np.testing.assert_array_equal(b, emb[[1, 3, 5]])
    with pytest.raises(DataError, match="2N"):
        pair_embeddings(emb[:5])


def test_bad_inputs():
    a = np.zeros((20, 4), np.float32)
    with pytest.raises(DataError, match="issame"):
        verification_metrics(a, a, np.zeros(19, bool))
    with pytest.raises(ConfigError, match="increasing"):
        verification_metrics(a, a, np.zeros(20, bool), thresholds=np.array([0.5, 0.1]))
    with pytest.raises(ConfigError, match="n_folds"):
        verification_metrics(a, a, np.zeros(20, bool), n_folds=21)


@pytest.mark.parametrize("n_folds", [2, 3, 10])
@pytest.mark.parametrize("n", [10, 11, 19, 600, 6007])
def test_fold_ids_are_sklearn_kfold(n, n_folds):
    expected = np.empty(n, dtype=np.int64)
    for fold, (_, test) in enumerate(KFold(n_splits=n_folds, shuffle=False).split(np.arange(n))):
        expected[test] = fold
    np.testing.assert_array_equal(verification.fold_ids(n, n_folds), expected)
