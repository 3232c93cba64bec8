"""``feature``: embedding mimicry, the "FitNet" / MSE feature KD row of the QUD and AdaDistill tables."""
from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from facekd.config import Section
from facekd.distill.base import DistillBatch, DistillMethod
from facekd.distill.registry import register


class FeatureKD(Section):
    weight: float = Field(1.0, gt=0.0)
    with_ce: bool = False


@register("feature", params=FeatureKD)
class FeatureDistill(DistillMethod):
    """``weight * mean((s - t)^2)`` over B x d on unit embeddings (+ the student's margin softmax if ``with_ce``).

    The mean runs over every element, as ``nn.MSELoss()`` on normalised embeddings in the QUD code.
    When d_s != d_t the student is mapped by a learned linear projection before normalising.
    """

    needs_labels = False  # unless with_ce: see requires_labels
    shares_teacher_space = True

    def __init__(self, params: FeatureKD, **kwargs) -> None:
        super().__init__(params, **kwargs)
        self.head = self.student_head() if params.with_ce else None

    @classmethod
    def requires_labels(cls, params: FeatureKD) -> bool:
        return params.with_ce

    def compute(self, batch: DistillBatch) -> dict[str, Tensor]:
        s = self.in_teacher_space(batch.student)  # (B, d_t)
        t = F.normalize(batch.teacher.float(), dim=1)  # (B, d_t)
        mse = (s - t).pow(2).mean()
        loss = self.params.weight * mse
        parts = {"feature": mse.detach()}
        if self.head is not None:
            ce = F.cross_entropy(self.head(batch.student.float(), batch.labels), batch.labels)
            loss = loss + ce
            parts["ce"] = ce.detach()
        return {"loss": loss, **parts}
