"""Model size and cost: parameters and multiply-accumulates (MACs) per image."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn


def count_params(model: nn.Module) -> int:
    """Number of parameters, trainable or not (insightface's fixed BN scale included)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: tuple[int, ...] = (1, 3, 112, 112)) -> int:
    """MACs of one forward pass on ``input_size`` (FLOPs of convolutions and matmuls / 2).

    Runs on the meta device (shapes only, no arithmetic, no copy of the weights), in eval mode so
    no BatchNorm statistics change. Normalisation and activations are not counted, as usual.
    """
    import torch
    from torch.func import functional_call
    from torch.utils.flop_counter import FlopCounterMode

    state = {name: torch.empty_like(t, device="meta") for name, t in model.state_dict(keep_vars=True).items()}
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            functional_call(model, state, (torch.empty(input_size, device="meta"),))
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def describe_model(model: nn.Module, input_size: tuple[int, ...] = (1, 3, 112, 112)) -> dict:
    """``{"params", "params_m", "gmacs"}`` for reports and ``meta.json`` (MACs per image)."""
    params = count_params(model)
    macs = count_macs(model, input_size) / input_size[0]
    return {"params": params, "params_m": round(params / 1e6, 4), "gmacs": round(macs / 1e9, 4)}
