"""Single-process by default, multi-process through ``torchrun`` (DDP) when its environment is set.

``init_distributed`` reads torchrun's ``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK``; without them no
process group is created and every helper here is a no-op. Rank 0 alone writes checkpoints,
outputs and tracking. The data order is a global permutation cut into global batches, each split
evenly across ranks (see :func:`rank_slice`), so a checkpoint written by N ranks resumes on M.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from facekd.errors import TrainingError

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: its rank among ``world_size`` processes and its device."""

    rank: int
    local_rank: int
    world_size: int
    device: "torch.device"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when a process group exists (collectives must be called on every rank)."""
        import torch.distributed as torch_dist

        return torch_dist.is_available() and torch_dist.is_initialized()


def _default_device(local_rank: int) -> "torch.device":
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed() -> DistInfo:
    """Join torchrun's process group (gloo on CPU, nccl on CUDA), or describe the single process."""
    import torch.distributed as torch_dist

    if "WORLD_SIZE" not in os.environ:
        return DistInfo(rank=0, local_rank=0, world_size=1, device=_default_device(0))
    try:
        world_size = int(os.environ["WORLD_SIZE"])
        rank = int(os.environ["RANK"])
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
    except (KeyError, ValueError) as err:
        raise TrainingError(
            f"WORLD_SIZE is set but the torchrun environment is incomplete or malformed ({err}); "
            "launch with `torchrun` or unset WORLD_SIZE for a single process"
        ) from None
    device = _default_device(local_rank)
    if not torch_dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch_dist.init_process_group(backend=backend, init_method="env://")
        log.info("rank %d/%d joined the %s process group on %s", rank, world_size, backend, device)
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def current_dist() -> DistInfo:
    """The DistInfo of an already initialised process group (or of a single process)."""
    import torch.distributed as torch_dist

    if torch_dist.is_available() and torch_dist.is_initialized():
        rank = torch_dist.get_rank()
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        import torch

        device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
        return DistInfo(rank=rank, local_rank=local_rank, world_size=torch_dist.get_world_size(), device=device)
    return DistInfo(rank=0, local_rank=0, world_size=1, device=_default_device(0))


def shutdown() -> None:
    """Leave the process group, if one was joined."""
    import torch.distributed as torch_dist

    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def wrap_backbone(backbone: "nn.Module", info: DistInfo) -> "nn.Module":
    """DDP around the backbone when a process group exists; the backbone itself otherwise."""
    if not info.distributed:
        return backbone
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [info.local_rank] if info.device.type == "cuda" else None
    return DistributedDataParallel(backbone, device_ids=device_ids)


def unwrap(model: "nn.Module") -> "nn.Module":
    """The module inside a DDP wrapper (checkpoints hold the plain module's keys)."""
    return getattr(model, "module", model)


def all_reduce_sum(tensor: "torch.Tensor", info: DistInfo) -> "torch.Tensor":
    """Sum ``tensor`` over ranks in place (no-op on one process); returns it."""
    if info.distributed:
        import torch.distributed as torch_dist

        torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.SUM)
    return tensor


def average_gradients(params: Iterable["torch.nn.Parameter"], info: DistInfo) -> None:
    """Average the gradients of replicated (non-DDP) parameters, e.g. a margin head's weight."""
    if not info.distributed:
        return
    import torch.distributed as torch_dist

    for p in params:
        if p.grad is not None:
            torch_dist.all_reduce(p.grad, op=torch_dist.ReduceOp.SUM)
            p.grad.div_(info.world_size)


def broadcast_state(module: "nn.Module", info: DistInfo) -> None:
    """Copy rank 0's parameters and buffers to every rank (after a resume or a random init)."""
    if not info.distributed:
        return
    import torch.distributed as torch_dist

    for tensor in list(module.parameters()) + list(module.buffers()):
        torch_dist.broadcast(tensor.data, src=0)


def rank_slice(global_batch: int, info: DistInfo) -> slice:
    """This rank's share of a global batch (equal, contiguous shares)."""
    if global_batch % info.world_size:
        raise TrainingError(
            f"optim.batch_size={global_batch} (the global batch) must be divisible by the "
            f"{info.world_size} processes; change the batch size or --nproc_per_node"
        )
    share = global_batch // info.world_size
    return slice(info.rank * share, (info.rank + 1) * share)


def _row_counts(rows: int, info: DistInfo, device: "torch.device") -> list[int]:
    import torch
    import torch.distributed as torch_dist

    counts = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(info.world_size)]
    torch_dist.all_gather(counts, torch.tensor([rows], dtype=torch.int64, device=device))
    return [int(c) for c in counts]


def gather_shards(local: "torch.Tensor", info: DistInfo) -> "torch.Tensor":
    """Concatenate every rank's row shard (n_r, ...) in rank order (collective; identity on 1 rank)."""
    if not info.distributed:
        return local
    import torch
    import torch.distributed as torch_dist

    counts = _row_counts(local.shape[0], info, local.device)
    padded = local.new_zeros((max(counts), *local.shape[1:]))
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(info.world_size)]
    torch_dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[:n] for part, n in zip(parts, counts)])


def take_shard(full: "torch.Tensor", local_rows: int, info: DistInfo) -> "torch.Tensor":
    """This rank's rows of ``full`` when every rank holds ``local_rows`` consecutive rows (collective)."""
    if not info.distributed:
        return full
    counts = _row_counts(local_rows, info, info.device)
    if sum(counts) != full.shape[0]:
        raise TrainingError(
            f"a sharded tensor of {full.shape[0]} rows cannot be split into the ranks' shards {counts}; "
            "the checkpoint was written for a different number of classes"
        )
    start = sum(counts[: info.rank])
    return full[start:start + local_rows]
