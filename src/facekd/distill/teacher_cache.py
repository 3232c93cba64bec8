"""The teacher feature cache, ``features/<teacher>/``: writing it, checking it, reading it.

``embeddings.npy`` (N, 2, d_t): the frozen teacher's raw embedding of every training image and of
its horizontal flip, in index order; ``meta.json`` names the teacher weights, the data and the
dtype. :func:`open_cache` refuses a cache whose data or teacher differ from the current ones, and
names the stage to rerun. Also the teacher's class centres when it has no head
(:func:`class_mean_centres`, an ONNX teacher). Read during training by
:class:`facekd.distill.teacher.CachedTeacher`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from facekd import layout
from facekd.errors import ConfigError, DataError
from facekd.fsio import atomic_path, file_sha256, read_json_object, write_json

if TYPE_CHECKING:
    from facekd.data.dataset import FaceDataset
    from facekd.data.training_set import StudentData

log = logging.getLogger(__name__)

EMBEDDINGS_FILE = "embeddings.npy"
META_FILE = "meta.json"
CACHE_DTYPES = ("float32", "float16")
LAYOUT = "(N, 2, d): raw embedding of image i, of its horizontal flip"
# Methods whose loss a float16 cache leaves unchanged to 1e-4 (absolute), measured per method by
# tests/unit/test_teacher_cache.py at the default params on a real tiny teacher: float16 keeps
# ~3 decimal digits, and every loss that scales teacher cosines (scale-64 logits and T^2-weighted
# KL in logit/thkd/shkd/gkd: 2e-3..7e-2; AdaDistill's teacher-made centres: 2e-3; QUD's 1/tau:
# 3e-4) moves by more. Only the plain feature MSE (4e-6) and methods that never read the teacher
# embedding qualify.
FP16_SAFE_METHODS = frozenset({"none", "arcdistill", "feature"})


def teacher_weights_hash(model_dir: str | Path) -> str:
    """sha256 of the teacher's weights file (``backbone.pt``; for an ONNX teacher ``model.onnx`` and
    its input convention): identifies the teacher a cache or student was made from."""
    from facekd.models.store import ONNX_FORMAT, read_meta, weights_file

    digest = file_sha256(weights_file(model_dir))
    meta = read_meta(model_dir)
    if meta.get("format") != ONNX_FORMAT:
        return digest
    # The same ONNX file fed another colour order or normalisation is another teacher.
    convention = json.dumps(meta["input"], sort_keys=True)
    return hashlib.sha256(f"{digest}\n{convention}".encode()).hexdigest()


# ---- writing the cache ----------------------------------------------------------------------------


def write_teacher_features(
    out_dir: str | Path,
    teacher: nn.Module,
    data: StudentData,
    *,
    teacher_name: str,
    weights_hash: str,
    dtype: str = "float32",
    batch_size: int = 128,
    workers: int = 0,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Embed every training image and its flip with the frozen ``teacher``; returns the meta.

    Writes ``<out_dir>/embeddings.npy`` (N, 2, d) in ``dtype`` straight into a memory map (a
    full-scale cache does not fit in RAM: MS1MV2 at 512-d is 24 GB in float32) through an atomic
    temporary file, then ``meta.json`` last; the old ``meta.json`` is removed first, so an
    interrupted run never leaves a cache that looks valid.
    """
    if dtype not in CACHE_DTYPES:
        raise ConfigError(f"distill.cache_dtype: '{dtype}' is not one of {', '.join(CACHE_DTYPES)}")
    if getattr(data.dataset, "augment", False):
        # Row [i, 0] must be the unflipped image: a dataset that flips on its own would mix them.
        raise ValueError("write_teacher_features needs a dataset opened with augment=False (it flips explicitly)")
    out_dir = Path(out_dir)
    (out_dir / META_FILE).unlink(missing_ok=True)
    device = torch.device(device)
    teacher = teacher.to(device).eval().requires_grad_(False).to(memory_format=torch.channels_last)
    n = len(data.dataset)
    dim = output_dim(teacher, device)
    with atomic_path(out_dir / EMBEDDINGS_FILE) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.dtype(dtype), shape=(n, 2, dim))
        for start, rows in _embed_with_flips(teacher, data.dataset, batch_size, workers, device):
            out[start:start + len(rows)] = rows.astype(dtype, copy=False)
        out.flush()
        del out  # close the map before the rename
    meta = {
        "teacher": teacher_name,
        "teacher_weights_sha256": weights_hash,
        "data_hash": data.data_hash,
        "data": data.where,
        "num_images": n,
        "dim": dim,
        "dtype": dtype,
        "layout": LAYOUT,
    }
    write_json(out_dir / META_FILE, meta)
    log.info("cached %s embeddings of %d images (+ flips), %d-d %s -> %s", teacher_name, n, dim, dtype, out_dir)
    return meta


def output_dim(teacher: nn.Module, device: torch.device) -> int:
    with torch.inference_mode():
        return int(teacher(torch.zeros(1, 3, 112, 112, device=device)).shape[1])


