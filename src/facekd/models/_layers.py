"""Small pieces shared by the backbones: channel widths and the fp16 trunk context."""
from __future__ import annotations

import contextlib

import torch
from torch import Tensor


def channel_unit(width: float, base: int = 64) -> int:
    """Channels of the narrowest stage at this width multiplier, at least 8.

    Every other channel count of a backbone is a whole multiple of this unit, so grouped
    convolutions keep dividing evenly at any width (width 1.0 gives ``base``).
    """
    return max(8, int(round(base * width)))


def trunk_autocast(x: Tensor, fp16: bool) -> contextlib.AbstractContextManager:
    """fp16 autocast for the convolutional trunk on CUDA (insightface's ``fp16`` flag).

    Off on CPU: half/bfloat16 convolutions there are far slower than float32.
    """
    if fp16 and x.is_cuda:
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return contextlib.nullcontext()
