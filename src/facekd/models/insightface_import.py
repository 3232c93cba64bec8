"""Import insightface ``arcface_torch`` weights into a facekd model directory.

``backbone.pth`` (released models) or ``model.pt`` (training output) is a plain backbone
state_dict. The class centres of a PartialFC run live in one ``checkpoint_gpu_{rank}.pt`` per
rank under ``"state_dict_softmax_fc"`` -> ``"weight"`` (num_local, d), contiguous class slices in
rank order (partial_fc_v2.py / train_v2.py); older ``softmax_fc_gpu_{rank}.pt`` files hold the
tensor itself. Both are accepted.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facekd.errors import DataError
from facekd.models.store import load_state_file, load_strict, read_meta, save_model_dir

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

_PFC_KEY = "state_dict_softmax_fc"  # insightface train_v2.py checkpoint key of the PartialFC state


def _strip_ddp_prefix(state: dict[str, Any]) -> dict[str, Any]:
    """Drop the ``module.`` prefix a DDP-wrapped save leaves on every key."""
    if state and all(key.startswith("module.") for key in state):
        return {key[len("module."):]: value for key, value in state.items()}
    return state


def _shard_weight(path: Path) -> torch.Tensor:
    """(num_local, d) centres from one insightface PartialFC checkpoint."""
    import torch

    state = load_state_file(path)
    if isinstance(state, dict) and _PFC_KEY in state:
        state = state[_PFC_KEY]
    if isinstance(state, dict):
        state = state.get("weight")
    if not isinstance(state, torch.Tensor) or state.dim() != 2:
        raise DataError(f"{path}: no PartialFC class centres found (expected '{_PFC_KEY}' -> 'weight', 2-D)")
    return state.float()


def _head_weight(shards: Sequence[str | Path], embedding_size: int) -> torch.Tensor:
    """(C, d) centres: the shards concatenated in the given (rank) order."""
    import torch

    parts = [_shard_weight(Path(p)) for p in shards]
    for path, part in zip(shards, parts, strict=True):
        if part.shape[1] != embedding_size:
            raise DataError(
                f"{path}: class centres are {part.shape[1]}-d, the backbone's embedding is {embedding_size}-d"
            )
    return torch.cat(parts)


def import_insightface(
    backbone_pth: str | Path,
    arch: str,
    out_dir: str | Path,
    *,
    embedding_size: int = 512,
    head_shards: Sequence[str | Path] = (),
) -> dict[str, Any]:
    """Load an insightface backbone (strict) and optional PartialFC shards; write a model dir.

    ``head_shards`` must be in rank order (``checkpoint_gpu_0.pt``, ``checkpoint_gpu_1.pt``, ...).
    Returns the written ``meta.json`` content.
    """
    from facekd.models.registry import create_backbone

    backbone_pth = Path(backbone_pth)
    state = load_state_file(backbone_pth)
    if isinstance(state, dict):
        state = _strip_ddp_prefix(state)
    model = create_backbone(arch, embedding_size=embedding_size)
    load_strict(model, state, backbone_pth)
    head = _head_weight(head_shards, embedding_size) if head_shards else None
    meta = {"source": "insightface", "source_file": backbone_pth.name}
    save_model_dir(out_dir, model.eval(), meta, head=head)
    logger.info("imported %s as %s into %s", backbone_pth, arch, out_dir)
    return read_meta(out_dir)
