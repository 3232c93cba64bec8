"""IJB-B / IJB-C scoring from image features (insightface ``eval_ijbc.py`` protocol).

1:1: per image ``feat(img) + feat(flip)`` (``use_flip_feats``), optionally L2-normalised
(``norm``), times the detector's faceness score (``detector``); mean over the images of one
(template, media); sum over a template's medias; L2-normalise; cosine per template pair. insightface's
defaults are flip on, norm off, detector on.

1:N: each gallery (G1, G2 / S1, S2) is searched with every probe template: probes whose subject is
in that gallery are mated, the others non-mated. insightface reports the mean over the two
galleries: rank-k pooled over all mated searches, TPIR averaged over the galleries. Both the mean
and each gallery are returned.

Scale: IJB-C (469,375 images, 23,124 templates, 15.7M pairs) pools with a sparse matrix product and
scores pairs with blocked GEMMs over the templates that occur in the pairs (the pair list is a
dense share of gallery x probe templates), never a Python loop over templates or pairs.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from facekd.errors import DataError
from facekd.evaluation.metrics import (
    SortedScores,
    open_set_stats,
    rank_counts,
    rate_key,
    tpir_values,
    verification_report,
)
from facekd.evaluation.uncertainty import share_interval

if TYPE_CHECKING:
    from facekd.config import BootstrapParams

log = logging.getLogger(__name__)

IJB_FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
IJB_FPIRS = (1e-2, 1e-1)
IJB_RANKS = (1, 5, 10)

_POOL_ROWS = 1 << 16  # images per chunk when computing image norms (128 MiB at d = 512)
_GEMM_CELLS = 1 << 27  # similarity cells per GEMM block (512 MiB of float32; IJB-C's grid is 69M)
_GATHER_ROWS = 1 << 13  # pairs per chunk on the gather path
# A GEMM cell costs ~2d flops; a gathered pair ~2d random reads (about 50x slower per unit here):
# use GEMM while the template grid is at most this many times the number of pairs.
_GEMM_MAX_RATIO = 48


def image_features(
    img_feats: np.ndarray,
    faceness: np.ndarray | None = None,
    *,
    use_flip_feats: bool = True,
    feats_have_flip: bool = True,
    norm: bool = False,
    detector: bool = True,
) -> np.ndarray:
    """(N, d) float32 per-image features from (N, 2d) ``[img, flip]`` (or (N, d)) features.

    ``use_flip_feats`` sums the two halves (else the first half is used); ``norm`` L2-normalises
    each image feature (dropping the feature norm as a quality weight); ``detector`` then
    multiplies by ``faceness`` when it is given. ``ijb_template_features`` pools the same way
    without building this (N, d) array.
    """
    rows, halves = _feature_rows(img_feats, use_flip_feats=use_flip_feats, feats_have_flip=feats_have_flip)
    feats = rows.reshape(-1, halves, rows.shape[1])
    feats = feats.sum(axis=1) if use_flip_feats else feats[:, 0]
    if norm:
        feats = feats / _unit_divisor(np.linalg.norm(feats, axis=1))[:, None]
    if detector and faceness is not None:
        faceness = np.asarray(faceness, dtype=np.float32)
        if faceness.shape != (feats.shape[0],):
            raise DataError(f"faceness has shape {faceness.shape}; expected ({feats.shape[0]},), one score per image")
        feats = feats * faceness[:, None]
    return feats


def _unit_divisor(norms: np.ndarray) -> np.ndarray:
    return np.maximum(norms, np.finfo(np.float32).tiny)


def _feature_rows(img_feats: np.ndarray, *, use_flip_feats: bool, feats_have_flip: bool) -> tuple[np.ndarray, int]:
    """(N * h, d) float32 view of the features, h = 2 interleaved [img, flip] rows per image or 1."""
    img_feats = np.ascontiguousarray(img_feats, dtype=np.float32)
    if img_feats.ndim != 2:
        raise DataError(f"image features must be (N, d) or (N, 2d); got shape {img_feats.shape}")
    if not feats_have_flip:
        if use_flip_feats:
            raise DataError("use_flip_feats needs (N, 2d) [img, flip] features; these have no flip half")
        return img_feats, 1
    if img_feats.shape[1] % 2:
        raise DataError(f"image features with flip must be (N, 2d); got odd width {img_feats.shape[1]}")
    return img_feats.reshape(-1, img_feats.shape[1] // 2), 2


def _check_image_arrays(n: int, templates: np.ndarray, medias: np.ndarray, faceness: np.ndarray | None) -> None:
    if templates.shape != (n,) or medias.shape != (n,):
        raise DataError(
            f"{n} image features, templates {templates.shape} and medias {medias.shape} "
            "must describe the same N images"
        )
    if faceness is not None and faceness.shape != (n,):
        raise DataError(f"faceness has shape {faceness.shape}; expected ({n},), one score per image")
    if n == 0:
        raise DataError("no images: the template list is empty")


def _pooling_weights(
    templates: np.ndarray, medias: np.ndarray, faceness: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(unique templates (T,), template row of each image (N,), weight of each image (N,)).

    Mean over a (template, media) then sum over medias = one weighted sum per template with
    weight ``faceness / images in its (template, media)``.
    """
    unique_templates, t_row = np.unique(templates, return_inverse=True)
    _, m_code = np.unique(medias, return_inverse=True)
    key = t_row.astype(np.int64) * (int(m_code.max()) + 1) + m_code  # (N,) one code per (template, media)
    _, group, group_size = np.unique(key, return_inverse=True, return_counts=True)
    weight = 1.0 / group_size[group]
    if faceness is not None:
        weight = weight * faceness.astype(np.float64)
    return unique_templates, t_row, weight


