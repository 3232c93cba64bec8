"""Importing an ONNX-only face embedder as the teacher: find the file, check it, copy it into a model folder.

Nothing here trains: ``teacher.source: onnx`` makes the ``train_teacher`` stage call
:func:`import_onnx_teacher`, which refuses a file that is not one ``N x 3 x 112 x 112`` input ->
one ``N x d`` output (:func:`facekd.models.onnx_backbone.inspect_onnx`), runs it on a handful of
training images and warns when the result does not look like a face embedder, then writes
``models/teacher/`` (``model.onnx`` + ``meta.json``) for every later stage.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from facekd.errors import ConfigError, DataError
from facekd.fsio import file_sha256
from facekd.models.onnx_backbone import InputConvention, OnnxBackbone
from facekd.models.store import save_onnx_dir

if TYPE_CHECKING:
    from facekd.config import OnnxTeacherParams

log = logging.getLogger(__name__)

# Below this gap between the mean genuine and mean impostor cosine of the sample, the embeddings do
# not tell people apart: a wrong input convention or not a face model. (The embedded teacher: ~0.6;
# the same file fed BGR: ~0.3; insightface's packs on aligned faces: 0.5-0.7.)
MIN_SEPARATION = 0.1
IMAGES_PER_IDENTITY = 4  # of the sanity sample


def resolve_onnx_path(path: str | Path) -> Path:
    """``teacher.onnx.path`` as one file: the file itself, or the only ``.onnx`` in a folder."""
    path = Path(path)
    if path.is_dir():
        found = sorted(p for p in path.glob("*.onnx") if p.is_file())
        if len(found) != 1:
            what = "no .onnx file" if not found else f"{len(found)} .onnx files ({', '.join(p.name for p in found)})"
            raise ConfigError(f"teacher.onnx.path={path}: the folder holds {what}; put exactly one ONNX face "
                              "embedder there or point teacher.onnx.path at the file")
        return found[0]
    if not path.exists():
        raise DataError(f"{path}: missing (teacher.onnx.path); put the ONNX teacher there or fix the key")
    return path


def convention_of(section: OnnxTeacherParams) -> InputConvention:
    return InputConvention(section.color, section.mean, section.std, section.normalization)


def sanity_sample(labels: np.ndarray, count: int) -> np.ndarray:
    """Indices of up to ``count`` images, :data:`IMAGES_PER_IDENTITY` from each of the first
    identities that have that many (genuine pairs need two images of a person)."""
    picked: list[int] = []
    for label in np.unique(labels[labels >= 0]):
        rows = np.flatnonzero(labels == label)[:IMAGES_PER_IDENTITY]
        if len(rows) >= 2:
            picked.extend(rows.tolist())
        if len(picked) >= count:
            break
    return np.asarray(picked[:count], dtype=np.int64)


def sanity_check(embeddings: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Norms and genuine/impostor cosine separation of (N, d) raw outputs; ``warnings`` says what looks wrong."""
    if not np.isfinite(embeddings).all():
        raise DataError("the ONNX teacher gives non-finite outputs on training images; check the file and "
                        "teacher.onnx.mean/std/normalization")
    norms = np.linalg.norm(embeddings, axis=1)
    unit = embeddings / np.maximum(norms[:, None], 1e-12)
    cos = unit @ unit.T  # (N, N)
    same = labels[:, None] == labels[None, :]
    off_diagonal = ~np.eye(len(labels), dtype=bool)
    genuine = float(cos[same & off_diagonal].mean()) if (same & off_diagonal).any() else float("nan")
    impostor = float(cos[~same].mean()) if (~same).any() else float("nan")
    report = {"images": len(labels), "norm_mean": float(norms.mean()), "norm_min": float(norms.min()),
              "genuine_cosine": genuine, "impostor_cosine": impostor, "separation": genuine - impostor,
              "warnings": []}
    if (embeddings >= -1e-6).all() and np.allclose(embeddings.sum(axis=1), 1.0, atol=1e-3):
        report["warnings"].append("its outputs are non-negative and sum to 1 per image, like a classifier's "
                                  "softmax probabilities: this is not a face embedder")
    if np.isfinite(report["separation"]) and report["separation"] < MIN_SEPARATION:
        report["warnings"].append(
            f"it hardly separates people on training images (mean cosine genuine {genuine:.3f} vs impostor "
            f"{impostor:.3f}): check teacher.onnx.color / mean / std / normalization, and that it is a face model")
    return report


def embed_uint8(backbone: OnnxBackbone, images: np.ndarray) -> np.ndarray:
    """(N, 112, 112, 3) uint8 RGB -> (N, d) raw outputs, through facekd's input normalisation."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().sub(127.5).div(127.5)
    with torch.inference_mode():
        return backbone(x).numpy()


def import_onnx_teacher(section: OnnxTeacherParams, out_dir: Path, images: np.ndarray,
                        labels: np.ndarray) -> dict[str, Any]:
    """Check ``teacher.onnx.path`` and write ``out_dir`` (model.onnx + meta.json); returns the meta.

    ``images`` (N, 112, 112, 3) uint8 and ``labels`` (N,) are the sanity sample.
    """
    source = resolve_onnx_path(section.path)
    backbone = OnnxBackbone(source, convention_of(section), threads=section.threads)
    info = backbone.info
    check = sanity_check(embed_uint8(backbone, images), labels)
    for warning in check["warnings"]:
        log.warning("%s: %s", source, warning)
    meta = {
        "role": "teacher",
        "arch": "onnx",
        "embedding_size": info.dim,
        "params_m": info.params_m,
        "gmacs": None,
        "input": {"color": section.color, "mean": section.mean, "std": section.std,
                  "normalization": section.normalization},
        "normalizes_inside": info.normalizes_inside,
        "raw_pixels": backbone.raw_pixels,
        "fixed_batch": info.batch,
        "opset": info.opset,
        "threads": section.threads,
        "source": str(source),
        "source_sha256": file_sha256(source),
        "sanity": check,
    }
    save_onnx_dir(out_dir, source, meta)
    return meta
