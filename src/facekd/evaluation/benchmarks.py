"""Run every benchmark found in an evaluation folder against one model.

The folder layout is the prepared one (``data/eval``):
- ``*.bin``                      verification pair sets (LFW, CFP-FP, ... or the synthetic ones);
- ``ijb/meta/<name>_*.txt``      IJB-B/C style 1:1 (and 1:N when the CSVs exist) protocols;
- ``mfr/probes/<id>/*``,
  ``mfr/gallery/<id>/*``         MFR-style masked probes vs unmasked gallery (identity folders).

Each benchmark returns ``(metrics, roc)`` where ``roc`` is ``(fpr, tpr)`` for the plots.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facekd.config import EvaluateParams
from facekd.errors import DataError

log = logging.getLogger(__name__)

# embed(name, images (N,112,112,3) uint8 RGB) -> (N, 2d) [feature, feature of the flip]
Embedder = Callable[[str, np.ndarray], np.ndarray]
# (metrics, ROC (fpr, tpr) or None[, PairScores: the scored 1:1 pairs for the report's bootstrap, IJB only])
Result = tuple[Any, ...]
ALIGNED = (112, 112, 3)
MIN_PAIRS = 10  # 10-fold verification accuracy


def _check_aligned(image: np.ndarray, where: str) -> np.ndarray:
    """The image itself, or a DataError naming ``where``: models take 112x112 aligned faces only
    (some backbones accept other sizes and would silently score garbage)."""
    if image.shape != ALIGNED:
        raise DataError(f"{where}: image is {image.shape[1]}x{image.shape[0]}, but evaluation needs "
                        f"{ALIGNED[1]}x{ALIGNED[0]} aligned faces (insightface alignment); re-create this file")
    return image


def verification_set(path: Path, embed: Embedder, cfg: EvaluateParams) -> Result:
    from facekd.data.bins import decode_bin, require_both_kinds
    from facekd.evaluation.embed import flip_sum_normalize
    from facekd.evaluation.metrics import SortedScores
    from facekd.evaluation.verification import pair_embeddings, verification_metrics

    images, issame = decode_bin(path)
    require_both_kinds(path, issame)
    _check_aligned(images[0], f"{path}: image 0 (pair 0)")  # decode_bin checked they all match image 0
    if issame.size < MIN_PAIRS:
        raise DataError(f"{path}: {issame.size} pairs; {MIN_PAIRS}-fold verification needs at least {MIN_PAIRS}")
    emb = flip_sum_normalize(embed(path.stem, images))
    a, b = pair_embeddings(emb)
    metrics = verification_metrics(a, b, issame, fars=tuple(f for f in cfg.far_targets if f >= 1e-3))
    # Cosine of unit vectors: higher = more alike, what the ROC wants.
    fpr, tpr = SortedScores.from_scores(np.sum(a * b, axis=1), issame.astype(np.int8)).roc_curve()
    return metrics, (fpr, tpr)


def _ijb_images(protocol) -> np.ndarray:
    from facekd.data.ijb_protocol import align_face
    from facekd.data.images import read_image_file

    out = np.empty((len(protocol.images), 112, 112, 3), np.uint8)
    for i, (name, marks) in enumerate(zip(protocol.images["image_name"], protocol.landmarks, strict=True)):
        out[i] = align_face(read_image_file(protocol.image_path(name)), marks)
    return out


def ijb_protocol(root: Path, name: str, embed: Embedder, cfg: EvaluateParams) -> Result:
    from facekd.data.ijb_protocol import load_ijb
    from facekd.evaluation import ijb
    from facekd.evaluation.metrics import SortedScores, threshold_report, verification_report

    protocol = load_ijb(root, name)
    feats = embed(f"ijb-{name}", _ijb_images(protocol))  # (N, 2d) [image, flip]
    images = protocol.images
    modes = {"use_flip_feats": cfg.ijb_flip, "norm": cfg.ijb_norm, "detector": cfg.ijb_detector}
    columns = (feats, images["template_id"].to_numpy(), images["media_id"].to_numpy(), images["faceness"].to_numpy())
    # Score once; the same sorted scores give the TAR@FAR report and the ROC curve.
    scores = ijb.ijb_scores(*columns, protocol.pairs, **modes)
    sorted_scores = SortedScores.from_scores(scores, protocol.labels)
    # The thresholds are what `facekd verify` decides with (one image is a one-image template).
    metrics = {**verification_report(sorted_scores, cfg.far_targets),
               **threshold_report(sorted_scores, cfg.far_targets), "modes": modes}
    if protocol.gallery is not None and protocol.probes is not None:
        templates, template_feats = ijb.ijb_template_features(*columns, **modes)
        metrics.update(ijb.ijb_1toN(templates, template_feats, protocol.gallery, protocol.probes,
                                    cfg.fpir_targets, (1, 5, 10), bootstrap=cfg.bootstrap))
    return metrics, sorted_scores.roc_curve(), _pair_scores(protocol, scores)


def _pair_scores(protocol, scores: np.ndarray) -> Any:
    """The 1:1 pairs with their identity clusters, for the report's bootstrap over identities."""
    from facekd.evaluation.uncertainty import PairScores, pair_identities

    tables = [t for t in (protocol.gallery, protocol.probes) if t is not None]
    subject_of = {int(t): int(s) for table in tables
                  for t, s in zip(table["template_id"], table["subject_id"], strict=True)}
    return PairScores(pair_identities(protocol.pairs, protocol.labels, subject_of),
                      np.asarray(protocol.labels, dtype=np.int8), np.asarray(scores, dtype=np.float32))


