"""95% intervals for verification metrics by bootstrap over identities, and paired comparisons.

Pairs of one identity are not independent (one hard identity fails many of its pairs), so the
resampling unit is the identity, as verification protocols require: a resample draws S of the S
identities with replacement, and each pair then counts ``m[a] * m[b]`` times, where ``m`` is how
often each of its identities was drawn (``m[a]`` for a genuine pair, whose two sides are one
identity). A pair whose identity was not drawn drops out; the metric is the same function of the
resampled pairs as of the original ones (pairs repeated by their weight), so the interval is of
exactly the reported number.

Every model is scored on the *same* resamples, so a difference between two models (``paired``)
and the share of the teacher-``none`` gap a student closes (``gap closed``) get intervals that
the models' shared hard identities do not widen. Resampling is scipy's ``stats.bootstrap``
(percentile intervals over a vector-valued statistic).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from facekd import layout
from facekd.errors import DataError
from facekd.evaluation.metrics import SortedScores

if TYPE_CHECKING:
    from facekd.config import BootstrapParams

log = logging.getLogger(__name__)

Metric = Callable[[SortedScores], float]  # e.g. lambda s: s.tar_at_far([1e-3])[1e-3]
# Per model, the scored 1:1 pairs of every IJB-style protocol with their identity clusters (written
# by the evaluate stage; read by the report and the register stages).


@dataclass(frozen=True)
class PairScores:
    """One model's scored verification pairs with the identity cluster of each side."""

    subjects: np.ndarray  # (P, 2) int identity cluster of each side
    labels: np.ndarray  # (P,) 1 genuine / 0 impostor
    scores: np.ndarray  # (P,) similarity

    def save(self, arrays: dict[str, np.ndarray], prefix: str) -> None:
        arrays.update({f"{prefix}.subjects": self.subjects, f"{prefix}.labels": self.labels,
                       f"{prefix}.scores": self.scores})

    @classmethod
    def load(cls, arrays: Mapping[str, np.ndarray], prefix: str) -> PairScores:
        return cls(*(np.asarray(arrays[f"{prefix}.{part}"]) for part in ("subjects", "labels", "scores")))


@dataclass(frozen=True)
class Interval:
    value: float  # the metric on the original pairs
    low: float
    high: float

    def excludes_zero(self) -> bool:
        return self.low > 0.0 or self.high < 0.0


@dataclass(frozen=True)
class PairedStudy:
    """Per model: its interval; against the baseline: the difference; and the gap closed."""

    models: dict[str, Interval]
    vs_baseline: dict[str, Interval]  # model - baseline, on the same resamples
    gap_closed: dict[str, Interval]  # (model - baseline) / (teacher - baseline)
    n_resamples: int
    identities: int
    contrasts: dict[str, Interval] = field(default_factory=dict)  # name -> a - b for the requested (a, b)


def pair_identities(pairs: np.ndarray, labels: np.ndarray,
                    subject_of: Mapping[int, int] | None = None) -> np.ndarray:
    """(P, 2) identity cluster of each side of each template pair, for the bootstrap.

    IJB's 1:1 list names templates, not subjects. Two templates are one identity when a genuine
    pair joins them or when the 1:N tables (``subject_of``: template -> subject) give them the same
    subject; a template in neither stays an identity of its own (a lower bound on the dependence).
    """
    pairs = np.asarray(pairs, dtype=np.int64)
    templates, index = np.unique(pairs, return_inverse=True)
    index = index.reshape(pairs.shape)
    parent = np.arange(templates.size)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def join(a: int, b: int) -> None:
        parent[root(a)] = root(b)

    for a, b in index[np.asarray(labels) == 1]:
        join(int(a), int(b))
    first_of_subject: dict[int, int] = {}
    for i, template in enumerate(templates):
        subject = (subject_of or {}).get(int(template))
        if subject is not None:
            join(i, first_of_subject.setdefault(subject, i))
    roots = np.array([root(i) for i in range(templates.size)])
    return np.unique(roots, return_inverse=True)[1][index]


def pair_weights(subjects: np.ndarray, draws: np.ndarray, n_subjects: int) -> np.ndarray:
    """(P,) how often each pair counts in a resample that drew identities ``draws`` (indices)."""
    drawn = np.bincount(draws, minlength=n_subjects)  # (S,) multiplicity of each identity
    a, b = drawn[subjects[:, 0]], drawn[subjects[:, 1]]
    return np.where(subjects[:, 0] == subjects[:, 1], a, a * b)


