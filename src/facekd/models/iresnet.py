"""iResNet backbones, state_dict- and forward-compatible with insightface ``arcface_torch``.

Module names (``conv1 bn1 prelu layer1..4 bn2 dropout fc features``; blocks with
``bn1 conv1 bn2 prelu conv2 bn3 downsample``) and shapes match insightface's ``backbone.pth`` at
width 1.0, so its released weights load with ``strict=True`` and give the same embedding.
A 112x112 input is halved by each of the four stages to 7x7 before the fully connected layer.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facekd.models._layers import channel_unit, trunk_autocast

# Stage depths (blocks per stage) by name. iresnet10 is the usual ResNet-10 (1 + 4 * 2 + 1 layers);
# iresnet_tiny has the same depths on a quarter of the channels, for tests and the embedded default.
IRESNET_LAYERS: dict[str, tuple[int, int, int, int]] = {
    "iresnet_tiny": (1, 1, 1, 1),
    "iresnet10": (1, 1, 1, 1),
    "iresnet18": (2, 2, 2, 2),
    "iresnet34": (3, 4, 6, 3),
    "iresnet50": (3, 4, 14, 3),
    "iresnet100": (3, 13, 30, 3),
    "iresnet200": (6, 26, 60, 6),
}
# Width of the first stage at width=1.0 (insightface: 64; tiny: 16).
IRESNET_BASE: dict[str, int] = {"iresnet_tiny": 16}

_SPATIAL = 7 * 7  # final feature map of a 112x112 input after four stride-2 stages


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


class SubsampledPointwiseConv(nn.Conv2d):
    """A 1x1 stride-s convolution, computed as an ``s``-subsample followed by a unit-stride 1x1 conv.

    Why: on AVX-512 CPUs, torch 2.13's oneDNN (3.12) segfaults in the backward of a channels_last
    1x1 stride-2 convolution with few channels (3 or 8 seen; 16 and 32 did not), which is exactly
    iResNet's projection shortcut at the embedded widths::

        x = torch.randn(32, 8, 56, 56).contiguous(memory_format=torch.channels_last).requires_grad_()
        m = nn.Conv2d(8, 8, 1, 2, 0, bias=False).to(memory_format=torch.channels_last)
        m(x).square().sum().backward()   # SIGSEGV on AVX-512 (fine in NCHW or with ONEDNN_MAX_CPU_ISA=AVX2)

    oneDNN serves a strided 1x1 conv by copying the input to a unit-stride buffer inside the kernel;
    doing that copy here (a strided view) keeps the faulty path out of reach on every CPU. A 1x1
    kernel without padding only reads the pixels at multiples of the stride, so the result is the
    same sum over channels; the module is still an ``nn.Conv2d`` with ``stride=s``, so
    insightface's state_dict keys (``downsample.0.weight``) and the model's description do not change.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__(in_ch, out_ch, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        step_h, step_w = self.stride
        return F.conv2d(x[:, :, ::step_h, ::step_w], self.weight, self.bias)  # (B, out, ceil(H/s), ceil(W/s))


class IBasicBlock(nn.Module):
    """Pre-activation-style block: BN, conv3x3, BN, PReLU, conv3x3(stride), BN, plus shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch, eps=1e-05)
        self.conv1 = _conv3x3(in_ch, out_ch)
        self.bn2 = nn.BatchNorm2d(out_ch, eps=1e-05)
        self.prelu = nn.PReLU(out_ch)
        self.conv2 = _conv3x3(out_ch, out_ch, stride)
        self.bn3 = nn.BatchNorm2d(out_ch, eps=1e-05)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                SubsampledPointwiseConv(in_ch, out_ch, stride),
                nn.BatchNorm2d(out_ch, eps=1e-05),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut


class IResNet(nn.Module):
    """iResNet trunk + BN-dropout-FC-BN embedding head. Input (B, 3, 112, 112) -> (B, embedding_size)."""

    def __init__(
        self,
        layers: Sequence[int],
        *,
        embedding_size: int = 512,
        width: float = 1.0,
        dropout: float = 0.0,
        fp16: bool = False,
        base: int = 64,
    ) -> None:
        super().__init__()
        self.fp16 = fp16
        unit = channel_unit(width, base)
        stage_ch = [unit, 2 * unit, 4 * unit, 8 * unit]
        self.conv1 = nn.Conv2d(3, unit, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(unit, eps=1e-05)
        self.prelu = nn.PReLU(unit)
        in_ch = unit
        for index, (depth, out_ch) in enumerate(zip(layers, stage_ch, strict=True), start=1):
            self.add_module(f"layer{index}", _make_stage(in_ch, out_ch, depth))
            in_ch = out_ch
        self.bn2 = nn.BatchNorm2d(in_ch, eps=1e-05)
        self.dropout = nn.Dropout(p=dropout, inplace=True)
        self.fc = nn.Linear(in_ch * _SPATIAL, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size, eps=1e-05)
        self._init_weights()

    def _init_weights(self) -> None:
        """insightface's initialisation; the last BN's scale is fixed to 1 (only its shift learns)."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.1)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.ones_(self.features.weight)
        self.features.weight.requires_grad = False

    def forward(self, x: Tensor) -> Tensor:
        with trunk_autocast(x, self.fp16):
            x = self.prelu(self.bn1(self.conv1(x)))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            # flatten copies a channels_last map into (C, H, W) order, which fc's weight expects
            x = self.dropout(torch.flatten(self.bn2(x), 1))  # (B, 8u * 49)
        x = self.fc(x.float() if self.fp16 else x)  # (B, embedding_size)
        return self.features(x)


def _make_stage(in_ch: int, out_ch: int, depth: int) -> nn.Sequential:
    """One stage: a stride-2 block with projection shortcut, then ``depth - 1`` identity blocks."""
    blocks = [IBasicBlock(in_ch, out_ch, stride=2)]
    blocks += [IBasicBlock(out_ch, out_ch) for _ in range(depth - 1)]
    return nn.Sequential(*blocks)


def build_iresnet(
    name: str, *, embedding_size: int = 512, width: float = 1.0, dropout: float = 0.0, fp16: bool = False
) -> IResNet:
    """The iResNet called ``name`` (a key of ``IRESNET_LAYERS``)."""
    return IResNet(
        IRESNET_LAYERS[name],
        embedding_size=embedding_size,
        width=width,
        dropout=dropout,
        fp16=fp16,
        base=IRESNET_BASE.get(name, 64),
    )
