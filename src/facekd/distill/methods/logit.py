"""``logit``: Hinton KD on classifier logits over a shared identity set."""
from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from facekd.config import Section
from facekd.distill.base import DistillBatch, DistillMethod, soft_kl
from facekd.distill.registry import register
from facekd.models.heads import cosine_to_centres, margin_logits


class LogitKD(Section):
    weight: float = Field(1.0, ge=0.0)
    temperature: float = Field(4.0, gt=0.0)


@register("logit", params=LogitKD)
class LogitDistill(DistillMethod):
    """``CE_student + w * T^2 * KL(softmax(z_t/T) || softmax(z_s/T))``.

    ``z_t = s_scale * t W_t^T`` and ``z_s = s_scale * s W_s^T`` are plain scaled cosines: the
    margin is a training device of the cross-entropy, not part of the class posterior, so it only
    enters ``CE_student`` (margin softmax of the student's own head).
    """

    needs_teacher_head = True

    def __init__(self, params: LogitKD, **kwargs) -> None:
        super().__init__(params, **kwargs)
        self.head = self.student_head()

    def compute(self, batch: DistillBatch) -> dict[str, Tensor]:
        y = batch.labels
        scale = self.head_params.scale
        cos_s = self.head.cosine(batch.student.float())  # (B, C) student to its own centres
        cos_t = cosine_to_centres(batch.teacher.float(), self.teacher_centres)  # (B, C)
        ce = F.cross_entropy(margin_logits(cos_s, y, self.head.kind, scale, self.head.margin), y)
        kd = soft_kl(scale * cos_t, scale * cos_s, self.params.temperature)
        loss = ce + self.params.weight * kd
        return {"loss": loss, "ce": ce.detach(), "kd": kd.detach()}
