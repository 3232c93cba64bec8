"""``adadistill``: adaptive teacher class centres (AdaDistill, ECCV 2024)."""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from facekd.config import Section
from facekd.distill.base import DistillBatch, DistillMethod
from facekd.distill.registry import register
from facekd.distill.sync import all_gather_nograd
from facekd.models.heads import check_labels, cosine_to_centres, margin_logits


class AdaDistillKD(Section):
    variant: Literal["alpha", "alpha_prime"] = "alpha_prime"
    head: Literal["arcface", "cosface"] = "arcface"
    margin: float = Field(0.45, ge=0.0)
    init: Literal["normal", "teacher_head"] = "normal"
    init_std: float = Field(0.01, gt=0.0)
    repeated_labels: Literal["sequential", "average"] = "sequential"


@register("adadistill", params=AdaDistillKD)
class AdaDistill(DistillMethod):
    """Margin softmax of ``s`` against centres ``c`` that track the teacher's embeddings.

    Before the loss, under no grad, every sample moves its class centre towards its unit teacher
    embedding: ``c_y <- alpha c_y + (1 - alpha) t`` with ``alpha = clamp(cos(s, t), 1e-6, 1)``
    ("alpha") or ``clamp(cos(s, t) * clamp(cos(c_y, t), 1e-6, 1), 1e-6, 1)`` ("alpha_prime"),
    ``c_y`` being the centre before this sample's update. Corrections over the public code:

    - updates use (t, y, cos(s, t)) gathered from all ranks in rank order, so every rank holds the
      same centres, equal to a single-process run on the global batch;
    - a label repeated in the (global) batch is updated deterministically: "sequential" applies
      the samples in batch order, each seeing the centre left by the previous one; "average" lets
      every sample see the pre-batch centre (as the public code's vectorised write does) and
      stores the mean of their updated centres (the public code keeps an arbitrary one);
    - the centres are a buffer, so they are checkpointed.

    Centres start N(0, init_std) (the authors' init) or, with ``init: teacher_head``, as the unit
    rows of W_t (unit, like the teacher embeddings they are averaged with). Outside training mode
    the loss uses the updated centres without storing them.
    """

    shares_teacher_space = True

    def __init__(self, params: AdaDistillKD, *, teacher_head: Tensor | None = None, **kwargs) -> None:
        super().__init__(params, teacher_head=teacher_head, **kwargs)
        if params.init == "teacher_head":
            centres = self.checked_teacher_head(teacher_head)
        else:
            centres = torch.randn(self.num_classes, self.teacher_dim) * params.init_std
        self.register_buffer("centres", centres)

    @classmethod
    def requires_teacher_head(cls, params: AdaDistillKD) -> bool:
        return params.init == "teacher_head"

    def compute(self, batch: DistillBatch) -> dict[str, Tensor]:
        y = batch.labels
        check_labels(y, self.num_classes)
        s = self.in_teacher_space(batch.student)  # (B, d)
        t = F.normalize(batch.teacher.float(), dim=1)  # (B, d)
        centres, alpha = self.updated_centres(s, t, y)
        cos = cosine_to_centres(s, centres)  # (B, C)
        logits = margin_logits(cos, y, self.params.head, self.head_params.scale, self.params.margin)
        ce = F.cross_entropy(logits, y)
        return {"loss": ce, "ce": ce.detach(), "alpha": alpha.mean()}

    @torch.no_grad()
    def updated_centres(self, s: Tensor, t: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Centres (C, d) after this (global) batch's updates, and the alphas (n,) used.

        s, t: (B, d) unit student / teacher embeddings of this rank; y: (B,) labels.
        """
        cos_st = (s * t).sum(dim=1)  # (B,) the only student-dependent input of the update
        t_all, y_all, cos_all = all_gather_nograd(t), all_gather_nograd(y), all_gather_nograd(cos_st)
        classes, slot = torch.unique(y_all, return_inverse=True)  # classes (U,), slot (n,) in [0, U)
        rows = self.centres[classes].clone()  # (U, d) the centres this batch touches
        if self.params.repeated_labels == "sequential":
            alpha = self._sequential(rows, slot, t_all, cos_all)
        else:
            alpha = self._average(rows, slot, t_all, cos_all)
        if self.training:
            self.centres.index_copy_(0, classes, rows)
            return self.centres, alpha
        return self.centres.index_copy(0, classes, rows), alpha

    def _alpha(self, cos_st: Tensor, centre: Tensor, t: Tensor) -> Tensor:
        """(n,) EMA weight of each sample's centre; centre, t: (n, d), the centre before the update."""
        if self.params.variant == "alpha":
            return cos_st.clamp(1e-6, 1.0)
        lam = F.cosine_similarity(centre, t, dim=1).clamp(1e-6, 1.0)  # (n,) centre-to-teacher agreement
        return (cos_st.clamp(-1.0, 1.0) * lam).clamp(1e-6, 1.0)

    def _sequential(self, rows: Tensor, slot: Tensor, t: Tensor, cos_st: Tensor) -> Tensor:
        """Update ``rows`` in place sample by sample in batch order; returns alphas (n,).

        Vectorised over "rounds": round r holds every label's r-th occurrence, whose labels are
        distinct, so one indexed write per round is exact; there are as many rounds as the largest
        repeat count.
        """
        occurrence = _occurrence_index(slot)  # (n,) 0 for a label's first sample, 1 for its second...
        alpha = torch.empty_like(cos_st)
        for r in range(int(occurrence.max()) + 1):
            idx = (occurrence == r).nonzero().squeeze(1)  # samples of this round, distinct labels
            where = slot[idx]
            a = self._alpha(cos_st[idx], rows[where], t[idx]).unsqueeze(1)  # (n_r, 1)
            rows[where] = a * rows[where] + (1.0 - a) * t[idx]
            alpha[idx] = a.squeeze(1)
        return alpha

    def _average(self, rows: Tensor, slot: Tensor, t: Tensor, cos_st: Tensor) -> Tensor:
        """Every sample updates the pre-batch centre; each touched centre becomes the mean of its updates."""
        before = rows[slot]  # (n, d)
        a = self._alpha(cos_st, before, t).unsqueeze(1)  # (n, 1)
        moved = a * before + (1.0 - a) * t  # (n, d)
        total = torch.zeros_like(rows).index_add_(0, slot, moved)  # (U, d)
        count = torch.bincount(slot, minlength=rows.shape[0]).unsqueeze(1)  # (U, 1), all >= 1
        rows.copy_(total / count)
        return a.squeeze(1)


def _occurrence_index(slot: Tensor) -> Tensor:
    """(n,) how many earlier entries of ``slot`` (n,) hold the same value."""
    n = slot.shape[0]
    order = torch.sort(slot, stable=True).indices  # equal values keep batch order
    ranked = slot[order]
    position = torch.arange(n, device=slot.device)
    starts = torch.ones(n, dtype=torch.bool, device=slot.device)
    starts[1:] = ranked[1:] != ranked[:-1]
    run_start = torch.cummax(torch.where(starts, position, 0), dim=0).values  # first index of each run
    occurrence = torch.empty_like(position)
    occurrence[order] = position - run_start
    return occurrence