def masked_set(root: Path, embed: Embedder, cfg: EvaluateParams) -> Result:
    from facekd.data.folder import scan_identity_folders
    from facekd.data.images import read_image_file
    from facekd.evaluation.embed import flip_sum_normalize
    from facekd.evaluation.masked import masked_interval, masked_roc, masked_verification
    from facekd.evaluation.metrics import rate_key

    sides = {}
    for side in ("probes", "gallery"):
        paths, _, names = scan_identity_folders(root / side)
        ids = np.array([p.parent.name for p in paths])
        images = np.stack([_check_aligned(read_image_file(p), str(p)) for p in paths])
        sides[side] = (flip_sum_normalize(embed(f"mfr-{side}", images)), ids)
    (pe, pid), (ge, gid) = sides["probes"], sides["gallery"]
    metrics = masked_verification(pe, pid, ge, gid, far=cfg.mfr_far)
    key = rate_key("tar@far<", cfg.mfr_far)
    if not np.isnan(metrics[key]):
        low, high = masked_interval(pe, pid, ge, gid, cfg.mfr_far, cfg.bootstrap)
        metrics.update({f"{key}_ci_low": low, f"{key}_ci_high": high})
    return metrics, masked_roc(pe, pid, ge, gid)


def benchmarks(eval_dir: Path) -> Iterator[tuple[str, Callable[[Embedder, EvaluateParams], Result]]]:
    """(name, run) for every benchmark present in ``eval_dir``."""
    from facekd.data.ijb_protocol import protocol_names

    for path in sorted(eval_dir.glob("*.bin")):
        yield path.stem, lambda embed, cfg, path=path: verification_set(path, embed, cfg)
    ijb_root = eval_dir / "ijb"
    if (ijb_root / "meta").is_dir():
        for name in protocol_names(ijb_root):
            key = "ijb" if name == "ijbs" else name
            yield key, lambda embed, cfg, name=name: ijb_protocol(ijb_root, name, embed, cfg)
    if (eval_dir / "mfr" / "probes").is_dir():
        yield "mfr", lambda embed, cfg: masked_set(eval_dir / "mfr", embed, cfg)


@dataclass
class Scored:
    """One model on every benchmark of an evaluation folder."""

    metrics: dict[str, Any] = field(default_factory=dict)  # benchmark -> its metrics
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # benchmark -> (fpr, tpr)
    pairs: dict[str, np.ndarray] = field(default_factory=dict)  # PairScores arrays by "<benchmark>.<part>"


def score_all(eval_dir: Path, embed: Embedder, cfg: EvaluateParams, model: str) -> Scored:
    """Every benchmark in ``eval_dir`` scored with ``embed``; DataError when there is none.

    The PyTorch model (``evaluate@<model>``) and its INT8 ONNX copy (``evaluate_int8@<model>``) both
    go through here, so they are scored by one protocol on the same pairs.
    """
    found = list(benchmarks(eval_dir))
    if not found:
        raise DataError(f"{eval_dir}: no evaluation sets (*.bin, ijb/meta, mfr/) found; run the prepare stage")
    scored = Scored()
    for name, bench in found:
        log.info("%s: %s", model, name)
        scored.metrics[name], roc, *pairs = bench(embed, cfg)
        if roc is not None:
            scored.curves[name] = roc
        if pairs:
            pairs[0].save(scored.pairs, name)
    return scored


def score_gate(eval_dir: Path, embed: Embedder, cfg: EvaluateParams, gate_metric: str) -> float:
    """The gate metric alone (``ijb.tar@far=1e-3``: the ``ijb`` benchmark only); NaN where that
    operating point is unsupported. DataError when ``eval_dir`` has no such benchmark."""
    from facekd.mlops.evidence import lookup

    name = gate_metric.split(".", 1)[0]
    bench = dict(benchmarks(eval_dir)).get(name)
    if bench is None:
        raise DataError(f"{eval_dir}: no benchmark '{name}' for the gate metric {gate_metric} "
                        "(registry.gate_metric); run the prepare stage or choose a metric of a set that is there")
    metrics, *_ = bench(embed, cfg)
    value = lookup({name: metrics}, gate_metric)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else float("nan")
