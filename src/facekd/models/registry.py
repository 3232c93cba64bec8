"""Backbone registry: name -> builder. ``facekd models`` lists the names.

Importing this module does not import torch; a builder imports its backbone module when called.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from facekd.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

_IRESNETS = ("iresnet_tiny", "iresnet10", "iresnet18", "iresnet34", "iresnet50", "iresnet100", "iresnet200")


def _iresnet(name: str, *, embedding_size: int, width: float, dropout: float, fp16: bool) -> nn.Module:
    from facekd.models.iresnet import build_iresnet

    return build_iresnet(name, embedding_size=embedding_size, width=width, dropout=dropout, fp16=fp16)


def _mfn(*, embedding_size: int, width: float, dropout: float, fp16: bool) -> nn.Module:
    from facekd.models.mobilefacenet import MobileFaceNet

    _no_dropout("mfn", dropout)
    return MobileFaceNet(embedding_size=embedding_size, width=width, fp16=fp16)


def _mbf(*, embedding_size: int, width: float, dropout: float, fp16: bool) -> nn.Module:
    from facekd.models.mobilefacenet import MobileFaceNetMBF

    _no_dropout("mbf", dropout)
    return MobileFaceNetMBF(embedding_size=embedding_size, width=width, fp16=fp16)


def _no_dropout(arch: str, dropout: float) -> None:
    if dropout:
        raise ConfigError(f"backbone.dropout: '{arch}' has no dropout layer; set backbone.dropout to 0")


BACKBONES: Mapping[str, Callable[..., Any]] = MappingProxyType(
    {name: functools.partial(_iresnet, name) for name in _IRESNETS} | {"mfn": _mfn, "mbf": _mbf}
)


def list_backbones() -> list[str]:
    """Every registered backbone name."""
    return list(BACKBONES)


def create_backbone(
    name: str, *, embedding_size: int = 512, width: float = 1.0, dropout: float = 0.0, fp16: bool = False
) -> nn.Module:
    """Build the backbone ``name``; 112x112 RGB in, ``embedding_size`` out.

    The returned module carries ``build_args`` (arch, embedding_size, width, dropout, fp16), which
    :func:`facekd.models.store.save_model_dir` writes to ``meta.json`` so the model can be rebuilt.
    """
    if name not in BACKBONES:
        raise ConfigError(f"backbone.arch: unknown backbone '{name}'; choose one of {', '.join(BACKBONES)}")
    if embedding_size < 1:
        raise ConfigError(f"backbone.embedding_size must be >= 1, got {embedding_size}")
    if not width > 0:
        raise ConfigError(f"backbone.width must be > 0, got {width}")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"backbone.dropout must be in [0, 1), got {dropout}")
    model = BACKBONES[name](embedding_size=embedding_size, width=width, dropout=dropout, fp16=fp16)
    model.build_args = {
        "arch": name, "embedding_size": embedding_size, "width": width, "dropout": dropout, "fp16": fp16
    }
    return model


def model_table(names: Sequence[str] | None = None, embedding_size: int = 512, width: float = 1.0) -> str:
    """Plain-text table of backbones (default: all) with parameters and GMACs per 112x112 image."""
    import torch

    from facekd.models.complexity import describe_model

    rows = [f"{'name':<14}{'params (M)':>12}{'GMACs':>10}"]
    for name in BACKBONES if names is None else names:
        with torch.device("meta"):  # shapes only: no weights are initialised
            info = describe_model(create_backbone(name, embedding_size=embedding_size, width=width))
        rows.append(f"{name:<14}{info['params_m']:>12.2f}{info['gmacs']:>10.3f}")
    return "\n".join(rows)
