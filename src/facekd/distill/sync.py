"""Cross-rank helpers for method state (QUD's queue, AdaDistill's centres).

Every rank must apply the same update to shared state, so updates are computed from tensors
gathered over all ranks, in rank order. Without an initialised process group every helper is the
identity, so the single-process path never needs ``torch.distributed``.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn


def is_distributed() -> bool:
    """True when a process group with more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@torch.no_grad()
def all_gather_nograd(x: Tensor) -> Tensor:
    """Concatenate ``x`` (n_r, ...) from every rank along dim 0, rank 0 first; no gradient.

    Ranks may hold different n_r (a short last batch): sizes are exchanged first and the rows
    padded to the largest, then trimmed back.
    """
    x = x.detach()
    if not is_distributed():
        return x
    world = dist.get_world_size()
    size = torch.tensor([x.shape[0]], dtype=torch.int64, device=x.device)
    sizes = [torch.empty_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    counts = [int(n) for n in sizes]
    longest = max(counts)
    padded = x.new_zeros((longest, *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[:n] for part, n in zip(parts, counts)], dim=0)


@torch.no_grad()
def broadcast_buffers(module: nn.Module, src: int = 0) -> None:
    """Copy every buffer of ``module`` from rank ``src`` to all ranks (identity on one rank).

    Call after building a method (and after moving it to its device) so random initial state
    (QUD's queue, AdaDistill's centres) is identical even if ranks were seeded differently.
    """
    if not is_distributed():
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src)
