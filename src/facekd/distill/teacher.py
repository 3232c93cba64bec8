"""Where a student's teacher embeddings come from during training, and the objective that feeds a method.

Two providers, both called as ``provider(batch) -> batch`` (the loop's ``extra_batch_fn``), both
setting ``batch.teacher`` (B, d_t) float32 raw teacher embeddings on the batch's device
(``batch`` a :class:`~facekd.training.batch.StepBatch`):

- :class:`CachedTeacher`: rows of ``features/<teacher>/embeddings.npy`` (N, 2, d_t), memory-mapped
  (:mod:`facekd.distill.teacher_cache`), picked by ``batch.index`` and ``batch.flip``. The teacher
  is frozen and in eval mode and the only augmentation is a horizontal flip, so this is the online
  result, precomputed.
- :class:`OnlineTeacher`: the frozen teacher run on ``batch.image`` under ``no_grad`` (for
  augmentations beyond the flip).

:class:`DistillObjective` turns ``(emb, batch)`` into a :class:`~facekd.distill.base.DistillBatch`
for a method.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from facekd.distill.base import DistillBatch, DistillMethod
from facekd.distill.teacher_cache import output_dim
from facekd.errors import TrainingError
from facekd.models.heads import MarginHead

if TYPE_CHECKING:
    from facekd.training.batch import StepBatch


# ---- providers --------------------------------------------------------------------------------------


class CachedTeacher:
    """``batch.teacher = cache[batch.index, batch.flip]`` as float32 on the batch's device."""

    def __init__(self, cache: np.ndarray) -> None:
        self.cache = cache  # (N, 2, d) memmap
        self.dim = int(cache.shape[2])

    def __call__(self, batch: StepBatch) -> StepBatch:
        index = batch.index.cpu().numpy()
        flip = batch.flip.cpu().numpy().astype(np.int64)
        rows = np.asarray(self.cache[index, flip], dtype=np.float32)  # (B, d)
        batch.teacher = torch.from_numpy(rows).to(batch.image.device, non_blocking=True)
        return batch


class OnlineTeacher:
    """``batch.teacher`` = the frozen teacher on ``batch.image`` (eval mode, no gradient)."""

    def __init__(self, teacher: nn.Module, device: torch.device | str, channels_last: bool = True) -> None:
        teacher = teacher.to(device).eval().requires_grad_(False)
        self.teacher = teacher.to(memory_format=torch.channels_last) if channels_last else teacher
        self.dim = output_dim(self.teacher, torch.device(device))

    def __call__(self, batch: StepBatch) -> StepBatch:
        # no_grad, not inference_mode: the loss later uses these tensors inside autograd.
        with torch.no_grad():
            batch.teacher = self.teacher(batch.image).float()  # (B, d_t)
        return batch


# ---- the objective ----------------------------------------------------------------------------------


class DistillObjective(nn.Module):
    """The loop's objective for a student: ``(emb, batch) -> method(DistillBatch)``.

    ``batch.teacher`` comes from a provider. Only a method that reads no teacher
    (``teacher_model`` None: ``none``) runs without one, and then gets zeros of the teacher's
    shape; for any other method a missing teacher is a wiring error, raised, never trained on.
    Labels reach the method only when it uses them, so label-free methods run on unlabeled data
    (labels -1).
    """

    def __init__(self, method: "DistillMethod") -> None:
        super().__init__()
        self.method = method

    def forward(self, emb: torch.Tensor, batch: StepBatch) -> dict[str, torch.Tensor]:
        teacher = batch.teacher
        if teacher is None:
            if self.method.teacher_model is not None:
                raise TrainingError(
                    f"distill method '{self.method.name}' distils from models/{self.method.teacher_model}, but "
                    f"step {batch.step + 1} has no teacher embeddings: the training loop was given no "
                    "teacher provider (extra_batch_fn = CachedTeacher or OnlineTeacher)")
            teacher = emb.detach().new_zeros(emb.shape[0], self.method.teacher_dim)
        labels = batch.label if self.method.uses_labels else None
        return self.method(DistillBatch(student=emb, teacher=teacher, labels=labels, epoch=float(batch.epoch)))

    def student_head(self) -> MarginHead | None:
        """The method's own trainable margin head (``none``, ``logit``, ``thkd``...), if it has one."""
        head = getattr(self.method, "head", None)
        return head if isinstance(head, MarginHead) else None
