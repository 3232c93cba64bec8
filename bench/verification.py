"""Target 5: 10-fold pair verification against insightface's ``verification.py`` on the same embeddings.

Embeddings: an LFW-sized set (6,000 pairs of 512-d flip-summed, L2-normalised embeddings, half
genuine), float64 as insightface's ``test()`` builds them. The reference is written here following
insightface's ``evaluate()``: squared L2 distance; 10 contiguous folds (``KFold`` without
shuffling); per fold, a Python loop over the 400 thresholds ``arange(0, 4, 0.01)`` scoring the
training folds, ``argmax`` for the best, then every threshold again on the test fold (the ROC) and
the best one for the fold's accuracy; then ``calculate_val`` (VAL@FAR=1e-3 over 4,000 thresholds
per fold, interpolated). facekd's side is ``verification_metrics`` (accuracy, std, best threshold,
TAR@FAR, AUC). A second line times the accuracy alone: ``fold_accuracy`` against ``calculate_roc``.

Target: >= 10x faster, with identical fold accuracies (mean and std bit for bit).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bench import common

LIMIT = 10.0


@dataclass(frozen=True)
class Scale:
    pairs: int
    dim: int
    repeats: int
    val_step: float = 0.001  # calculate_val's threshold step (insightface: 0.001; coarser in quick runs)


LFW = Scale(pairs=6_000, dim=512, repeats=5)
QUICK = Scale(pairs=400, dim=32, repeats=1, val_step=0.01)


def synthetic_pairs(scale: Scale, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(2N, d) unit embeddings with pairs at rows 2i, 2i+1 (genuine pairs correlated), and issame (N,)."""
    rng = np.random.default_rng(seed)
    issame = np.arange(scale.pairs) % 2 == 0  # alternating, like the .bin sets' blocks
    a = rng.standard_normal((scale.pairs, scale.dim))
    noise = rng.standard_normal((scale.pairs, scale.dim))
    # genuine: a plus 3-12x as much noise (cosine ~0.08-0.3, overlapping the impostors' ~0 +- 1/sqrt(d))
    b = np.where(issame[:, None], a + rng.uniform(3.0, 12.0, (scale.pairs, 1)) * noise, noise)
    emb = np.empty((2 * scale.pairs, scale.dim))
    emb[0::2], emb[1::2] = a, b
    return emb / np.linalg.norm(emb, axis=1, keepdims=True), issame


# ---- the reference: insightface verification.py, rewritten ------------------------------------


def _accuracy(threshold: float, dist: np.ndarray, issame: np.ndarray) -> tuple[float, float, float]:
    """(tpr, fpr, accuracy) of predicting "same" where dist < threshold."""
    predict = np.less(dist, threshold)
    tp = np.sum(np.logical_and(predict, issame))
    fp = np.sum(np.logical_and(predict, np.logical_not(issame)))
    tn = np.sum(np.logical_and(np.logical_not(predict), np.logical_not(issame)))
    fn = np.sum(np.logical_and(np.logical_not(predict), issame))
    tpr = 0.0 if tp + fn == 0 else float(tp) / float(tp + fn)
    fpr = 0.0 if fp + tn == 0 else float(fp) / float(fp + tn)
    return tpr, fpr, float(tp + tn) / dist.size


