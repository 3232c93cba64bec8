"""Masked-face verification, ICCV21-MFR style: masked probes against unmasked gallery images.

Every probe is compared with every gallery image (cosine); pairs of the same identity are genuine,
the rest impostors. The metric is the conservative TAR at FAR <= ``far`` (MFR's rule). A small
embedded set cannot measure FAR 1e-4 when it has fewer than 10,000 impostor pairs, so the report
also gives the lowest FAR it can measure (one false accept) and the TAR there.

The interval of TAR at FAR <= ``far`` resamples identities as the gate's intervals do
(:mod:`facekd.evaluation.uncertainty`): an identity drawn ``k`` times counts each of its genuine
pairs ``k`` times, and an impostor pair of identities drawn ``k`` and ``l`` times counts ``k * l``
times. Only the highest impostors can set a threshold at FAR 1e-4, so a resample reads its weighted
threshold off the top of the impostors sorted once, and the whole list only when that top is not
enough; the reading is exact either way.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from facekd.errors import DataError
from facekd.evaluation.metrics import SortedScores, rate_key

if TYPE_CHECKING:
    from facekd.config import BootstrapParams


def _unit(emb: np.ndarray, what: str) -> np.ndarray:
    emb = np.asarray(emb, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] == 0:
        raise DataError(f"{what} embeddings must be a non-empty (n, d) array; got shape {emb.shape}")
    return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), np.finfo(np.float32).tiny)


def _similarity(
    probe_emb: np.ndarray, probe_ids: np.ndarray, gallery_emb: np.ndarray, gallery_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(P, G) cosine of every probe to every gallery image, with the checked ids of both sides."""
    probes, gallery = _unit(probe_emb, "probe"), _unit(gallery_emb, "gallery")
    probe_ids, gallery_ids = np.asarray(probe_ids), np.asarray(gallery_ids)
    if probe_ids.shape != (probes.shape[0],) or gallery_ids.shape != (gallery.shape[0],):
        raise DataError(
            f"ids {probe_ids.shape} / {gallery_ids.shape} must match the embeddings' rows "
            f"{probes.shape[0]} / {gallery.shape[0]}"
        )
    if probes.shape[1] != gallery.shape[1]:
        raise DataError(f"probe and gallery embeddings differ in width: {probes.shape[1]} vs {gallery.shape[1]}")
    return probes @ gallery.T, probe_ids, gallery_ids


def _masked_scores(
    probe_emb: np.ndarray, probe_ids: np.ndarray, gallery_emb: np.ndarray, gallery_ids: np.ndarray
) -> SortedScores:
    similarity, probe_ids, gallery_ids = _similarity(probe_emb, probe_ids, gallery_emb, gallery_ids)
    same = probe_ids[:, None] == gallery_ids[None, :]  # (P, G) genuine pairs
    return SortedScores.from_split(similarity[same], similarity[~same])


def masked_verification(
    probe_emb: np.ndarray,
    probe_ids: np.ndarray,
    gallery_emb: np.ndarray,
    gallery_ids: np.ndarray,
    far: float = 1e-4,
) -> dict[str, float | int]:
    """All probe x gallery cosine pairs; TAR at FAR <= ``far`` and at the lowest supported FAR.

    Returns ``{"tar@far<=1e-4": ... (NaN when 1e-4 < 1 / num_impostor), "far": 1e-4,
    "lowest_supported_far": 1 / num_impostor, "tar@lowest_supported_far": ..., "auc": ...,
    "num_genuine": ..., "num_impostor": ...}``.
    """
    scores = _masked_scores(probe_emb, probe_ids, gallery_emb, gallery_ids)
    lowest = scores.lowest_supported_far
    strict = scores.tar_at_far_strict([far, lowest])
    return {
        rate_key("tar@far<", far): strict[float(far)],  # "tar@far<=1e-4"
        "far": float(far),
        "lowest_supported_far": lowest,
        "tar@lowest_supported_far": strict[lowest],
        "auc": scores.auc(),
        "num_genuine": scores.num_genuine,
        "num_impostor": scores.num_impostor,
    }


