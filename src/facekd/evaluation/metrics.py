"""Score-level metrics: ROC, TAR at FAR, AUC, and open-set identification (TPIR at FPIR, rank-k).

Conventions (scores: higher = more similar; labels: 1 genuine, 0 impostor):

- ``tar_at_far`` is insightface's IJB reading: the ROC point whose FPR is nearest the target;
  among points at that FPR the largest TPR (insightface flips the curve before ``argmin`` for
  exactly this), and between two equally near FPRs the larger one. It reads the full curve
  (``drop_intermediate=False``). insightface itself reads sklearn's default curve, which drops
  collinear points; on a flat stretch of the curve that can move its reading by at most one
  vertical step of the ROC. Targets below ``1 / num_impostors`` return NaN: no threshold can
  measure a FAR that small.
- ``tar_at_far_strict`` is the conservative reading (MFR): the largest TPR over thresholds whose
  FAR <= target (NaN below ``1 / num_impostors`` as well).
- Both are computed from the sorted genuine and impostor scores with binary search, which is
  exact (equal to reading sklearn's ``roc_curve``) and costs one sort: IJB-C's 15.7M scores take
  well under a second, against several seconds for ``roc_curve``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from facekd.errors import ConfigError, DataError


def rate_key(metric: str, rate: float) -> str:
    """Metric name for a rate, e.g. ``rate_key("tar@far", 1e-4) == "tar@far=1e-4"``."""
    text = np.format_float_scientific(rate, trim="-", exp_digits=1)
    return f"{metric}={text.replace('e+', 'e')}"


def _split(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Check shapes and labels; return (genuine, impostor) scores."""
    scores = np.asarray(scores)
    labels = np.asarray(labels)
    if scores.ndim != 1 or scores.shape != labels.shape:
        raise DataError(f"scores {scores.shape} and labels {labels.shape} must be 1-D and of equal length")
    if not np.isfinite(scores).all():
        bad = int(np.flatnonzero(~np.isfinite(scores))[0])
        raise DataError(f"score {bad} is {scores[bad]}: every score must be finite")
    genuine = labels == 1
    if not (genuine | (labels == 0)).all():
        bad = int(np.flatnonzero(~(genuine | (labels == 0)))[0])
        raise DataError(f"label {bad} is {labels[bad]!r}: labels must be 1 (genuine) or 0 (impostor)")
    return scores[genuine], scores[~genuine]


