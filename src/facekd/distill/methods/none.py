"""``none``: the student alone, margin softmax on its own head (the baseline of every table)."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from facekd.config import Section
from facekd.distill.base import DistillBatch, DistillMethod
from facekd.distill.registry import register


@register("none", params=Section)
class NoDistill(DistillMethod):
    """``CE(margin_softmax(W_s, s), y)`` with ``distill.head``'s kind, scale and margin; ignores the teacher."""

    teacher_model = None

    def __init__(self, params: Section, **kwargs) -> None:
        super().__init__(params, **kwargs)
        self.head = self.student_head()

    def compute(self, batch: DistillBatch) -> dict[str, Tensor]:
        ce = F.cross_entropy(self.head(batch.student.float(), batch.labels), batch.labels)
        return {"loss": ce, "ce": ce.detach()}