def _pool(
    rows: np.ndarray, row_template: np.ndarray, row_weight: np.ndarray, row_index: np.ndarray, n_templates: int
) -> np.ndarray:
    """(T, d) L2-normalised weighted sums of ``rows[row_index]`` per template: one sparse product."""
    from scipy import sparse

    # (T, M) sparse: row_index[k] contributes row_weight[k] to template row_template[k].
    w = sparse.csr_matrix(
        (row_weight.astype(np.float32), (row_template, row_index)), shape=(n_templates, rows.shape[0])
    )
    pooled = np.asarray(w @ rows)  # (T, d) float32
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    empty = int((norms[:, 0] == 0).sum())
    if empty:
        log.warning("%d templates have a zero feature (all faceness 0?); their scores will be 0", empty)
    return pooled / np.where(norms == 0, 1.0, norms)


def template_features(
    img_feats: np.ndarray, templates: np.ndarray, medias: np.ndarray, faceness: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(unique template ids (T,) sorted, L2-normalised template features (T, d) float32).

    ``img_feats`` (N, d) are per-image features (see ``image_features``); ``faceness`` (N,) weights
    them when given.
    """
    return ijb_template_features(img_feats, templates, medias, faceness, use_flip_feats=False,
                                 feats_have_flip=False, detector=faceness is not None)


def _image_norms(rows: np.ndarray, halves: int, use_flip_feats: bool) -> np.ndarray:
    """(N,) norm of each image's (summed) feature, in chunks: no (N, d) copy."""
    n = rows.shape[0] // halves
    norms = np.empty(n, dtype=np.float32)
    for start in range(0, n, _POOL_ROWS):
        block = rows[start * halves : (start + _POOL_ROWS) * halves].reshape(-1, halves, rows.shape[1])
        feats = block.sum(axis=1) if use_flip_feats else block[:, 0]
        norms[start : start + _POOL_ROWS] = np.linalg.norm(feats, axis=1)
    return norms


def ijb_template_features(
    img_feats: np.ndarray,
    templates: np.ndarray,
    medias: np.ndarray,
    faceness: np.ndarray | None,
    *,
    use_flip_feats: bool = True,
    feats_have_flip: bool = True,
    norm: bool = False,
    detector: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Template ids (T,) and features (T, d) under insightface's mode switches.

    Pooling is linear, so flip-sum, faceness, media mean and template sum are one sparse
    (T, N*2) x (N*2, d) product over the [img, flip] rows as stored (float32, no copy); ``norm``
    only rescales each image's weight by 1 / |img + flip|.
    """
    rows, halves = _feature_rows(img_feats, use_flip_feats=use_flip_feats, feats_have_flip=feats_have_flip)
    templates, medias = np.asarray(templates), np.asarray(medias)
    faceness = None if faceness is None else np.asarray(faceness)
    n = rows.shape[0] // halves
    _check_image_arrays(n, templates, medias, faceness)
    if detector and faceness is None:
        raise DataError("detector weighting needs faceness scores: pass them or set detector=False")
    unique_templates, t_row, weight = _pooling_weights(templates, medias, faceness if detector else None)
    if norm:
        weight = weight / _unit_divisor(_image_norms(rows, halves, use_flip_feats))
    used = halves if use_flip_feats else 1  # halves pooled per image: both, or the first only
    row_index = (np.arange(n)[:, None] * halves + np.arange(used)[None, :]).ravel()  # (N * used,)
    pooled = _pool(rows, np.repeat(t_row, used), np.repeat(weight, used), row_index, unique_templates.size)
    return unique_templates, pooled


def template_rows(template_ids: np.ndarray, wanted: np.ndarray, what: str) -> np.ndarray:
    """Row of each id of ``wanted`` in sorted ``template_ids``; DataError naming the first unknown."""
    template_ids = np.asarray(template_ids)
    if template_ids.ndim != 1 or template_ids.size == 0 or (np.diff(template_ids) <= 0).any():
        raise DataError(
            "template ids must be a non-empty, strictly increasing 1-D array (as template_features returns them)"
        )
    wanted = np.asarray(wanted)
    integers = np.issubdtype(template_ids.dtype, np.integer) and np.issubdtype(wanted.dtype, np.integer)
    lo, hi = (int(template_ids[0]), int(template_ids[-1])) if integers else (-1, 0)
    if integers and lo >= 0 and hi < 16 * template_ids.size + (1 << 20):
        # Small non-negative ids (IJB's are < 200k): a lookup table is O(1) per id.
        table = np.full(hi + 2, -1, dtype=np.int64)
        table[template_ids] = np.arange(template_ids.size)
        in_range = wanted.size == 0 or (wanted.min() >= 0 and wanted.max() <= hi)
        rows = table[wanted if in_range else np.clip(wanted, -1, hi + 1)]
        missing = rows < 0
    else:
        rows = np.searchsorted(template_ids, wanted).clip(0, template_ids.size - 1)
        missing = template_ids[rows] != wanted
    if missing.any():
        at = np.unravel_index(int(np.flatnonzero(missing.ravel())[0]), wanted.shape)
        raise DataError(
            f"{what} {tuple(int(i) for i in at)}: template {wanted[at]} has no images in the template list"
        )
    return rows


def _used_rows(rows: np.ndarray, n_templates: int) -> tuple[np.ndarray, np.ndarray]:
    """(templates used (U,), position of each row among them (P,)) without sorting the pairs."""
    used = np.zeros(n_templates, dtype=bool)
    used[rows] = True
    unique = np.flatnonzero(used)
    position = np.zeros(n_templates, dtype=np.int64)
    position[unique] = np.arange(unique.size)
    return unique, position[rows]


def _scores_gemm(feats: np.ndarray, ua: np.ndarray, ra: np.ndarray, ub: np.ndarray, rb: np.ndarray) -> np.ndarray:
    """Cosine per pair from GEMM blocks over (templates in column a) x (templates in column b).

    ``ua``/``ub``: template rows used in each column; ``ra``/``rb``: each pair's position in them.
    """
    fb_t = np.ascontiguousarray(feats[ub].T)  # (d, Ub)
    per_block = max(1, _GEMM_CELLS // ub.size)
    block = ra // per_block  # (P,) GEMM block of each pair
    n_blocks = int(block.max()) + 1
    if n_blocks == 1:
        return (feats[ua] @ fb_t).ravel()[ra * ub.size + rb]
    # Stable argsort of small ints is a radix sort: O(P).
    order = np.argsort(block.astype(np.uint16 if n_blocks < 1 << 16 else np.int64), kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(block, minlength=n_blocks))])
    out = np.empty(ra.size, dtype=np.float32)
    for b in range(n_blocks):
        sel = order[bounds[b] : bounds[b + 1]]
        if sel.size:
            lo = b * per_block
            sims = feats[ua[lo : lo + per_block]] @ fb_t  # (per_block, Ub)
            out[sel] = sims.ravel()[(ra[sel] - lo) * ub.size + rb[sel]]
    return out


def _scores_gather(feats: np.ndarray, rows_a: np.ndarray, rows_b: np.ndarray) -> np.ndarray:
    """Cosine per pair by gathering both sides, chunk by chunk (for sparse pair lists)."""
    out = np.empty(rows_a.size, dtype=np.float32)
    for start in range(0, rows_a.size, _GATHER_ROWS):
        sl = slice(start, start + _GATHER_ROWS)
        out[sl] = np.einsum("ij,ij->i", feats[rows_a[sl]], feats[rows_b[sl]])
    return out


def pair_scores(
    template_ids: np.ndarray, template_feats: np.ndarray, pairs: np.ndarray, *, method: str = "auto"
) -> np.ndarray:
    """(P,) float32 cosine of each template pair ``pairs`` (P, 2) of template ids.

    ``method``: "gemm" (blocks of template x template products, for dense pair lists such as
    IJB's gallery x probe pairs), "gather" (per-pair dot products), or "auto" by a cost estimate.
    Memory stays bounded (512 MiB GEMM blocks, 8k-pair gather chunks) at any pair count.
    """
    pairs = np.asarray(pairs)
    if pairs.ndim != 2 or pairs.shape[1] != 2:
        raise DataError(f"pairs must be (P, 2) template ids; got shape {pairs.shape}")
    feats = np.asarray(template_feats, dtype=np.float32)
    rows = template_rows(template_ids, pairs, "pair (row, column)")
    if method not in ("auto", "gemm", "gather"):
        raise DataError(f"pair scoring method must be 'auto', 'gemm' or 'gather', got {method!r}")
    if pairs.shape[0] == 0:
        return np.empty(0, dtype=np.float32)
    rows_a, rows_b = np.ascontiguousarray(rows[:, 0]), np.ascontiguousarray(rows[:, 1])
    (ua, ra), (ub, rb) = _used_rows(rows_a, feats.shape[0]), _used_rows(rows_b, feats.shape[0])
    if method == "auto":
        method = "gemm" if ua.size * float(ub.size) <= _GEMM_MAX_RATIO * pairs.shape[0] else "gather"
    if method == "gemm":
        return _scores_gemm(feats, ua, ra, ub, rb)
    return _scores_gather(feats, rows_a, rows_b)


def ijb_scores(
    img_feats: np.ndarray,
    templates: np.ndarray,
    medias: np.ndarray,
    faceness: np.ndarray | None,
    pairs: np.ndarray,
    *,
    use_flip_feats: bool = True,
    feats_have_flip: bool = True,
    norm: bool = False,
    detector: bool = True,
) -> np.ndarray:
    """(P,) 1:1 template-pair scores under the given insightface mode switches."""
    started = time.perf_counter()
    ids, tfeats = ijb_template_features(img_feats, templates, medias, faceness, use_flip_feats=use_flip_feats,
                                        feats_have_flip=feats_have_flip, norm=norm, detector=detector)
    pooled = time.perf_counter()
    scores = pair_scores(ids, tfeats, pairs)
    log.info("IJB 1:1: %d templates pooled in %.1fs, %d pairs scored in %.1fs",
             ids.size, pooled - started, scores.size, time.perf_counter() - pooled)
    return scores


def ijb_1to1(
    img_feats: np.ndarray,
    templates: np.ndarray,
    medias: np.ndarray,
    faceness: np.ndarray | None,
    pairs: np.ndarray,
    labels: np.ndarray,
    fars: Sequence[float] = IJB_FARS,
    *,
    use_flip_feats: bool = True,
    feats_have_flip: bool = True,
    norm: bool = False,
    detector: bool = True,
) -> dict:
    """``{"tar@far=1e-6": ..., "auc": ..., "num_genuine", "num_impostor", "modes": {...}}``.

    For the ROC curve, call ``ijb_scores`` with the same arguments (or reuse its scores with
    ``metrics.SortedScores``); this function keeps no scores.
    """
    scores = ijb_scores(img_feats, templates, medias, faceness, pairs, use_flip_feats=use_flip_feats,
                        feats_have_flip=feats_have_flip, norm=norm, detector=detector)
    report: dict = verification_report(SortedScores.from_scores(scores, labels), fars)
    report["modes"] = {"use_flip_feats": use_flip_feats, "norm": norm, "detector": detector}
    return report


def ijb_roc(
    img_feats: np.ndarray,
    templates: np.ndarray,
    medias: np.ndarray,
    faceness: np.ndarray | None,
    pairs: np.ndarray,
    labels: np.ndarray,
    *,
    use_flip_feats: bool = True,
    feats_have_flip: bool = True,
    norm: bool = False,
    detector: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) of the 1:1 ROC: its exact corners only (tens of thousands of points on IJB-C)."""
    scores = ijb_scores(img_feats, templates, medias, faceness, pairs, use_flip_feats=use_flip_feats,
                        feats_have_flip=feats_have_flip, norm=norm, detector=detector)
    return SortedScores.from_scores(scores, labels).roc_curve()


def _subject_table(df: pd.DataFrame, what: str) -> pd.DataFrame:
    """One row per template: template_id, subject_id (column names matched case-insensitively)."""
    table = df.rename(columns={c: str(c).strip().lower() for c in df.columns})
    for col in ("template_id", "subject_id"):
        if col not in table.columns:
            raise DataError(f"{what} table has no {col} column (found {list(df.columns)})")
    table = table[["template_id", "subject_id"]].drop_duplicates()
    dup = table["template_id"].duplicated()
    if dup.any():
        raise DataError(f"{what}: template {table['template_id'][dup].iloc[0]} is listed with two subjects")
    return table.sort_values("template_id")


def _galleries(gallery_df: pd.DataFrame | Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Split the gallery into named galleries: a mapping, a ``gallery`` column, or one gallery "all"."""
    if isinstance(gallery_df, Mapping):
        galleries = dict(gallery_df)
    else:
        column = next((c for c in gallery_df.columns if str(c).strip().lower() == "gallery"), None)
        galleries = (
            {"all": gallery_df} if column is None
            else {str(name): part for name, part in gallery_df.groupby(column, sort=True)}
        )
    empty = [name for name, part in galleries.items() if len(part) == 0]
    if not galleries or empty:
        raise DataError(f"1:N needs non-empty galleries; empty: {empty or 'all of them'}")
    return galleries


def ijb_1toN(
    template_ids: np.ndarray,
    template_feats: np.ndarray,
    gallery_df: pd.DataFrame | Mapping[str, pd.DataFrame],
    probe_df: pd.DataFrame,
    fpirs: Sequence[float] = IJB_FPIRS,
    ks: Sequence[int] = IJB_RANKS,
    bootstrap: BootstrapParams | None = None,
) -> dict:
    """Open-set 1:N: ``{"rank1": ..., "tpir@fpir=1e-2": ..., "galleries": {"G1": {...}, ...}}``.

    ``gallery_df``: template_id, subject_id and optionally gallery ("G1"/"G2") columns, or a
    mapping name -> table. ``probe_df``: template_id, subject_id (repeated rows are fine). The
    top-level numbers follow insightface: rank-k pooled over the galleries' mated probes, TPIR the
    mean over galleries. With ``bootstrap``, ``rank1_ci_low`` / ``rank1_ci_high``: its interval
    over probe identities (each identity's probes resampled together; the galleries stay as
    enrolled).
    """
    probes = _subject_table(probe_df, "probe")
    template_feats = np.asarray(template_feats, dtype=np.float32)
    probe_feats = template_feats[template_rows(template_ids, probes["template_id"].to_numpy(), "probe row")]
    per_gallery, hits, mated_total = {}, dict.fromkeys(ks, 0), 0
    mated_subjects, first_hits = [], []  # (n_mated,) per gallery: for the rank-1 interval
    for name, part in _galleries(gallery_df).items():
        gallery = _subject_table(part, f"gallery {name}")
        rows = template_rows(template_ids, gallery["template_id"].to_numpy(), f"gallery {name} row")
        similarity = probe_feats @ template_feats[rows].T  # (P, G) cosine
        stats = open_set_stats(similarity, probes["subject_id"].to_numpy(), gallery["subject_id"].to_numpy())
        n_mated = int(stats.mated.sum())
        if n_mated == 0:
            raise DataError(f"gallery {name}: no probe's subject is in it; check the gallery and probe tables")
        counts = rank_counts(stats, ks)
        per_gallery[name] = {
            **{f"rank{k}": c / n_mated for k, c in counts.items()},
            **{rate_key("tpir@fpir", f): t for f, t in tpir_values(stats, fpirs).items()},
            "num_mated": n_mated,
            "num_nonmated": int((~stats.mated).sum()),
        }
        hits = {k: hits[k] + counts[k] for k in ks}
        mated_subjects.append(probes["subject_id"].to_numpy()[stats.mated])
        first_hits.append(stats.rank[stats.mated] == 1)
        mated_total += n_mated
    result: dict = {f"rank{k}": hits[k] / mated_total for k in ks}
    for f in fpirs:
        key = rate_key("tpir@fpir", f)
        result[key] = float(np.mean([g[key] for g in per_gallery.values()]))
    if bootstrap is not None:
        low, high = share_interval(np.concatenate(mated_subjects), np.concatenate(first_hits), bootstrap)
        result.update({"rank1_ci_low": low, "rank1_ci_high": high})
    result["galleries"] = per_gallery
    return result
