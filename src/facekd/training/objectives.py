"""Training objectives for :func:`facekd.training.loop.fit` that are not distillation methods.

An objective is an ``nn.Module`` called as ``objective(emb, batch) -> {"loss": ..., <parts>}``.
Optional hooks the loop reads: ``handles_distributed`` (True: the objective synchronises itself
across ranks, so the loop neither broadcasts its state nor averages its gradients) and
``sharded_parameters()`` (``{state_dict name: parameter}`` split by rows across ranks, gathered
into world-size-independent checkpoints).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor, nn

from facekd.models.heads import MarginHead
from facekd.models.partialfc import PartialFC

if TYPE_CHECKING:
    from facekd.training.batch import StepBatch


class HeadObjective(nn.Module):
    """Margin-softmax classification: a :class:`MarginHead` or a :class:`PartialFC` on the labels."""

    def __init__(self, head: MarginHead | PartialFC) -> None:
        super().__init__()
        self.head = head
        self.handles_distributed = isinstance(head, PartialFC) and head.distributed

    def forward(self, emb: Tensor, batch: StepBatch) -> dict[str, Tensor]:
        """emb (B, d) raw embeddings, batch.label (B,) -> {"loss": mean margin softmax CE}."""
        labels = batch.label
        loss = self.head.loss(emb, labels) if isinstance(self.head, MarginHead) else self.head(emb, labels)
        return {"loss": loss}

    def sharded_parameters(self) -> dict[str, nn.Parameter]:
        return {"head.weight": self.head.weight} if self.handles_distributed else {}

    def full_weight(self) -> Tensor:
        """(C, d) class centres (collective for a sharded PartialFC)."""
        if isinstance(self.head, PartialFC):
            return self.head.full_weight()
        return self.head.weight.detach().clone()