def _embed_with_flips(
    teacher: nn.Module, dataset: "FaceDataset", batch_size: int, workers: int, device: torch.device
) -> Any:
    """Yield ``(first index, (B, 2, d) float32 numpy)`` over the dataset in index order."""
    from tqdm import tqdm

    from facekd.data.dataset import collate, normalize_batch

    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate,
        pin_memory=device.type == "cuda")
    start = 0
    with torch.inference_mode(), tqdm(total=len(dataset), unit="img", desc="teacher features",
                                      disable=not sys.stderr.isatty(), dynamic_ncols=True) as bar:
        for batch in loader:
            x = normalize_batch(batch["image"], device, channels_last=True)  # (B, 3, 112, 112)
            emb = teacher(torch.cat([x, x.flip(3)]))  # (2B, d): images, then their mirror images
            b = x.shape[0]
            rows = torch.stack([emb[:b], emb[b:]], dim=1).float().cpu().numpy()  # (B, 2, d)
            yield start, rows
            start += b
            bar.update(b)


# ---- the teacher's classifier, when it has none (an ONNX teacher) ---------------------------------


def class_mean_centres(cache: np.ndarray, labels: np.ndarray, num_classes: int, chunk: int = 65536) -> torch.Tensor:
    """W_t (C, d) for a teacher shipped without its classifier: the unit mean direction of each
    class's L2-normalised cached embeddings (both views, image and flip).

    Methods that read the teacher's margin head (ArcDistill, logit KD, GKD, TH-KD, AdaDistill with
    ``init: teacher_head``) use its rows W_t[c] as class centres. An ArcFace/CosFace head is
    trained to put each identity's unit embeddings within a margin of its centre, so at
    convergence w_c points along mean_{i in c} t_i / |t_i|; that mean, re-normalised, is the
    estimate used here. tests/unit/test_onnx_teacher.py compares it with the real head of a
    trained PyTorch teacher.

    ``cache`` (N, 2, d) (a memory map is read ``chunk`` rows at a time), ``labels`` (N,) in
    [0, C). An identity without images has no centre: that is an error, not a zero row.
    """
    if len(labels) != len(cache):
        raise DataError(f"class centres: {len(labels)} labels for a cache of {len(cache)} images")
    sums = np.zeros((num_classes, cache.shape[2]), dtype=np.float64)
    for start in range(0, len(cache), chunk):
        rows = np.asarray(cache[start:start + chunk], dtype=np.float64)  # (n, 2, d)
        unit = rows / np.maximum(np.linalg.norm(rows, axis=2, keepdims=True), 1e-12)
        np.add.at(sums, labels[start:start + chunk], unit.sum(axis=1))
    empty = np.flatnonzero(~sums.any(axis=1))
    if len(empty):
        raise DataError(f"class centres: identities {empty[:10].tolist()} have no training image; re-run `facekd prepare`")
    centres = sums / np.linalg.norm(sums, axis=1, keepdims=True)
    return torch.from_numpy(centres.astype(np.float32))


# ---- reading the cache ----------------------------------------------------------------------------


def check_cache_dtype(method: str, dtype: str) -> None:
    """A float16 cache is allowed only for methods whose loss it leaves unchanged to 1e-4."""
    if dtype == "float16" and method not in FP16_SAFE_METHODS:
        raise ConfigError(
            f"distill.cache_dtype: float16 changes the '{method}' loss by more than 1e-4 (allowed only for "
            f"{', '.join(sorted(FP16_SAFE_METHODS))}); set distill.cache_dtype: float32 and rerun "
            "`dvc repro teacher_features`, or use distill.teacher_source: online"
        )


def read_cache_meta(features_dir: str | Path) -> dict[str, Any]:
    """``meta.json`` of a feature cache; a missing or broken one says which stage rebuilds it."""
    features_dir = Path(features_dir)
    meta_path = features_dir / META_FILE
    stage = layout.features_stage(features_dir.name)
    return read_json_object(meta_path, DataError, redo=f"run `dvc repro {stage}`",
                            missing=f"missing (no complete teacher-feature cache); run `dvc repro {stage}`")


def open_cache(
    features_dir: str | Path, *, num_images: int, data_hash: str, weights_hash: str, dim: int, dtype: str
) -> np.ndarray:
    """The (N, 2, d) embeddings memory-mapped read-only, after checking they belong to this
    data (N, data hash), this teacher (weights hash, d) and ``distill.cache_dtype``; otherwise a
    :class:`DataError` naming the cache's ``meta.json`` and the stage that rebuilds it."""
    features_dir = Path(features_dir)
    meta = read_cache_meta(features_dir)
    stage = layout.features_stage(features_dir.name)
    expected = {"num_images": num_images, "data_hash": data_hash, "teacher_weights_sha256": weights_hash,
                "dim": dim, "dtype": dtype}
    stale = [f"{k}: cache has {meta.get(k)!r}, current is {v!r}" for k, v in expected.items() if meta.get(k) != v]
    if stale:
        raise DataError(
            f"{features_dir / META_FILE}: the teacher-feature cache is stale ({'; '.join(stale)}); "
            "it was built from another teacher, other data or another distill.cache_dtype. "
            f"Rerun `dvc repro {stage}` (or `facekd teacher-features --teacher {features_dir.name}`)"
        )
    path = features_dir / EMBEDDINGS_FILE
    try:
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: unreadable ({err}); run `dvc repro {stage}`") from None
    if array.shape != (num_images, 2, dim) or array.dtype.name != meta.get("dtype"):
        raise DataError(
            f"{path}: shape {array.shape} {array.dtype}, but {features_dir / META_FILE} promises "
            f"({num_images}, 2, {dim}) {meta.get('dtype')}; run `dvc repro {stage}`"
        )
    return array