def _folds(n: int, n_folds: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import KFold

    return list(KFold(n_splits=n_folds, shuffle=False).split(np.arange(n)))


def reference_roc(thresholds: np.ndarray, emb1: np.ndarray, emb2: np.ndarray, issame: np.ndarray,
                  n_folds: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """insightface calculate_roc (no PCA): mean test tpr (T,), fpr (T,), per-fold accuracy (F,)."""
    n_t = len(thresholds)
    tprs, fprs, accuracy = np.zeros((n_folds, n_t)), np.zeros((n_folds, n_t)), np.zeros(n_folds)
    dist = np.sum(np.square(np.subtract(emb1, emb2)), 1)
    for f, (train, test) in enumerate(_folds(len(issame), n_folds)):
        acc_train = np.zeros(n_t)
        for j, threshold in enumerate(thresholds):
            _, _, acc_train[j] = _accuracy(threshold, dist[train], issame[train])
        best = np.argmax(acc_train)
        for j, threshold in enumerate(thresholds):
            tprs[f, j], fprs[f, j], _ = _accuracy(threshold, dist[test], issame[test])
        _, _, accuracy[f] = _accuracy(thresholds[best], dist[test], issame[test])
    return np.mean(tprs, 0), np.mean(fprs, 0), accuracy


def _val_far(threshold: float, dist: np.ndarray, issame: np.ndarray) -> tuple[float, float]:
    predict = np.less(dist, threshold)
    true_accept = np.sum(np.logical_and(predict, issame))
    false_accept = np.sum(np.logical_and(predict, np.logical_not(issame)))
    return float(true_accept) / float(np.sum(issame)), float(false_accept) / float(np.sum(np.logical_not(issame)))


def reference_val(thresholds: np.ndarray, emb1: np.ndarray, emb2: np.ndarray, issame: np.ndarray,
                  far_target: float, n_folds: int = 10) -> tuple[float, float, float]:
    """insightface calculate_val: (VAL mean, VAL std, FAR mean) at the threshold interpolated to far_target."""
    from scipy import interpolate

    val, far = np.zeros(n_folds), np.zeros(n_folds)
    dist = np.sum(np.square(np.subtract(emb1, emb2)), 1)
    for f, (train, test) in enumerate(_folds(len(issame), n_folds)):
        far_train = np.zeros(len(thresholds))
        for j, threshold in enumerate(thresholds):
            _, far_train[j] = _val_far(threshold, dist[train], issame[train])
        if np.max(far_train) >= far_target:
            # "linear" = insightface's "slinear" (both first order); this scipy refuses repeated x for "slinear"
            threshold = interpolate.interp1d(far_train, thresholds, kind="linear")(far_target)
        else:
            threshold = 0.0
        val[f], far[f] = _val_far(threshold, dist[test], issame[test])
    return float(np.mean(val)), float(np.std(val)), float(np.mean(far))


def reference_evaluate(emb: np.ndarray, issame: np.ndarray, val_step: float = 0.001) -> np.ndarray:
    """insightface evaluate(): ROC + per-fold accuracy, then VAL@FAR=1e-3; returns the fold accuracies."""
    emb1, emb2 = emb[0::2], emb[1::2]
    _, _, accuracy = reference_roc(np.arange(0, 4, 0.01), emb1, emb2, issame)
    reference_val(np.arange(0, 4, val_step), emb1, emb2, issame, 1e-3)
    return accuracy


# ---- facekd -----------------------------------------------------------------------------------------


def facekd_metrics(emb: np.ndarray, issame: np.ndarray) -> dict[str, float]:
    from facekd.evaluation.verification import pair_embeddings, verification_metrics

    return verification_metrics(*pair_embeddings(emb), issame)


def facekd_accuracy(emb: np.ndarray, issame: np.ndarray) -> np.ndarray:
    from facekd.evaluation.verification import fold_accuracy

    dist = np.sum(np.square(emb[0::2] - emb[1::2]), axis=1)
    return fold_accuracy(dist, issame)[0]


def _run(quick: bool) -> list[common.Result]:
    import scipy.interpolate  # noqa: F401 - imports are not what is timed
    import sklearn.model_selection  # noqa: F401

    import facekd.evaluation.verification  # noqa: F401

    scale = QUICK if quick else LFW
    emb, issame = synthetic_pairs(scale)
    kept: dict = {}  # the last output of each timed side, for the comparison
    warmup = 0 if quick else 1
    full = common.interleaved({"facekd": lambda: kept.update(ours=facekd_metrics(emb, issame)),
                               "reference": lambda: kept.update(ref=reference_evaluate(emb, issame, scale.val_step))},
                              scale.repeats, warmup)
    roc = common.interleaved({"facekd": lambda: kept.update(ours_folds=facekd_accuracy(emb, issame)),
                              "reference": lambda: kept.update(ref_roc=reference_roc(
                                  np.arange(0, 4, 0.01), emb[0::2], emb[1::2], issame))},
                             scale.repeats, warmup)
    ours, ref_acc = kept["ours"], kept["ref"]
    same = ours["accuracy"] == float(np.mean(ref_acc)) and ours["accuracy_std"] == float(np.std(ref_acc))
    same_folds = bool(np.array_equal(kept["ours_folds"], kept["ref_roc"][2]))
    common.note(f"{scale.pairs} pairs, {scale.dim}-d: accuracy facekd {ours['accuracy']:.6f} +- {ours['accuracy_std']:.6f}, "
                f"reference {np.mean(ref_acc):.6f} +- {np.std(ref_acc):.6f}")
    out = []
    for case, t, what, identical in (("evaluate", full, "verification_metrics vs insightface evaluate()", same),
                                     ("accuracy-only", roc, "fold_accuracy vs calculate_roc", same_folds)):
        detail, speed_up = common.compare("reference", t["reference"], "facekd", t["facekd"])
        out.append(common.emit(common.Result("verification", case, detail, speed_up, what="speed-up", op=">=",
                                             limit=LIMIT, identical=identical, note=f"{what}, {scale.pairs} pairs")))
    return out


def run(quick: bool = False) -> list[common.Result]:
    """Measure this target (tiny sizes with ``quick``: a correctness check, not a measurement)."""
    return common.measure(_run, quick)


if __name__ == "__main__":
    common.module_main(__doc__, run)
