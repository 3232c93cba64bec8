"""PartialFC: a margin-softmax head whose class centres are sharded across ranks.

Rank r of W holds a contiguous slice of the C centres (the first ``C % W`` ranks one more, as in
insightface ``partial_fc_v2.py``). Each step every rank gathers the embeddings and labels of the
global batch, scores them against its centres (optionally only the batch's positive classes plus
uniformly sampled negatives, ``sample_rate``), and a softmax cross-entropy whose max and
denominator are all-reduced gives every rank the same loss over the global batch. Without a
process group it is a single shard, i.e. an ordinary margin head.

Gradients are exact for that global-batch mean loss: at ``sample_rate=1`` the loss and the
gradients of the local embeddings and of each shard equal those of one :class:`MarginHead` over
the concatenated batch. When the backbone is wrapped in DDP, which *averages* its gradients
over ranks, pass ``backbone_grads_averaged=True``: the embedding gradient is then multiplied by
the world size so that the averaged backbone gradient is still the exact one.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from facekd.errors import ConfigError, TrainingError
from facekd.models.heads import check_kind, check_labels, cosine_to_centres, margin_logits


def _world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard_bounds(num_classes: int, rank: int, world: int) -> tuple[int, int]:
    """(first class, number of classes) held by ``rank``: contiguous, sizes differ by at most one."""
    base, extra = divmod(num_classes, world)
    return base * rank + min(rank, extra), base + int(rank < extra)


def _gather_rows(tensor: Tensor, world: int) -> tuple[Tensor, list[int]]:
    """All-gather (n_r, ...) from every rank into (sum n_r, ...); ranks may hold different n_r."""
    sizes = [torch.zeros(1, dtype=torch.long, device=tensor.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([tensor.shape[0]], device=tensor.device))
    counts = [int(s) for s in sizes]
    padded = tensor.new_zeros((max(counts), *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[:n] for part, n in zip(parts, counts, strict=True)]), counts


class _AllGatherWithGrad(torch.autograd.Function):
    """Concatenate every rank's (n_r, d) rows; backward sums each rank's gradient of our rows."""

    @staticmethod
    def forward(ctx, local: Tensor, grad_factor: float) -> Tensor:  # type: ignore[override]
        rank, world = _world()
        gathered, counts = _gather_rows(local, world)
        ctx.offset, ctx.count, ctx.grad_factor = sum(counts[:rank]), counts[rank], grad_factor
        return gathered

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        # Every rank's loss depends on all rows through its shard of centres: sum those parts.
        grad = grad.contiguous()
        dist.all_reduce(grad, dist.ReduceOp.SUM)
        return grad[ctx.offset : ctx.offset + ctx.count] * ctx.grad_factor, None


class _ShardedSoftmaxCE(torch.autograd.Function):
    """Mean cross-entropy over the global batch of logits split by columns across ranks.

    logits: (B, C_r) this rank's columns; targets: (B,) column in this shard or -1.
    Expects the same upstream gradient on every rank (every rank holds the same loss).
    """

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, distributed: bool) -> Tensor:  # type: ignore[override]
        row_max = logits.max(dim=1, keepdim=True).values  # (B, 1)
        if distributed:
            dist.all_reduce(row_max, dist.ReduceOp.MAX)
        shifted = logits - row_max  # (B, C_r), <= 0
        has_target = targets >= 0
        column = targets.clamp_min(0).unsqueeze(1)  # (B, 1)
        target_logit = shifted.gather(1, column).squeeze(1) * has_target  # (B,), 0 off-shard
        probs = shifted.exp_()  # (B, C_r), unnormalised; shifted is ours, reuse its memory
        denom = probs.sum(dim=1, keepdim=True)  # (B, 1)
        if distributed:
            dist.all_reduce(denom, dist.ReduceOp.SUM)
            dist.all_reduce(target_logit, dist.ReduceOp.SUM)
        ctx.save_for_backward(probs.div_(denom), column, has_target)
        # -log softmax at the target, without ever forming a tiny probability
        return (denom.squeeze(1).log() - target_logit).mean()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        probs, column, has_target = ctx.saved_tensors
        one_hot = has_target.to(probs.dtype).unsqueeze(1)  # (B, 1) subtracted at the target column
        grad_logits = probs.scatter_add(1, column, -one_hot)  # softmax - onehot
        return grad_logits * (grad / probs.shape[0]), None, None


class PartialFC(nn.Module):
    """Sharded margin head; ``forward(local_emb, local_labels)`` returns the global-batch loss.

    Build it after ``init_process_group`` (the shard is fixed at construction). ``weight`` is this
    rank's (num_local, d) slice of the (C, d) centres, rows ``class_start ..``.
    """

    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        kind: str = "arcface",
        scale: float = 64.0,
        margin: float = 0.5,
        sample_rate: float = 1.0,
        *,
        backbone_grads_averaged: bool = False,
    ) -> None:
        super().__init__()
        check_kind(kind)
        if not 0.0 < sample_rate <= 1.0:
            raise ConfigError(f"head.sample_rate must be in (0, 1], got {sample_rate}")
        self.rank, self.world_size = _world()
        if num_classes < self.world_size:
            raise ConfigError(
                f"PartialFC needs at least one class per rank: {num_classes} classes, {self.world_size} ranks"
            )
        self.class_start, self.num_local = shard_bounds(num_classes, self.rank, self.world_size)
        self.num_classes, self.embedding_size = num_classes, embedding_size
        self.kind, self.scale, self.margin, self.sample_rate = kind, scale, margin, sample_rate
        self.num_sample = max(1, int(sample_rate * self.num_local))
        self.grad_factor = float(self.world_size) if backbone_grads_averaged else 1.0
        self.weight = nn.Parameter(torch.normal(0.0, 0.01, (self.num_local, embedding_size)))
        self.last_sample: Tensor | None = None  # shard rows used in the last step (sample_rate < 1)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def forward(self, local_emb: Tensor, local_labels: Tensor) -> Tensor:
        """Scalar mean margin-softmax loss over the global batch (same value on every rank)."""
        check_labels(local_labels, self.num_classes)
        emb, labels = self._gather(local_emb, local_labels.long().reshape(-1))
        in_shard = (labels >= self.class_start) & (labels < self.class_start + self.num_local)
        targets = torch.where(in_shard, labels - self.class_start, -1)  # (B,) shard column or -1
        weight = self.weight
        if self.sample_rate < 1.0:
            weight, targets = self._sample(targets)
        logits = margin_logits(cosine_to_centres(emb, weight), targets, self.kind, self.scale, self.margin)
        return _ShardedSoftmaxCE.apply(logits, targets, self.distributed)

    def _gather(self, local_emb: Tensor, local_labels: Tensor) -> tuple[Tensor, Tensor]:
        """(B, d) embeddings with gradient back to ours, (B,) labels of the global batch."""
        if not self.distributed:
            return local_emb, local_labels
        emb = _AllGatherWithGrad.apply(local_emb, self.grad_factor)
        labels, _ = _gather_rows(local_labels, self.world_size)
        return emb, labels

    def _sample(self, targets: Tensor) -> tuple[Tensor, Tensor]:
        """Every positive centre of the batch plus uniform negatives, ``num_sample`` in all.

        Returns the (S, d) sampled centres and targets remapped to their rows (-1 kept).
        """
        with torch.no_grad():
            positive = torch.unique(targets[targets >= 0])  # sorted
            if positive.numel() >= self.num_sample:
                index = positive
            else:
                score = torch.rand(self.num_local, device=targets.device)
                score[positive] = 2.0  # above any uniform draw: positives always win
                index = torch.topk(score, self.num_sample).indices.sort().values
            remapped = torch.where(targets >= 0, torch.searchsorted(index, targets.clamp_min(0)), -1)
        self.last_sample = index
        return self.weight[index], remapped

    @torch.no_grad()
    def full_weight(self) -> Tensor:
        """(C, d) all class centres in class order (gathered from every rank; a detached copy)."""
        if not self.distributed:
            return self.weight.detach().clone()
        full, _ = _gather_rows(self.weight.detach(), self.world_size)
        return full

    @torch.no_grad()
    def load_full_weight(self, full: Tensor) -> None:
        """Set this rank's shard from all (C, d) centres (resume on any number of ranks)."""
        if tuple(full.shape) != (self.num_classes, self.embedding_size):
            raise TrainingError(
                f"head weight has shape {tuple(full.shape)}, this head needs "
                f"({self.num_classes}, {self.embedding_size}); resume with the same classes and embedding size"
            )
        self.weight.copy_(full[self.class_start : self.class_start + self.num_local])

    def extra_repr(self) -> str:
        return (
            f"{self.num_classes}, {self.embedding_size}, kind={self.kind}, s={self.scale}, "
            f"m={self.margin}, sample_rate={self.sample_rate}, "
            f"shard=[{self.class_start}, {self.class_start + self.num_local})"
        )
