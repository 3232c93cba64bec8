"""Embedding images with a backbone, flip-sum normalisation, and an on-disk feature cache.

Input convention (insightface, ONNX export, MFR server): RGB, NCHW, ``(x - 127.5) / 127.5``.
"""
from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from facekd.errors import DataError
from facekd.fsio import atomic_write

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


def _check_images(images: np.ndarray) -> None:
    if not isinstance(images, np.ndarray) or images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        shape = getattr(images, "shape", None)
        dtype = getattr(images, "dtype", type(images).__name__)
        raise DataError(f"images must be a uint8 (N, H, W, 3) RGB array; got shape {shape}, dtype {dtype}")
    if images.shape[0] == 0:
        raise DataError("no images to embed (N = 0)")


def _model_place(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype of the model's first parameter (CPU float32 without parameters)."""
    import torch

    for p in model.parameters():
        if p.is_floating_point():
            return p.device, p.dtype
    return torch.device("cpu"), torch.float32


def _batch_input(
    batch: np.ndarray, device: torch.device, dtype: torch.dtype, channels_last: bool
) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) normalised float on ``device``."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(batch)).to(device, non_blocking=True)
    x = x.permute(0, 3, 1, 2).to(dtype).sub_(127.5).div_(127.5)  # (B, 3, H, W) over NHWC storage
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def embed_images(
    model: torch.nn.Module,
    images: np.ndarray,
    *,
    batch_size: int = 128,
    flip: bool = True,
    channels_last: bool = True,
    progress: bool = True,
) -> np.ndarray:
    """(N, 2d) float32 ``[feat(img), feat(horizontally flipped img)]`` when ``flip``, else (N, d).

    Runs in eval mode under ``torch.inference_mode`` on the model's device, and puts the model
    back in the mode it was in (training calls this mid-run).
    """
    import torch
    from tqdm import tqdm

    _check_images(images)
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    device, dtype = _model_place(model)
    was_training = model.training
    model.eval()
    out: list[np.ndarray] = []
    try:
        with torch.inference_mode():
            starts = range(0, images.shape[0], batch_size)
            for start in tqdm(starts, desc="embed", unit="batch", disable=None if progress else True):
                x = _batch_input(images[start : start + batch_size], device, dtype, channels_last)
                if flip:
                    x = torch.cat([x, x.flip(3)])  # (2B, 3, H, W): originals then flips (W is dim 3)
                feats = model(x).float()  # (B or 2B, d)
                if flip:
                    feats = torch.cat(feats.chunk(2), dim=1)  # (B, 2d)
                out.append(feats.cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(out).astype(np.float32, copy=False)


def flip_sum_normalize(feats: np.ndarray) -> np.ndarray:
    """(N, 2d) ``[img, flip]`` features -> (N, d) L2-normalised sum of the two halves."""
    feats = np.asarray(feats)
    if feats.ndim != 2 or feats.shape[1] % 2:
        raise DataError(f"flip features must be (N, 2d); got shape {feats.shape}")
    d = feats.shape[1] // 2
    summed = feats[:, :d].astype(np.float32) + feats[:, d:]
    norms = np.linalg.norm(summed, axis=1, keepdims=True)
    return summed / np.maximum(norms, np.finfo(np.float32).tiny)


def checkpoint_hash(path: str | Path, length: int = 16) -> str:
    """Hex SHA-256 prefix of a checkpoint file's bytes (a cache key for its embeddings)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError as err:
        raise DataError(f"{path}: cannot read the checkpoint to hash it ({err.strerror})") from None
    return digest.hexdigest()[:length]


def array_hash(array: np.ndarray, length: int = 16) -> str:
    """Hex SHA-256 prefix of an array's dtype, shape and bytes.

    Hashing the decoded images (not the files) keys on exactly what the model sees: a .bin, an IJB
    crop or its landmarks, or an MFR image changed in any way changes it. SHA-256 runs at ~1 GB/s
    here (faster than blake2b on CPUs with SHA extensions): 0.5 s for LFW's 12000 images, a small
    share of embedding them.
    """
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(memoryview(np.ascontiguousarray(array)).cast("B"))
    return digest.hexdigest()[:length]


class EmbeddingCache:
    """Features cached as ``.npy`` per :meth:`key` (model hash, dataset, content hash) under a folder.

    Re-scoring a model (new metric, new plot) reuses its features instead of re-embedding. Files
    are written atomically; an unreadable file is recomputed and replaced.
    """

    def __init__(self, cache_dir: str | Path) -> None:
        self.cache_dir = Path(cache_dir)

    @staticmethod
    def key(model_hash: str, dataset: str, images: np.ndarray, *, flip: bool = True) -> str:
        """The key of one model's features of one dataset's ``images``: their content hash is part
        of it, so a replaced benchmark (same name, same size) is embedded again, never served stale."""
        return f"{model_hash}/{dataset}/{array_hash(images)}/{'flip' if flip else 'noflip'}"

    def path(self, key: str) -> Path:
        """File of ``key``: a readable slug plus a hash of the exact key (no collisions, no '/')."""
        if not key:
            raise DataError("embedding cache key must be a non-empty string")
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("._")[:80]
        digest = hashlib.sha256(key.encode()).hexdigest()[:12]
        return self.cache_dir / f"{slug}-{digest}.npy"

    def get_or_compute(self, key: str, fn: Callable[[], np.ndarray]) -> np.ndarray:
        """Load the features of ``key`` or compute them with ``fn()`` and store them."""
        path = self.path(key)
        if path.is_file():
            try:
                return np.load(path, allow_pickle=False)
            except (OSError, ValueError, EOFError) as err:
                log.warning("%s: cached features unreadable (%s); recomputing", path, err)
        feats = np.asarray(fn())
        if feats.dtype == object:
            raise DataError(f"features for {key!r} must be a numeric array, got dtype object")
        atomic_write(path, lambda fh: np.save(fh, feats, allow_pickle=False))
        log.info("cached features %s -> %s", key, path)
        return feats
