"""Which images each optimiser step sees: seeds, per-epoch permutations and the batch plan.

The data order of epoch ``e`` is a permutation drawn from ``(seed, e)``, the same on every rank
and every resume; the global batch of a step is split over the ranks and then over ``grad_accum``
micro-batches (:class:`StepPlan`), so the samples of a step do not depend on the number of processes.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from facekd.config import OptimParams
from facekd.errors import TrainingError
from facekd.training.distributed import DistInfo, rank_slice

if TYPE_CHECKING:
    import torch


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and random (call before building models so their init is reproducible)."""
    import random

    import torch

    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def derived_seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across processes and Python versions)."""
    digest = hashlib.sha256(json.dumps(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def epoch_permutation(num_images: int, seed: int, epoch: int) -> "torch.Tensor":
    """(N,) int64: the sample order of ``epoch`` (the same on every rank and every resume)."""
    import torch

    gen = torch.Generator().manual_seed(derived_seed(seed, epoch, 0))
    return torch.randperm(num_images, generator=gen)


@dataclass(frozen=True)
class StepPlan:
    """How images map to optimizer steps: global batch -> ranks -> accumulation micro-batches."""

    global_batch: int
    micro_batch: int
    grad_accum: int
    steps_per_epoch: int
    epochs: int

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    @classmethod
    def build(cls, num_images: int, optim: OptimParams, dist: DistInfo) -> "StepPlan":
        per_rank = optim.batch_size // dist.world_size
        rank_slice(optim.batch_size, dist)  # raises when the batch does not split over ranks
        if per_rank % optim.grad_accum:
            raise TrainingError(
                f"optim.batch_size={optim.batch_size} over {dist.world_size} process(es) gives {per_rank} "
                f"images per process, not divisible by optim.grad_accum={optim.grad_accum}; change one of them"
            )
        steps = num_images // optim.batch_size
        if steps < 1:
            raise TrainingError(
                f"the training data has {num_images} images, fewer than one batch "
                f"(optim.batch_size={optim.batch_size}); lower the batch size"
            )
        return cls(optim.batch_size, per_rank // optim.grad_accum, optim.grad_accum, steps, optim.epochs)


class EpochBatches:
    """Batch sampler: this rank's micro-batches (lists of image indices) of one epoch.

    Global step ``s`` of the epoch takes ``perm[s*B:(s+1)*B]``; the rank takes its contiguous share
    and cuts it into ``grad_accum`` micro-batches. The tail of the permutation that does not fill
    a global batch is dropped (a different tail every epoch).
    """

    def __init__(self, num_images: int, plan: StepPlan, dist: DistInfo, seed: int) -> None:
        self.num_images, self.plan, self.seed = num_images, plan, seed
        self.share = rank_slice(plan.global_batch, dist)
        self.epoch, self.start_step = 0, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Iterate ``epoch`` from its step ``start_step`` (skipping consumed batches undecoded)."""
        self.epoch, self.start_step = epoch, start_step

    def __len__(self) -> int:
        return (self.plan.steps_per_epoch - self.start_step) * self.plan.grad_accum

    def __iter__(self) -> Iterator[list[int]]:
        perm = epoch_permutation(self.num_images, self.seed, self.epoch)
        b, m = self.plan.global_batch, self.plan.micro_batch
        for step in range(self.start_step, self.plan.steps_per_epoch):
            mine = perm[step * b:(step + 1) * b][self.share]
            for a in range(self.plan.grad_accum):
                yield mine[a * m:(a + 1) * m].tolist()
