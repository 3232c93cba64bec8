"""``qud``: queue-based unsupervised contrastive KD (QUD, BMVC 2024). Needs no labels."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from facekd.config import Section
from facekd.distill.base import DistillBatch, DistillMethod
from facekd.distill.registry import register
from facekd.distill.sync import all_gather_nograd
from facekd.errors import ConfigError


class QUDKD(Section):
    queue_size: int = Field(1024, ge=1, le=1 << 24)
    tau: float = Field(0.1, gt=0.0)
    margin: float = Field(0.0, ge=0.0)


@register("qud", params=QUDKD)
class QUD(DistillMethod):
    """InfoNCE of the student against its own teacher embedding and a FIFO queue of past ones.

    logits ``[s.t - m, s Q^T] / tau`` with the positive at index 0, where ``Q`` is the queue as it
    was before this batch (the batch is never its own negative) and the margin ``m`` is subtracted
    from the positive cosine before dividing by ``tau`` (as the public code does). Then, in
    training mode only, the batch's unit teacher embeddings, gathered from every rank in rank
    order, overwrite the oldest queue rows (ring buffer). The queue starts as random unit vectors
    drawn from torch's global RNG at construction.
    """

    needs_labels = False
    shares_teacher_space = True

    @classmethod
    def check_setting(cls, params: QUDKD, batch_size: int) -> None:
        if params.queue_size % batch_size:
            raise ValueError(f"distill.qud.queue_size={params.queue_size} must be a multiple of the global batch "
                             f"distill.optim.batch_size={batch_size}")

    def __init__(self, params: QUDKD, **kwargs) -> None:
        super().__init__(params, **kwargs)
        self.register_buffer("queue", F.normalize(torch.randn(params.queue_size, self.teacher_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.int64))

    def compute(self, batch: DistillBatch) -> dict[str, Tensor]:
        s = self.in_teacher_space(batch.student)  # (B, d)
        t = F.normalize(batch.teacher.float(), dim=1)  # (B, d)
        negatives = self.queue.clone()  # (K, d) snapshot: the enqueue below must not alter it
        positive = (s * t).sum(dim=1, keepdim=True)  # (B, 1)
        logits = torch.cat([positive - self.params.margin, s @ negatives.T], dim=1) / self.params.tau  # (B, 1+K)
        target = torch.zeros(s.shape[0], dtype=torch.int64, device=s.device)
        loss = F.cross_entropy(logits, target)
        if self.training:
            self.enqueue(t)
        return {"loss": loss, "infonce": loss.detach(), "pos_cos": positive.detach().mean()}

    @torch.no_grad()
    def enqueue(self, teacher_unit: Tensor) -> None:
        """Write the gathered unit teacher embeddings (n, d) over the oldest rows; advance the pointer."""
        keys = all_gather_nograd(teacher_unit)
        n, size = keys.shape[0], self.queue.shape[0]
        if size % n:
            raise ConfigError(
                f"distill.qud.queue_size={size} is not a multiple of the global batch of {n} embeddings "
                "(per-rank batch x ranks): choose a queue size that is, and drop the last short batch"
            )
        ptr = int(self.queue_ptr)
        self.queue[ptr : ptr + n] = keys
        self.queue_ptr.fill_((ptr + n) % size)