@dataclass(frozen=True)
class SortedScores:
    """Genuine and impostor scores sorted once; every ROC reading is a binary search on them.

    A ROC point is reachable at ``c`` false accepts when some threshold accepts exactly ``c``
    impostors (ties make some counts unreachable). The best TPR at ``c`` accepts every genuine
    score above the ``(c+1)``-th highest impostor score.
    """

    genuine: np.ndarray  # (n_g,) ascending
    impostor: np.ndarray  # (n_i,) ascending

    @classmethod
    def from_scores(cls, scores: np.ndarray, labels: np.ndarray) -> SortedScores:
        """Build from scores and 0/1 labels (both classes must be present)."""
        return cls.from_split(*_split(scores, labels))

    @classmethod
    def from_split(cls, genuine: np.ndarray, impostor: np.ndarray) -> SortedScores:
        """Build from separate genuine and impostor score arrays."""
        genuine, impostor = np.ravel(genuine), np.ravel(impostor)
        if genuine.size == 0 or impostor.size == 0:
            raise DataError(
                f"ROC needs genuine and impostor scores; got {genuine.size} genuine and {impostor.size} impostor"
            )
        return cls(np.sort(genuine), np.sort(impostor))

    @property
    def num_genuine(self) -> int:
        return int(self.genuine.size)

    @property
    def num_impostor(self) -> int:
        return int(self.impostor.size)

    @property
    def lowest_supported_far(self) -> float:
        """The smallest nonzero FAR one can measure: one false accept."""
        return 1.0 / self.num_impostor

    def _above(self, values: np.ndarray, sorted_scores: np.ndarray, *, inclusive: bool) -> np.ndarray:
        """How many of ``sorted_scores`` are > ``values`` (>= when inclusive)."""
        side = "left" if inclusive else "right"
        return sorted_scores.size - np.searchsorted(sorted_scores, values, side=side)

    def tpr_at_count(self, counts: np.ndarray) -> np.ndarray:
        """Best TPR with ``counts`` (reachable) false accepts."""
        counts = np.asarray(counts, dtype=np.int64)
        n_i = self.num_impostor
        # (c+1)-th highest impostor; all genuine above it are accepted. c == n_i accepts everything.
        cut = self.impostor[np.clip(n_i - 1 - counts, 0, n_i - 1)]
        tp = np.where(counts >= n_i, self.num_genuine, self._above(cut, self.genuine, inclusive=False))
        return tp / self.num_genuine

    def _reachable_below(self, counts: np.ndarray) -> np.ndarray:
        """Largest reachable false-accept count <= ``counts``."""
        n_i = self.num_impostor
        cut = self.impostor[np.clip(n_i - 1 - counts, 0, n_i - 1)]
        # The tie block holding the (c+1)-th highest impostor starts after every score above it.
        return np.where(counts >= n_i, n_i, self._above(cut, self.impostor, inclusive=False))

    def _reachable_above(self, counts: np.ndarray) -> np.ndarray:
        """Smallest reachable false-accept count >= ``counts``."""
        n_i = self.num_impostor
        below = self._reachable_below(counts)
        cut = self.impostor[np.clip(n_i - counts, 0, n_i - 1)]  # the c-th highest impostor
        block_end = self._above(cut, self.impostor, inclusive=True)  # count accepted with its whole tie block
        return np.where((below == counts) | (counts <= 0), counts.clip(0), block_end)

    def _floor_counts(self, fars: np.ndarray) -> np.ndarray:
        """Largest integer c with ``c / n_i <= far``, in the same float arithmetic as a ROC's FPR."""
        n_i = self.num_impostor
        c = np.floor(fars * n_i).astype(np.int64)
        c = np.where((c + 1) / n_i <= fars, c + 1, c)
        c = np.where(c / n_i > fars, c - 1, c)
        return c.clip(0, n_i)

    def _targets(self, fars: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        targets = np.asarray(list(fars), dtype=np.float64)
        if targets.ndim != 1 or not np.isfinite(targets).all() or (targets < 0).any():
            raise ConfigError(f"FAR targets must be finite and >= 0, got {list(fars)}")
        return targets, targets < self.lowest_supported_far

    def tar_at_far(self, fars: Sequence[float]) -> dict[float, float]:
        """insightface reading: TPR at the reachable FPR nearest each target (NaN if unsupported)."""
        targets, unsupported = self._targets(fars)
        n_i = self.num_impostor
        floor = self._floor_counts(targets)
        low = self._reachable_below(floor)
        ceil = np.where(floor / n_i == targets, floor, np.minimum(floor + 1, n_i))
        high = self._reachable_above(ceil)
        # Ties in distance go to the larger FPR, as insightface's flipped argmin does.
        pick = np.where(np.abs(high / n_i - targets) <= np.abs(low / n_i - targets), high, low)
        tar = np.where(unsupported, np.nan, self.tpr_at_count(pick))
        return {float(f): float(t) for f, t in zip(targets, tar, strict=True)}

    def tar_at_far_strict(self, fars: Sequence[float]) -> dict[float, float]:
        """Largest TPR over thresholds with FAR <= target (NaN if unsupported)."""
        targets, unsupported = self._targets(fars)
        counts = self._reachable_below(self._floor_counts(targets))
        tar = np.where(unsupported, np.nan, self.tpr_at_count(counts))
        return {float(f): float(t) for f, t in zip(targets, tar, strict=True)}

    def threshold_at_far(self, fars: Sequence[float]) -> dict[float, float]:
        """Decision threshold per target FAR: call a pair "same" when its score is > the threshold.

        It accepts the most impostors that stay within the target (FAR <= target) and, with them,
        exactly the genuine pairs ``tar_at_far_strict`` counts. NaN below ``1 / num_impostors``.
        """
        targets, unsupported = self._targets(fars)
        n_i = self.num_impostor
        counts = self._floor_counts(targets)
        # Accepting scores above the (c+1)-th highest impostor accepts at most c impostors (fewer
        # on ties); c == n_i accepts every score, so the cut goes just below the lowest one.
        cut = np.where(counts >= n_i, np.nextafter(self.impostor[0], -np.inf),
                       self.impostor[np.clip(n_i - 1 - counts, 0, n_i - 1)])
        threshold = np.where(unsupported, np.nan, cut)
        return {float(f): float(t) for f, t in zip(targets, threshold, strict=True)}

    def auc(self) -> float:
        """Area under the ROC (Mann-Whitney: P(genuine > impostor) + P(tie) / 2)."""
        below = np.searchsorted(self.impostor, self.genuine, side="left").sum(dtype=np.float64)
        not_above = np.searchsorted(self.impostor, self.genuine, side="right").sum(dtype=np.float64)
        return float((below + not_above) / 2.0 / (self.num_genuine * float(self.num_impostor)))

    def roc_curve(self) -> tuple[np.ndarray, np.ndarray]:
        """Exact ROC polygon (fpr, tpr) with only its corners: <= 2 * distinct genuine scores + 2 points.

        For each distinct genuine score v (highest first) the curve reaches (#imp > v, #gen > v) by
        a horizontal step, then (#imp >= v, #gen >= v) (vertical, or diagonal where impostors tie
        with v). Same area and same corners as sklearn's curve, at IJB-C scale in milliseconds.
        """
        values, counts = np.unique(self.genuine, return_counts=True)
        values, counts = values[::-1], counts[::-1]  # highest first
        n_i = self.num_impostor
        gen_ge = np.cumsum(counts)
        imp_gt = n_i - np.searchsorted(self.impostor, values, side="right")
        imp_ge = n_i - np.searchsorted(self.impostor, values, side="left")
        fps = np.concatenate([[0], np.stack([imp_gt, imp_ge], axis=1).ravel(), [n_i]])
        tps = np.concatenate([[0], np.stack([gen_ge - counts, gen_ge], axis=1).ravel(), [self.num_genuine]])
        return fps / n_i, tps / self.num_genuine

    def roc_envelope(self, fars: np.ndarray) -> np.ndarray:
        """Strict TPR at each FAR in ``fars`` (vectorised; for plotting a huge ROC cheaply)."""
        fars = np.asarray(fars, dtype=np.float64)
        return self.tpr_at_count(self._reachable_below(self._floor_counts(fars)))


def tar_at_far(scores: np.ndarray, labels: np.ndarray, fars: Sequence[float]) -> dict[float, float]:
    """TAR at the ROC point nearest each target FAR (insightface IJB convention; NaN if unsupported)."""
    return SortedScores.from_scores(scores, labels).tar_at_far(fars)


def tar_at_far_strict(scores: np.ndarray, labels: np.ndarray, fars: Sequence[float]) -> dict[float, float]:
    """Largest TAR with FAR <= each target (conservative; NaN below 1 / num_impostors)."""
    return SortedScores.from_scores(scores, labels).tar_at_far_strict(fars)


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve."""
    return SortedScores.from_scores(scores, labels).auc()


def verification_report(sorted_scores: SortedScores, fars: Sequence[float]) -> dict[str, float | int]:
    """``{"tar@far=1e-4": ..., "auc": ..., "num_genuine": ..., "num_impostor": ...}``."""
    report: dict[str, float | int] = {
        rate_key("tar@far", far): tar for far, tar in sorted_scores.tar_at_far(fars).items()
    }
    report["auc"] = sorted_scores.auc()
    report["num_genuine"] = sorted_scores.num_genuine
    report["num_impostor"] = sorted_scores.num_impostor
    return report


def threshold_report(sorted_scores: SortedScores, fars: Sequence[float]) -> dict[str, float]:
    """``{"threshold@far=1e-3": ...}``: the score above which a pair is "same" at each FAR."""
    return {rate_key("threshold@far", far): t for far, t in sorted_scores.threshold_at_far(fars).items()}


# ---------------------------------------------------------------- open-set identification (1:N)


@dataclass(frozen=True)
class OpenSetStats:
    """Per-probe statistics of a probe x gallery similarity matrix.

    A probe is mated when its subject has a gallery entry. Its genuine score is its best score
    against its subject's entries; its rank is 1 + the number of other subjects' entries scoring
    at least as high (ties count against it, as insightface's ``pos > neg.max()`` does).
    """

    mated: np.ndarray  # (P,) bool
    rank: np.ndarray  # (P,) int64, meaningful where mated
    genuine: np.ndarray  # (P,) best mated score, -inf where not mated
    top: np.ndarray  # (P,) best score over the whole gallery

    @property
    def nonmated_top(self) -> np.ndarray:
        return self.top[~self.mated]


def open_set_stats(similarity: np.ndarray, probe_ids: np.ndarray, gallery_ids: np.ndarray) -> OpenSetStats:
    """Mated flags, ranks, genuine and top scores for every probe (vectorised over the matrix)."""
    similarity = np.asarray(similarity)
    probe_ids, gallery_ids = np.asarray(probe_ids), np.asarray(gallery_ids)
    if similarity.shape != (probe_ids.size, gallery_ids.size):
        raise DataError(
            f"similarity {similarity.shape} must be (probes, gallery) = ({probe_ids.size}, {gallery_ids.size})"
        )
    if gallery_ids.size == 0 or probe_ids.size == 0:
        raise DataError(f"1:N needs probes and a gallery; got {probe_ids.size} probes, {gallery_ids.size} gallery")
    same = probe_ids[:, None] == gallery_ids[None, :]  # (P, G) probe subject == gallery subject
    genuine = np.where(same, similarity, -np.inf).max(axis=1)  # (P,)
    mated = same.any(axis=1)
    impostor = np.where(same, -np.inf, similarity)  # (P, G) other subjects only
    rank = 1 + (impostor >= genuine[:, None]).sum(axis=1)
    return OpenSetStats(mated=mated, rank=rank, genuine=genuine, top=similarity.max(axis=1))


def rank_counts(stats: OpenSetStats, ks: Sequence[int]) -> dict[int, int]:
    """How many mated probes have their subject within the top k."""
    mated_rank = stats.rank[stats.mated]
    return {int(k): int((mated_rank <= k).sum()) for k in ks}


def tpir_values(stats: OpenSetStats, fpirs: Sequence[float]) -> dict[float, float]:
    """TPIR at each FPIR, insightface's rule (see ``tpir_at_fpir``)."""
    targets = np.asarray(list(fpirs), dtype=np.float64)
    if targets.ndim != 1 or not ((targets > 0) & (targets <= 1)).all():
        raise ConfigError(f"FPIR targets must be in (0, 1], got {list(fpirs)}")
    nonmated = np.sort(stats.nonmated_top)[::-1]  # (n_nm,) highest first
    n_mated = int(stats.mated.sum())
    if nonmated.size == 0 or n_mated == 0:
        return {float(f): math.nan for f in targets}
    thresholds = nonmated[np.ceil(nonmated.size * targets).astype(np.int64) - 1]  # (F,)
    hit = stats.mated & (stats.rank == 1)  # (P,) identified at rank 1
    tp = (hit[None, :] & (stats.genuine[None, :] > thresholds[:, None])).sum(axis=1)
    return {float(f): float(t) / n_mated for f, t in zip(targets, tp, strict=True)}


def rank_k(
    similarity: np.ndarray, probe_ids: np.ndarray, gallery_ids: np.ndarray, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Closed-set identification rate ``{"rank1": ..., "rank5": ...}`` over the mated probes."""
    stats = open_set_stats(similarity, probe_ids, gallery_ids)
    n_mated = int(stats.mated.sum())
    if n_mated == 0:
        raise DataError("rank-k needs at least one probe whose subject is in the gallery")
    return {f"rank{k}": c / n_mated for k, c in rank_counts(stats, ks).items()}


def tpir_at_fpir(
    similarity: np.ndarray, probe_ids: np.ndarray, gallery_ids: np.ndarray, fpirs: Sequence[float]
) -> dict[float, float]:
    """Open-set TPIR at each FPIR.

    Non-mated probes (subject not in the gallery) give the false-alarm scores: their top gallery
    score. As in insightface's IJB 1:N code, the threshold is the ``ceil(n_nonmated * fpir)``-th
    highest of them and a mated probe counts when it is ranked first *and* its genuine score is
    strictly above the threshold; so targets below ``1 / n_nonmated`` read at FPIR 0. NaN when
    there are no non-mated probes (closed set).
    """
    return tpir_values(open_set_stats(similarity, probe_ids, gallery_ids), fpirs)