def masked_roc(
    probe_emb: np.ndarray, probe_ids: np.ndarray, gallery_emb: np.ndarray, gallery_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) corners of the probe x gallery ROC."""
    return _masked_scores(probe_emb, probe_ids, gallery_emb, gallery_ids).roc_curve()


# Impostors read first per resample: enough that a resample's threshold is among them (else it reads all)
TOP_IMPOSTORS = 4096
TOP_PER_FALSE_ACCEPT = 64  # and this many more per false accept the target allows


@dataclass(frozen=True)
class _WeightedPairs:
    """Probe x gallery pairs sorted once, with the identity (code) of each side, for resampling."""

    genuine: np.ndarray  # (n_g,) ascending scores
    genuine_code: np.ndarray  # (n_g,) identity of each
    impostor: np.ndarray  # (n_i,) descending scores
    impostor_codes: np.ndarray  # (n_i, 2) identity of the probe and of the gallery side
    probes_of: np.ndarray  # (S,) probes per identity
    gallery_of: np.ndarray  # (S,) gallery images per identity

    @classmethod
    def of(cls, similarity: np.ndarray, probe_ids: np.ndarray, gallery_ids: np.ndarray) -> _WeightedPairs:
        _, codes = np.unique(np.concatenate([probe_ids, gallery_ids]), return_inverse=True)
        pc, gc = codes[:probe_ids.size], codes[probe_ids.size:]
        n = int(codes.max()) + 1
        same = pc[:, None] == gc[None, :]  # (P, G)
        rows, cols = np.nonzero(same)
        order = np.argsort(similarity[rows, cols], kind="stable")
        irows, icols = np.nonzero(~same)
        scores = similarity[irows, icols]
        down = np.argsort(-scores, kind="stable")
        return cls(similarity[rows, cols][order], pc[rows][order], scores[down],
                   np.stack([pc[irows][down], gc[icols][down]], axis=1),
                   np.bincount(pc, minlength=n), np.bincount(gc, minlength=n))

    def strict_tar(self, drawn: np.ndarray, far: float) -> float:
        """TAR at FAR <= ``far`` with pairs counted by identity multiplicity ``drawn`` (S,); NaN when
        the resample has no genuine pair or too few impostors to measure ``far``."""
        genuine_w = drawn[self.genuine_code].astype(np.float64)  # (n_g,)
        # every probe x gallery pair of two drawn identities, minus the same-identity (genuine) ones
        impostors = float(drawn @ self.probes_of) * float(drawn @ self.gallery_of) \
            - float(np.sum(drawn.astype(np.float64) ** 2 * self.probes_of * self.gallery_of))
        if genuine_w.sum() == 0 or impostors == 0 or far < 1.0 / impostors:
            return math.nan
        allowed = _allowed(far, impostors)
        top = min(self.impostor.size, TOP_IMPOSTORS + TOP_PER_FALSE_ACCEPT * allowed)
        while True:
            codes = self.impostor_codes[:top]
            accepted = np.cumsum(drawn[codes[:, 0]] * drawn[codes[:, 1]])  # (top,) impostors at or above each
            first_over = int(np.searchsorted(accepted, allowed, side="right"))  # the (allowed+1)-th, weighted
            if first_over < top or top == self.impostor.size:
                break
            top = self.impostor.size
        if first_over == self.impostor.size:  # the target admits every impostor
            return 1.0
        cut = self.impostor[first_over]  # accept scores above it: its tie block stays out
        above = int(np.searchsorted(self.genuine, cut, side="right"))
        return float(genuine_w[above:].sum() / genuine_w.sum())


def _allowed(far: float, impostors: float) -> int:
    """The most false accepts ``c`` with ``c / impostors <= far`` in float arithmetic, as a ROC's FPR
    is computed (``SortedScores``' rule), so an unresampled reading equals the point value."""
    c = math.floor(far * impostors)
    if (c + 1) / impostors <= far:
        c += 1
    return c - 1 if c / impostors > far else c


def masked_interval(
    probe_emb: np.ndarray, probe_ids: np.ndarray, gallery_emb: np.ndarray, gallery_ids: np.ndarray,
    far: float, cfg: BootstrapParams,
) -> tuple[float, float]:
    """Interval of TAR at FAR <= ``far`` by bootstrap over identities (see the module's docstring)."""
    from facekd.evaluation.uncertainty import identity_interval

    pairs = _WeightedPairs.of(*_similarity(probe_emb, probe_ids, gallery_emb, gallery_ids))
    n = pairs.probes_of.size
    return identity_interval(n, lambda draws: pairs.strict_tar(np.bincount(draws, minlength=n), far), cfg)
