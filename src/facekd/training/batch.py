"""The batch one optimiser step works on, on the training device.

The data loader yields plain dicts of CPU tensors (``facekd.data.dataset.collate``: they cross
process boundaries); the loop moves one to the device as a :class:`StepBatch`, a teacher provider
(``extra_batch_fn``) fills :attr:`StepBatch.teacher`, and the objective reads it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor


@dataclass
class StepBatch:
    """One step's inputs.

    image: (B, 3, 112, 112) float32 in [-1, 1] (channels_last where the run uses it); label: (B,)
    int64 identities, -1 on unlabeled data; index: (B,) int64 rows of the training set; flip: (B,)
    bool, the image was mirrored; step: optimiser steps done before this one; epoch: fractional
    epoch (3.25 = a quarter into the fourth); teacher: (B, d_t) float32 raw teacher embeddings, set
    by a teacher provider, ``None`` when the run has none.
    """

    image: Tensor
    label: Tensor
    index: Tensor
    flip: Tensor
    step: int
    epoch: float
    teacher: Tensor | None = None
