"""facekd's real training step, set up outside ``fit`` so one step can be timed on its own.

The step is :meth:`facekd.training.loop.Trainer.train_step` (device transfer + normalisation +
teacher provider + forward + loss + backward + clipping + SGD + schedule) on one collated
micro-batch, with the determinism setting ``fit`` applies around training.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

SEED = 0


def optim_params(batch: int, **overrides: Any) -> Any:
    """The project's default OptimParams (channels_last, clipping 5, deterministic) at this batch."""
    from facekd.config import OptimParams

    return OptimParams(batch_size=batch, epochs=1, **overrides)


@contextlib.contextmanager
def fit_settings(deterministic: bool) -> Iterator[None]:
    """What ``fit`` sets around training: deterministic kernels (warn only), restored afterwards."""
    import torch

    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def make_trainer(backbone: Any, objective: Any, dataset: Any, optim: Any, run_dir: Path,
                 extra_batch_fn: Callable[[Any], Any] | None = None, device: str = "cpu") -> Any:
    """A single-process Trainer (no tracking, nothing written until a checkpoint is asked for)."""
    import torch

    from facekd.mlops.tracking import NullTracker
    from facekd.training.distributed import DistInfo
    from facekd.training.loop import Trainer

    dist = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device(device))
    trainer = Trainer(run_name="bench", backbone=backbone, objective=objective, dataset=dataset, optim=optim,
                      run_dir=run_dir, config={"bench": True}, seed=SEED, tracker=NullTracker(),
                      extra_batch_fn=extra_batch_fn, eval_fn=None, dist=dist, log_every=1_000_000)
    trainer.backbone.train()
    trainer.objective.train()
    return trainer


def step_fn(trainer: Any, raw: dict) -> Callable[[], dict]:
    """One optimizer step of ``trainer`` on the collated micro-batch ``raw`` (returns the loss parts)."""
    return lambda: trainer.train_step([dict(raw)], lambda: False)[0]


def first_batch(dataset: Any, batch: int) -> dict:
    """The collated micro-batch of images 0..batch-1 (uint8 images, labels, indices, epoch-0 flips)."""
    from facekd.data.dataset import collate

    return collate([dataset[i] for i in range(batch)])


def grouped_labels(n: int, classes: int) -> np.ndarray:
    """(n,) labels 0..classes-1, ascending and contiguous (what a .rec needs), as even as possible."""
    return (np.arange(n) * classes // n).astype(np.int64)


def rec_dataset(folder: Path, n: int, classes: int, seed: int = 0) -> Any:
    """A FaceDataset over a freshly written .rec of ``n`` face-like images in ``classes`` identities."""
    from bench.common import face_like_images, write_rec
    from facekd.data.dataset import open_training_data

    write_rec(folder, face_like_images(n, seed), grouped_labels(n, classes))
    return open_training_data(folder, "rec", seed=SEED)