@dataclass(frozen=True)
class _Sorted:
    """One model's genuine and impostor scores sorted once, with the pair each came from."""

    genuine: np.ndarray  # (n_g,) ascending
    genuine_pair: np.ndarray  # (n_g,) pair index of each
    impostor: np.ndarray
    impostor_pair: np.ndarray

    @classmethod
    def of(cls, scores: np.ndarray, labels: np.ndarray) -> _Sorted:
        parts = []
        for kind in (1, 0):
            pairs = np.flatnonzero(labels == kind)
            order = pairs[np.argsort(scores[pairs], kind="stable")]
            parts += [scores[order], order]
        return cls(*parts)

    def resampled(self, weights: np.ndarray) -> SortedScores:
        """Each pair repeated by its weight: still sorted, so no sort per resample."""
        return SortedScores(np.repeat(self.genuine, weights[self.genuine_pair]),
                            np.repeat(self.impostor, weights[self.impostor_pair]))


def _check(subjects: np.ndarray, labels: np.ndarray, scores: Mapping[str, np.ndarray]) -> None:
    if subjects.ndim != 2 or subjects.shape[1] != 2 or subjects.shape[0] != labels.shape[0]:
        raise DataError(f"pair identities must be (P, 2) for P = {labels.shape[0]} pairs; got {subjects.shape}")
    genuine = labels == 1
    if not np.array_equal(subjects[genuine, 0], subjects[genuine, 1]):
        raise DataError("a genuine pair joins two different identities: the pair list and its labels disagree")
    for model, values in scores.items():
        if values.shape != labels.shape:
            raise DataError(f"model {model!r}: {values.shape[0]} scores for {labels.shape[0]} pairs")


def paired_study(subjects: np.ndarray, labels: np.ndarray, scores: Mapping[str, np.ndarray], metric: Metric, *,
                 baseline: str, teacher: str | None, n_resamples: int = 1000, confidence: float = 0.95,
                 seed: int = 0, contrasts: Mapping[str, tuple[str, str]] | None = None) -> PairedStudy:
    """Bootstrap ``metric`` of every model over identities, with differences to ``baseline``.

    ``subjects`` (P, 2) identity of each side of each pair, ``labels`` (P,) 1 genuine / 0
    impostor, ``scores`` model -> (P,) similarity. ``gap_closed`` is empty without ``teacher``.
    ``contrasts`` name -> (a, b): the difference a - b on the same resamples (an INT8 copy minus
    its float model). The resamples depend on the identities and the seed only, so the models'
    intervals are the same whatever else is in the study.
    """
    subjects, labels = np.asarray(subjects), np.asarray(labels)
    _check(subjects, labels, scores)
    names = list(scores)
    if baseline not in scores or (teacher is not None and teacher not in scores):
        raise DataError(f"the paired study needs scores of {baseline!r} and {teacher!r}; have {names}")
    contrasts = dict(contrasts or {})
    unknown = sorted({m for pair in contrasts.values() for m in pair} - set(names))
    if unknown:
        raise DataError(f"contrasts name models without scores: {unknown}; have {names}")
    _, codes = np.unique(subjects, return_inverse=True)
    codes = codes.reshape(subjects.shape)
    n_subjects = int(codes.max()) + 1
    with_gap = [n for n in names if n != baseline] if teacher is not None else []

    sorted_scores = {n: _Sorted.of(np.asarray(scores[n], dtype=np.float64), labels) for n in names}

    def statistic(draws: np.ndarray) -> np.ndarray:
        weights = pair_weights(codes, draws.astype(np.int64), n_subjects)
        resampled = {n: sorted_scores[n].resampled(weights) for n in names}
        if min(resampled[names[0]].num_genuine, resampled[names[0]].num_impostor) == 0:  # one kind of pair only
            return np.full(len(names) * 2 + len(with_gap) + len(contrasts), np.nan)
        return np.array(_vector({n: metric(r) for n, r in resampled.items()}, names, baseline, teacher, with_gap,
                                contrasts))

    point = {n: metric(SortedScores.from_scores(scores[n], labels)) for n in names}
    dist = _identity_bootstrap(n_subjects, statistic, n_resamples, confidence, seed)  # (K, n_resamples)
    low, high = _percentiles(dist, confidence)
    values = _vector(point, names, baseline, teacher, with_gap, contrasts)
    rows = [Interval(float(v), float(lo), float(hi)) for v, lo, hi in zip(values, low, high, strict=True)]
    k = len(names)
    return PairedStudy(models=dict(zip(names, rows[:k], strict=True)),
                       vs_baseline=dict(zip(names, rows[k:2 * k], strict=True)),
                       gap_closed=dict(zip(with_gap, rows[2 * k:2 * k + len(with_gap)], strict=True)),
                       n_resamples=n_resamples, identities=n_subjects,
                       contrasts=dict(zip(contrasts, rows[2 * k + len(with_gap):], strict=True)))


