"""Masked-face verification, ICCV21-MFR style: masked probes against unmasked gallery images.

Every probe is compared with every gallery image (cosine); pairs of the same identity are genuine,
the rest impostors. The metric is the conservative TAR at FAR <= ``far`` (MFR's rule). A small
embedded set cannot measure FAR 1e-4 when it has fewer than 10,000 impostor pairs, so the report
also gives the lowest FAR it can measure (one false accept) and the TAR there.
"""
from __future__ import annotations

import numpy as np

from facekd.errors import DataError
from facekd.evaluation.metrics import SortedScores, rate_key


def _unit(emb: np.ndarray, what: str) -> np.ndarray:
    emb = np.asarray(emb, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] == 0:
        raise DataError(f"{what} embeddings must be a non-empty (n, d) array; got shape {emb.shape}")
    return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), np.finfo(np.float32).tiny)


def _masked_scores(
    probe_emb: np.ndarray, probe_ids: np.ndarray, gallery_emb: np.ndarray, gallery_ids: np.ndarray
) -> SortedScores:
    probes, gallery = _unit(probe_emb, "probe"), _unit(gallery_emb, "gallery")
    probe_ids, gallery_ids = np.asarray(probe_ids), np.asarray(gallery_ids)
    if probe_ids.shape != (probes.shape[0],) or gallery_ids.shape != (gallery.shape[0],):
        raise DataError(
            f"ids {probe_ids.shape} / {gallery_ids.shape} must match the embeddings' rows "
            f"{probes.shape[0]} / {gallery.shape[0]}"
        )
    if probes.shape[1] != gallery.shape[1]:
        raise DataError(f"probe and gallery embeddings differ in width: {probes.shape[1]} vs {gallery.shape[1]}")
    similarity = probes @ gallery.T  # (P, G) cosine
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
