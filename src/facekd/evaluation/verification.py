"""Pair verification on insightface's ``.bin`` sets (LFW, CFP-FP, AgeDB-30, CALFW, CPLFW).

Protocol (insightface ``verification.py``): flip-summed, L2-normalised embeddings; squared L2
distance per pair; a pair is predicted "same" when ``distance < threshold``; 10 contiguous folds
(sklearn ``KFold`` without shuffling); per fold the threshold with the best accuracy on the other
9 folds (first one on ties, as ``np.argmax``) is applied to the held-out fold. Accuracy is the
mean of the fold accuracies and its spread their (population) std.

Every fold x threshold count comes from one ``searchsorted`` + ``bincount`` + ``cumsum``: each
pair lands in the bin of the first threshold above its distance, so the cumulative count at
threshold j is the number of pairs with ``distance < thresholds[j]``.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from facekd.errors import ConfigError, DataError
from facekd.evaluation.metrics import SortedScores, rate_key

DEFAULT_THRESHOLDS = np.arange(0, 4, 0.01)


def pair_embeddings(emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split (2N, d) embeddings of consecutive pairs into the two sides, each (N, d)."""
    emb = np.asarray(emb)
    if emb.ndim != 2 or emb.shape[0] % 2:
        raise DataError(f"pair embeddings must be (2N, d) with pairs at rows 2i, 2i+1; got shape {emb.shape}")
    return emb[0::2], emb[1::2]


def fold_ids(n: int, n_folds: int) -> np.ndarray:
    """(n,) fold of each pair: contiguous folds, the first ``n % n_folds`` one longer.

    The folds of sklearn's ``KFold(shuffle=False)`` (tested against it), without importing sklearn:
    its import costs ~2.5 CPU-s in every evaluate stage process, for what is one ``np.repeat``.
    """
    sizes = np.full(n_folds, n // n_folds, dtype=np.int64)
    sizes[: n % n_folds] += 1
    return np.repeat(np.arange(n_folds, dtype=np.int64), sizes)


def _check_inputs(
    emb_a: np.ndarray, emb_b: np.ndarray, issame: np.ndarray, n_folds: int, thresholds: np.ndarray
) -> None:
    if emb_a.ndim != 2 or emb_a.shape != emb_b.shape:
        raise DataError(f"the two sides must both be (N, d); got {emb_a.shape} and {emb_b.shape}")
    if issame.shape != (emb_a.shape[0],):
        raise DataError(f"issame has {issame.shape} entries for {emb_a.shape[0]} pairs")
    if not 2 <= n_folds <= emb_a.shape[0]:
        raise ConfigError(f"n_folds must be between 2 and the number of pairs ({emb_a.shape[0]}), got {n_folds}")
    if thresholds.ndim != 1 or thresholds.size == 0 or (np.diff(thresholds) <= 0).any():
        raise ConfigError("thresholds must be a non-empty, strictly increasing 1-D array")


def _same_counts(
    dist: np.ndarray, issame: np.ndarray, fold: np.ndarray, n_folds: int, thresholds: np.ndarray
) -> np.ndarray:
    """(F, 2, T) pairs with ``dist < thresholds[j]`` per fold, split by label (0 different, 1 same)."""
    n_t = thresholds.size
    first_above = np.searchsorted(thresholds, dist.astype(np.float64), side="right")  # (N,) in 0..T
    flat = (fold * 2 + issame) * (n_t + 1) + first_above
    hist = np.bincount(flat, minlength=n_folds * 2 * (n_t + 1)).reshape(n_folds, 2, n_t + 1)
    return np.cumsum(hist, axis=2)[:, :, :n_t]


def fold_accuracy(
    dist: np.ndarray, issame: np.ndarray, *, n_folds: int = 10, thresholds: np.ndarray = DEFAULT_THRESHOLDS
) -> tuple[np.ndarray, np.ndarray]:
    """(per-fold test accuracy (F,), per-fold best train threshold (F,)) from pair distances."""
    issame = np.asarray(issame).astype(np.int64)
    fold = fold_ids(dist.size, n_folds)
    accepted = _same_counts(dist, issame, fold, n_folds, thresholds)  # (F, 2, T)
    fold_pos = np.bincount(fold, weights=issame, minlength=n_folds).astype(np.int64)  # (F,)
    fold_size = np.bincount(fold, minlength=n_folds)
    fold_neg = fold_size - fold_pos
    # correct = true accepts + true rejects, per fold (F, T); train = all folds minus the fold.
    correct = accepted[:, 1, :] + (fold_neg[:, None] - accepted[:, 0, :])
    train_correct = correct.sum(axis=0, keepdims=True) - correct  # (F, T)
    best = np.argmax(train_correct, axis=1)  # (F,) same argmax as on accuracies: one denominator per fold
    test_acc = correct[np.arange(n_folds), best] / fold_size
    return test_acc, thresholds[best]


def verification_metrics(
    emb_a: np.ndarray,
    emb_b: np.ndarray,
    issame: np.ndarray,
    *,
    n_folds: int = 10,
    thresholds: np.ndarray = DEFAULT_THRESHOLDS,
    fars: Sequence[float] = (1e-3, 1e-2),
) -> dict[str, float]:
    """10-fold accuracy (mean, std), mean best threshold, TAR@FAR and AUC of one pair set.

    ``emb_a``/``emb_b`` are (N, d) flip-summed, L2-normalised embeddings of the two sides.
    TAR@FAR uses the insightface nearest-point reading (``metrics.tar_at_far``) on ``-distance``
    over all pairs (NaN where the FAR is below 1 / number of different-identity pairs).
    """
    emb_a, emb_b = np.asarray(emb_a), np.asarray(emb_b)
    issame = np.asarray(issame).astype(bool)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    _check_inputs(emb_a, emb_b, issame, n_folds, thresholds)
    dist = np.sum(np.square(emb_a - emb_b), axis=1)  # (N,) squared L2, as insightface computes it
    acc, best = fold_accuracy(dist, issame, n_folds=n_folds, thresholds=thresholds)
    result = {
        "accuracy": float(np.mean(acc)),
        "accuracy_std": float(np.std(acc)),
        "best_threshold": float(np.mean(best)),
    }
    scores = SortedScores.from_split(-dist[issame], -dist[~issame])
    result.update({rate_key("tar@far", f): t for f, t in scores.tar_at_far(fars).items()})
    result["auc"] = scores.auc()
    return result