@dataclass(frozen=True)
class RocBand:
    """A pointwise interval of one model's ROC: TAR at each FAR of a grid, over identity resamples."""

    far: np.ndarray  # (F,) ascending
    low: np.ndarray  # (F,) TAR
    high: np.ndarray  # (F,) TAR


def roc_bands(subjects: np.ndarray, labels: np.ndarray, scores: Mapping[str, np.ndarray], fars: Sequence[float], *,
              n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict[str, RocBand]:
    """Per model, the ``confidence`` band of TAR@FAR (insightface's reading) at each of ``fars``.

    Same resampling as :func:`paired_study` (identities with replacement, one draw shared by all
    models); pointwise percentile intervals, so the band says how far each point of the curve can
    move, not where the whole curve lies at once.
    """
    subjects, labels = np.asarray(subjects), np.asarray(labels)
    _check(subjects, labels, scores)
    grid = np.sort(np.asarray(fars, dtype=np.float64))
    _, codes = np.unique(subjects, return_inverse=True)
    codes = codes.reshape(subjects.shape)
    n_subjects = int(codes.max()) + 1
    names = list(scores)
    sorted_scores = {n: _Sorted.of(np.asarray(scores[n], dtype=np.float64), labels) for n in names}

    def statistic(draws: np.ndarray) -> np.ndarray:
        weights = pair_weights(codes, draws.astype(np.int64), n_subjects)
        rows = []
        for n in names:
            resampled = sorted_scores[n].resampled(weights)
            if min(resampled.num_genuine, resampled.num_impostor) == 0:
                rows.append(np.full(grid.size, np.nan))
            else:
                rows.append(np.fromiter(resampled.tar_at_far(grid).values(), np.float64, grid.size))
        return np.concatenate(rows)

    low, high = _percentiles(_identity_bootstrap(n_subjects, statistic, n_resamples, confidence, seed), confidence)
    return {n: RocBand(grid, low[i * grid.size:(i + 1) * grid.size], high[i * grid.size:(i + 1) * grid.size])
            for i, n in enumerate(names)}


def identity_interval(n_subjects: int, statistic: Callable[[np.ndarray], float], cfg: BootstrapParams
                      ) -> tuple[float, float]:
    """The ``cfg.confidence`` percentile interval of one number over identity resamples.

    ``statistic(draws)`` reads the number off a resample that drew the identities ``draws`` (indices
    into ``range(n_subjects)``, with replacement); NaN where a resample cannot give it. Same
    resampling as :func:`paired_study`, for the leaderboard's metrics that are not 1:1 pairs
    (rank-1, the masked track). (NaN, NaN) when intervals are off (``cfg.resamples`` 0).
    """
    if cfg.resamples == 0 or n_subjects == 0:
        return math.nan, math.nan
    dist = _identity_bootstrap(n_subjects, lambda draws: np.array([statistic(draws.astype(np.int64))]),
                               cfg.resamples, cfg.confidence, cfg.seed)
    low, high = _percentiles(dist, cfg.confidence)
    return float(low[0]), float(high[0])


def share_interval(subjects: np.ndarray, hits: np.ndarray, cfg: BootstrapParams) -> tuple[float, float]:
    """Interval of the share of ``hits`` (e.g. rank-1 identification) over identity resamples.

    ``subjects`` (N,) identity of each trial, ``hits`` (N,) bool. A resample weights each trial by
    how often its identity was drawn, so an identity's trials move together.
    """
    _, codes = np.unique(np.asarray(subjects), return_inverse=True)
    n_subjects = int(codes.max()) + 1 if codes.size else 0
    trials = np.bincount(codes, minlength=n_subjects)  # (S,) trials per identity
    hit = np.bincount(codes, weights=np.asarray(hits, dtype=np.float64), minlength=n_subjects)  # (S,)

    def share(draws: np.ndarray) -> float:
        drawn = np.bincount(draws, minlength=n_subjects)
        total = drawn @ trials
        return float(drawn @ hit / total) if total else math.nan

    return identity_interval(n_subjects, share, cfg)


def _identity_bootstrap(n_subjects: int, statistic: Callable[[np.ndarray], np.ndarray], n_resamples: int,
                        confidence: float, seed: int) -> np.ndarray:
    """(K, n_resamples): the vector ``statistic`` of identity draws (indices, with replacement), by
    scipy's ``stats.bootstrap``; readings a resample cannot give are NaN, left out by :func:`_percentiles`."""
    import warnings

    from scipy.stats import bootstrap

    with warnings.catch_warnings():  # scipy warns about the NaN readings
        warnings.simplefilter("ignore")
        result = bootstrap((np.arange(n_subjects),), statistic, n_resamples=n_resamples, confidence_level=confidence,
                           method="percentile", vectorized=False, rng=np.random.default_rng(seed))
    return np.atleast_2d(result.bootstrap_distribution)


def _vector(values: Mapping[str, float], names: Sequence[str], baseline: str, teacher: str | None,
            with_gap: Sequence[str], contrasts: Mapping[str, tuple[str, str]] | None = None) -> list[float]:
    """[metric per model, model - baseline per model, gap closed per non-baseline model, a - b per contrast]."""
    diffs = [values[n] - values[baseline] for n in names]
    gap = values[teacher] - values[baseline] if teacher is not None else np.nan
    closed = [(values[n] - values[baseline]) / gap if gap else np.nan for n in with_gap]
    paired = [values[a] - values[b] for a, b in (contrasts or {}).values()]
    return [values[n] for n in names] + diffs + closed + paired


def _percentiles(dist: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval per row, ignoring resamples where a value is undefined (NaN)."""
    import warnings

    tail = (1.0 - confidence) / 2.0 * 100.0
    with warnings.catch_warnings():  # a row no resample can read (TAR@FAR below 1/impostors) is NaN, not a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanpercentile(dist, tail, axis=1), np.nanpercentile(dist, 100.0 - tail, axis=1)


def scored_pairs(root: Path, name: str, bench: str) -> PairScores | None:
    """``name``'s scored pairs of ``bench`` from ``root/<name>.npz``; None (logged) when absent."""
    path = root / f"{name}.npz"
    if not path.is_file():  # not evaluated, or evaluated before facekd saved scored pairs
        log.info("no scored pairs: %s is missing; rerun its evaluate stage", path)
        return None
    with np.load(path) as arrays:
        if f"{bench}.scores" not in arrays:
            log.info("no scored pairs: %s has none of %s", path, bench)
            return None
        return PairScores.load(arrays, bench)


def gate_study(models: tuple[str, ...], gate: str, cfg: BootstrapParams, baseline: str = "none",
               root: Path = layout.SCORES, *,
               contrasts: Mapping[str, tuple[str, str]] | None = None) -> PairedStudy | None:
    """The paired bootstrap of the gate metric over identities (a PairedStudy), or None.

    None when intervals are off, the gate is not a TAR@FAR reading of a benchmark whose scored
    pairs the evaluate stage saved, or ``baseline`` was not evaluated. The teacher (when evaluated)
    anchors the gap closed.
    ``contrasts`` name -> (a, b) adds the paired difference a - b (``study.contrasts``); a model
    named only there (an INT8 copy, ``<model>.int8``) is optional: without its scored pairs its
    contrast is left out and the study goes on.
    """
    bench, _, key = gate.partition(".")
    if cfg.resamples == 0 or not key.startswith("tar@far=") or baseline not in models:
        return None
    far = float(key.removeprefix("tar@far="))
    pairs = {}
    for name in models:
        found = scored_pairs(root, name, bench)
        if found is None:
            log.info("no intervals: rerun `dvc repro evaluate@%s`", name)
            return None
        pairs[name] = found
    kept = {}
    for label, (a, b) in (contrasts or {}).items():
        for name in (a, b):
            if name not in pairs and (found := scored_pairs(root, name, bench)) is not None:
                pairs[name] = found
        if a in pairs and b in pairs:
            kept[label] = (a, b)
    first = pairs[models[0]]
    for name, scored in pairs.items():
        if not (np.array_equal(scored.labels, first.labels) and np.array_equal(scored.subjects, first.subjects)):
            raise DataError(f"{root / f'{name}.npz'}: scored on other {bench} pairs than {models[0]}; "
                            "rerun `dvc repro` so every model is evaluated on the same data")
    return paired_study(first.subjects, first.labels, {n: p.scores for n, p in pairs.items()},
                        lambda s: s.tar_at_far([far])[far], baseline=baseline,
                        teacher="teacher" if "teacher" in pairs else None, n_resamples=cfg.resamples,
                        confidence=cfg.confidence, seed=cfg.seed, contrasts=kept)
