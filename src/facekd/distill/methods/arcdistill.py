"""``arcdistill``: the teacher's head, frozen, is the student's head (ArcDistill / ProxylessKD)."""
from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from facekd.config import Section
from facekd.distill.base import DistillBatch, DistillMethod
from facekd.distill.registry import register
from facekd.models.heads import check_labels, cosine_to_centres, margin_logits


class ArcDistillKD(Section):
    head: Literal["arcface", "cosface"] = "arcface"
    margin: float = Field(0.45, ge=0.0)


@register("arcdistill", params=ArcDistillKD)
class ArcDistill(DistillMethod):
    """Margin softmax of ``s`` against the frozen ``normalize(W_t)``; no trainable head.

    Kind and margin come from ``distill.arcdistill`` (ArcFace m=0.45, CosFace m=0.35 in the paper),
    the scale from ``distill.head``.
    """

    needs_teacher_head = True
    shares_teacher_space = True

    def compute(self, batch: DistillBatch) -> dict[str, Tensor]:
        y = batch.labels
        check_labels(y, self.num_classes)
        cos = cosine_to_centres(self.in_teacher_space(batch.student), self.teacher_centres)  # (B, C)
        logits = margin_logits(cos, y, self.params.head, self.head_params.scale, self.params.margin)
        ce = F.cross_entropy(logits, y)
        return {"loss": ce, "ce": ce.detach()}
