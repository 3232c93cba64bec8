"""``thkd`` / ``shkd``: teacher-head sharing (Ben-Baruch et al., "It's All in the Head")."""
from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from facekd.config import Section
from facekd.distill.base import DistillBatch, DistillMethod, soft_kl
from facekd.distill.registry import register
from facekd.models.heads import cosine_to_centres


class THKD(Section):
    gamma: float = Field(1.0, ge=0.0)
    beta: float = Field(1.0, ge=0.0)
    delta: float = Field(0.0, ge=0.0)
    temperature: float = Field(4.0, gt=0.0)


class SHKD(THKD):
    teacher_epochs: int = Field(2, ge=1, le=100_000)
    teacher_lr: float = Field(0.01, gt=0.0)


@register("thkd", params=THKD)
class TeacherHeadDistill(DistillMethod):
    """``gamma * CE(student head) + beta * T^2 * KL(softmax(z_t/T) || softmax(z_th/T)) + delta * ||s - t||^2``.

    The frozen teacher head scores both embeddings: ``z_th = s_scale * s W_t^T`` (student through
    the teacher head), ``z_t = s_scale * t W_t^T``, both plain scaled cosines over unit vectors.
    ``||s - t||^2`` is summed over the embedding and averaged over the batch (the public code's
    ``MSELoss(reduction="sum")`` also sums over the batch). When d_s != d_t the student reaches
    the teacher head and the embedding term through a learned linear projection; the student's
    own margin head sees its raw embedding.
    """

    needs_teacher_head = True
    shares_teacher_space = True

    def __init__(self, params: THKD, **kwargs) -> None:
        super().__init__(params, **kwargs)
        self.head = self.student_head()

    def compute(self, batch: DistillBatch) -> dict[str, Tensor]:
        p = self.params
        scale = self.head_params.scale
        ce = F.cross_entropy(self.head(batch.student.float(), batch.labels), batch.labels)
        s = self.in_teacher_space(batch.student)  # (B, d_t)
        t = F.normalize(batch.teacher.float(), dim=1)  # (B, d_t)
        z_th = scale * cosine_to_centres(s, self.teacher_centres)  # (B, C)
        z_t = scale * cosine_to_centres(t, self.teacher_centres)  # (B, C)
        kd = soft_kl(z_t, z_th, p.temperature)
        embedding = (s - t).pow(2).sum(dim=1).mean()
        loss = p.gamma * ce + p.beta * kd + p.delta * embedding
        return {"loss": loss, "ce": ce.detach(), "kd": kd.detach(), "embedding": embedding.detach()}


@register("shkd", params=SHKD)
class StudentAwareTeacherDistill(TeacherHeadDistill):
    """``shkd``: the TH-KD loss fed by the student-aware teacher and its head (the pipeline picks them)."""

    fine_tunes_teacher = True  # SH-KD step 2's copy, models/teacher_shkd (stage student_aware_teacher@shkd)
