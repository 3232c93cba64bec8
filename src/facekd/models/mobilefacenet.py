"""The two MobileFaceNets people mean, each state_dict-compatible with its origin at width 1.0.

- ``mfn``: the 1.2M-parameter student of the QUD / AdaDistill / EKD tables (cavaface layout as in
  fdbtrs/AdaDistill and jankolf/QUD ``backbones/mobilefacenet.py``): named stages ``conv1 ...
  conv_6_sep`` and a GDC ``output_layer`` ending in a non-affine BatchNorm1d.
- ``mbf``: insightface ``arcface_torch`` ``get_mbf(blocks=(1, 4, 6, 2), scale=2)``: a ModuleList
  ``layers`` of Sequential-wrapped blocks, ``conv_sep`` and a GDC ``features``.

Both map 112x112 to 7x7 with four stride-2 steps; the 7x7 depthwise GDC conv then pools it.
Channel counts are multiples of one unit (64 at width 1.0), so ``width`` scales them evenly.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from facekd.models._layers import channel_unit, trunk_autocast


def _init_weights(model: nn.Module) -> None:
    """Kaiming-normal (fan_out) convolutions and linears, unit BN scale: both origins do this."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int, groups: int) -> nn.Conv2d:
    """Bias-free conv; 3x3 keeps the size (padding 1), 1x1 and the 7x7 GDC use no padding."""
    return nn.Conv2d(in_ch, out_ch, kernel, stride, padding=1 if kernel == 3 else 0, groups=groups, bias=False)


# --- mfn: cavaface / AdaDistill / QUD layout ------------------------------------------------


