"""``gkd``: grouped knowledge distillation (Zhao et al., AAAI 2023)."""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from facekd.config import Section
from facekd.distill.base import DistillBatch, DistillMethod
from facekd.distill.registry import register
from facekd.models.heads import cosine_to_centres, margin_logits


class GKD(Section):
    k_mode: Literal["adaptive", "fixed"] = "adaptive"
    fixed_k: int = Field(10000, ge=1, le=1 << 31)
    k_step: int = Field(100, ge=1, le=1 << 31)
    mass: float = Field(0.93, gt=0.0, le=1.0)
    alpha: float = Field(1.0, ge=0.0)
    beta: float = Field(8.0, ge=0.0)
    temperature: float = Field(4.0, gt=0.0)
    warmup_epochs: float = Field(10.0, ge=0.0)
    margin: float = Field(0.4, ge=0.0)


@register("gkd", params=GKD)
class GroupedDistill(DistillMethod):
    """``CE(z_s, y) + w(e) * (alpha * Binary-KD + beta * Primary-KD)``; Secondary-KD dropped.

    Teacher (through W_t) and student (its own head) give CosFace logits, margin ``gkd.margin`` on
    the target, scale ``distill.head.scale``. The primary group P_i is the top-K identities of the
    student's logits for sample i with the true identity forced in (so |P_i| = K); K is fixed
    (``fixed_k``, clipped to C) or adaptive: the smallest K in {1, 1+k_step, 1+2 k_step, ..., C}
    whose top-K identities of the batch-summed student softmax (T=1) hold >= mass * B. Each KL is
    summed over identities, divided by B and multiplied by T^2. The warm-up weight
    ``w(e) = min(floor(e) / warmup_epochs, 1)`` follows the public code's integer epoch index, so
    it is 0 throughout the first epoch and constant within an epoch.
    """

    needs_teacher_head = True

    def __init__(self, params: GKD, **kwargs) -> None:
        super().__init__(params, **kwargs)
        self.head = self.student_head("cosface", params.margin)

    def compute(self, batch: DistillBatch) -> dict[str, Tensor]:
        p, y = self.params, batch.labels
        z_s = self.head(batch.student.float(), y)  # (B, C) student CosFace logits
        cos_t = cosine_to_centres(batch.teacher.float(), self.teacher_centres)  # (B, C)
        z_t = margin_logits(cos_t, y, "cosface", self.head_params.scale, p.margin)  # (B, C)
        ce = F.cross_entropy(z_s, y)
        k = self.group_size(z_s.detach())
        group = primary_group(z_s.detach(), y, k)  # (B, K) indices of P_i
        binary, primary = grouped_kl(z_s, z_t, group, p.temperature)
        weight = self.warmup_weight(batch.epoch)
        loss = ce + weight * (p.alpha * binary + p.beta * primary)
        return {
            "loss": loss,
            "ce": ce.detach(),
            "binary": binary.detach(),
            "primary": primary.detach(),
            "k": ce.new_tensor(float(k)),
            "warmup": ce.new_tensor(weight),
        }

    def group_size(self, z_s: Tensor) -> int:
        """K for this batch: fixed, or adaptive from the batch-summed student softmax (T=1)."""
        num_classes = z_s.shape[1]
        if self.params.k_mode == "fixed":
            return min(self.params.fixed_k, num_classes)
        return adaptive_k(z_s, self.params.k_step, self.params.mass)

    def warmup_weight(self, epoch: float) -> float:
        if self.params.warmup_epochs <= 0:
            return 1.0
        return min(math.floor(epoch) / self.params.warmup_epochs, 1.0)


def adaptive_k(z_s: Tensor, k_step: int, mass: float) -> int:
    """Smallest K in {1, 1+k_step, ..., C} whose top-K summed probability reaches ``mass * B``.

    z_s: (B, C) student logits. K = C always qualifies (its mass is B), so it closes the list
    even when C - 1 is not a multiple of k_step (the public code then has no K at all).
    """
    batch, num_classes = z_s.shape
    summed = F.softmax(z_s.float(), dim=1).sum(dim=0)  # (C,) probability mass per identity
    covered = torch.sort(summed, descending=True).values.cumsum(dim=0)  # (C,) mass of the top-K
    candidates = torch.arange(1, num_classes + 1, k_step, device=z_s.device)
    candidates = torch.unique(torch.cat([candidates, candidates.new_tensor([num_classes])]))
    enough = covered[candidates - 1] >= mass * batch
    enough[-1] = True
    return int(candidates[enough.nonzero()[0, 0]])


def primary_group(z_s: Tensor, labels: Tensor, k: int) -> Tensor:
    """(B, K) identities of P_i: the top-K student logits with the true identity forced in."""
    forced = z_s.scatter(1, labels.unsqueeze(1), float("inf"))  # (B, C) target ranks first
    return forced.topk(k, dim=1).indices


def grouped_kl(z_s: Tensor, z_t: Tensor, group: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """Binary-KD and Primary-KD for student / teacher logits (B, C) and groups (B, K).

    Binary: KL between the two-bin distributions [mass in P, mass outside P]; Primary: KL between
    the softmaxes renormalised over P. Both teacher-to-student, summed, / B, * T^2.
    """
    batch, num_classes = z_s.shape
    scale = temperature**2 / batch
    log_p_s = F.log_softmax(z_s / temperature, dim=1)  # (B, C)
    log_p_t = F.log_softmax(z_t / temperature, dim=1)  # (B, C)
    if group.shape[1] < num_classes:
        inside = torch.zeros_like(z_s, dtype=torch.bool).scatter(1, group, True)  # (B, C) mask of P
        bins_s = _two_bins(log_p_s, inside)  # (B, 2) log masses
        bins_t = _two_bins(log_p_t, inside)
        binary = F.kl_div(bins_s, bins_t, log_target=True, reduction="sum") * scale
    else:
        # P holds every identity: both two-bin distributions are [1, 0], the KL is exactly 0.
        binary = z_s.new_zeros(())
    in_s = F.log_softmax(z_s.gather(1, group) / temperature, dim=1)  # (B, K) renormalised over P
    in_t = F.log_softmax(z_t.gather(1, group) / temperature, dim=1)
    primary = F.kl_div(in_s, in_t, log_target=True, reduction="sum") * scale
    return binary, primary


def _two_bins(log_p: Tensor, inside: Tensor) -> Tensor:
    """(B, 2) log of [mass inside, mass outside] from log-probabilities (B, C) and a mask (B, C)."""
    log_in = torch.logsumexp(log_p.masked_fill(~inside, float("-inf")), dim=1)
    log_out = torch.logsumexp(log_p.masked_fill(inside, float("-inf")), dim=1)
    return torch.stack([log_in, log_out], dim=1)