class ConvBN(nn.Module):
    """conv -> BN (-> PReLU when ``act``); keys ``conv bn (prelu)``."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel: int = 1, stride: int = 1, groups: int = 1, act: bool = True
    ) -> None:
        super().__init__()
        self.conv = _conv(in_ch, out_ch, kernel, stride, groups)
        self.bn = nn.BatchNorm2d(out_ch)
        self.prelu = nn.PReLU(out_ch) if act else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn(self.conv(x))
        return x if self.prelu is None else self.prelu(x)


class DepthWise(nn.Module):
    """Inverted bottleneck: 1x1 expand to ``mid``, 3x3 depthwise (stride), 1x1 linear project."""

    def __init__(self, in_ch: int, out_ch: int, mid: int, stride: int = 2, residual: bool = False) -> None:
        super().__init__()
        self.conv = ConvBN(in_ch, mid)
        self.conv_dw = ConvBN(mid, mid, kernel=3, stride=stride, groups=mid)
        self.project = ConvBN(mid, out_ch, act=False)
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        out = self.project(self.conv_dw(self.conv(x)))
        return out + x if self.residual else out


class ResidualStack(nn.Module):
    """``depth`` stride-1 residual DepthWise blocks under ``model``."""

    def __init__(self, ch: int, mid: int, depth: int) -> None:
        super().__init__()
        self.model = nn.Sequential(*[DepthWise(ch, ch, mid, stride=1, residual=True) for _ in range(depth)])

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class GDCOutput(nn.Module):
    """Global depthwise 7x7 conv, linear to the embedding, non-affine BatchNorm1d."""

    def __init__(self, ch: int, embedding_size: int) -> None:
        super().__init__()
        self.conv_6_dw = ConvBN(ch, ch, kernel=7, groups=ch, act=False)
        self.linear = nn.Linear(ch, embedding_size, bias=False)
        self.bn = nn.BatchNorm1d(embedding_size, affine=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.linear(torch.flatten(self.conv_6_dw(x), 1)))


class MobileFaceNet(nn.Module):
    """``mfn``: (B, 3, 112, 112) -> (B, embedding_size)."""

    def __init__(self, *, embedding_size: int = 512, width: float = 1.0, fp16: bool = False) -> None:
        super().__init__()
        self.fp16 = fp16
        u = channel_unit(width)  # 64 at width 1
        self.conv1 = ConvBN(3, u, kernel=3, stride=2)
        self.conv2_dw = ConvBN(u, u, kernel=3, groups=u)
        self.conv_23 = DepthWise(u, u, mid=2 * u)
        self.conv_3 = ResidualStack(u, mid=2 * u, depth=4)
        self.conv_34 = DepthWise(u, 2 * u, mid=4 * u)
        self.conv_4 = ResidualStack(2 * u, mid=4 * u, depth=6)
        self.conv_45 = DepthWise(2 * u, 2 * u, mid=8 * u)
        self.conv_5 = ResidualStack(2 * u, mid=4 * u, depth=2)
        self.conv_6_sep = ConvBN(2 * u, 8 * u)
        self.output_layer = GDCOutput(8 * u, embedding_size)
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        with trunk_autocast(x, self.fp16):
            for stage in (self.conv1, self.conv2_dw, self.conv_23, self.conv_3, self.conv_34,
                          self.conv_4, self.conv_45, self.conv_5, self.conv_6_sep):
                x = stage(x)
        return self.output_layer(x.float() if self.fp16 else x)


# --- mbf: insightface arcface_torch layout --------------------------------------------------


def _block(in_ch: int, out_ch: int, kernel: int = 1, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Module:
    """insightface ConvBlock (act) / LinearBlock: keys ``layers.0`` conv, ``.1`` BN, ``.2`` PReLU."""
    return _Wrapped(
        _conv(in_ch, out_ch, kernel, stride, groups),
        nn.BatchNorm2d(out_ch),
        *([nn.PReLU(out_ch)] if act else []),
    )


class _Wrapped(nn.Module):
    """A Sequential stored under ``layers`` (insightface wraps every block like this)."""

    def __init__(self, *modules: nn.Module, residual: bool = False) -> None:
        super().__init__()
        self.layers = nn.Sequential(*modules)
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        out = self.layers(x)
        return out + x if self.residual else out


def _mbf_depthwise(in_ch: int, out_ch: int, mid: int, stride: int, residual: bool = False) -> _Wrapped:
    return _Wrapped(
        _block(in_ch, mid),
        _block(mid, mid, kernel=3, stride=stride, groups=mid),
        _block(mid, out_ch, act=False),
        residual=residual,
    )


def _mbf_residual(ch: int, mid: int, depth: int) -> _Wrapped:
    return _Wrapped(*[_mbf_depthwise(ch, ch, mid, stride=1, residual=True) for _ in range(depth)])


class MobileFaceNetMBF(nn.Module):
    """``mbf``: insightface's MobileFaceNet, (B, 3, 112, 112) -> (B, embedding_size)."""

    def __init__(
        self,
        *,
        embedding_size: int = 512,
        width: float = 1.0,
        fp16: bool = False,
        blocks: Sequence[int] = (1, 4, 6, 2),
        scale: int = 2,
    ) -> None:
        super().__init__()
        self.fp16 = fp16
        u = channel_unit(width)  # 64 at width 1
        c1, c2 = u * scale, 2 * u * scale  # 128, 256 at scale 2
        stem = (
            _block(c1, c1, kernel=3, groups=u)  # grouped (64 groups), not depthwise, as in insightface
            if blocks[0] == 1
            else _mbf_residual(c1, mid=2 * u, depth=blocks[0])
        )
        self.layers = nn.ModuleList([
            _block(3, c1, kernel=3, stride=2),
            stem,
            _mbf_depthwise(c1, c1, mid=2 * u, stride=2),
            _mbf_residual(c1, mid=2 * u, depth=blocks[1]),
            _mbf_depthwise(c1, c2, mid=4 * u, stride=2),
            _mbf_residual(c2, mid=4 * u, depth=blocks[2]),
            _mbf_depthwise(c2, c2, mid=8 * u, stride=2),
            _mbf_residual(c2, mid=4 * u, depth=blocks[3]),
        ])
        self.conv_sep = _block(c2, 8 * u)
        self.features = _Wrapped(
            _block(8 * u, 8 * u, kernel=7, groups=8 * u, act=False),
            nn.Flatten(),
            nn.Linear(8 * u, embedding_size, bias=False),
            nn.BatchNorm1d(embedding_size),
        )
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        with trunk_autocast(x, self.fp16):
            for layer in self.layers:
                x = layer(x)
        x = self.conv_sep(x.float() if self.fp16 else x)
        return self.features(x)
