"""Margin softmax heads: ArcFace (exact and straight-through) and CosFace.

Conventions (checked against insightface ``recognition/arcface_torch/losses.py``):

- ``arcface``: the exact, differentiable target logit ``cos(theta_y + m)``, computed as
  ``cos_y * cos(m) - sin(theta_y) * sin(m)`` with ``sin(theta_y) = sqrt(max(1 - cos_y^2, eps))``
  (theta in [0, pi], so sin >= 0): the same value and gradient as going through ``acos`` for
  |cos| < 1, but exact and NaN-free at cos = +-1 where acos' derivative is infinite. Where
  ``theta_y + m`` would pass pi (``cos_y <= cos(pi - m)``) the curve is no longer monotonic, so
  like insightface's non-"easy-margin" ArcFace we fall back to the CosFace-like
  ``cos_y - m * sin(m)`` (insightface: ``target - sin(pi - m) * m``).
- ``arcface_st``: insightface's current ArcFace, which computes ``cos(acos(cos_y) + m)`` under
  ``no_grad`` in place: the forward value is ``cos(theta_y + m)`` (no threshold branch) and the
  gradient passes straight through as if the target logit were ``cos_y``.
- ``cosface``: ``cos_y - m``.

Every non-target column stays ``cos_j``; everything is then multiplied by the scale ``s``.
A label of ``-1`` means "this row's class is not among these columns" (a PartialFC shard): that
row gets no margin at all. The margin math runs in at least float32 (float64 stays float64 so
gradcheck works), also under autocast.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facekd.errors import ConfigError, TrainingError

MARGIN_KINDS = ("arcface", "arcface_st", "cosface")

# Floor of 1 - cos^2 under the square root: sqrt'(0) is infinite (a NaN gradient at cos = +-1).
_SIN2_EPS = 1e-12


def check_kind(kind: str) -> None:
    """Raise a ConfigError unless ``kind`` is one of MARGIN_KINDS."""
    if kind not in MARGIN_KINDS:
        raise ConfigError(f"head.type: unknown margin '{kind}'; choose one of {', '.join(MARGIN_KINDS)}")


def _cos_theta_plus_m(cos_y: Tensor, margin: float) -> Tensor:
    """``cos(theta_y + m)`` by the angle-sum identity. (B, 1)"""
    sin_theta = torch.sqrt((1.0 - cos_y * cos_y).clamp_min(_SIN2_EPS))
    return cos_y * math.cos(margin) - sin_theta * math.sin(margin)


def _arcface_target(cos_y: Tensor, margin: float) -> Tensor:
    """Exact ``cos(theta_y + m)`` with insightface's fallback where ``theta_y + m > pi``. (B, 1)"""
    past_pi = cos_y <= math.cos(math.pi - margin)
    return torch.where(past_pi, cos_y - margin * math.sin(margin), _cos_theta_plus_m(cos_y, margin))


def _arcface_st_target(cos_y: Tensor, margin: float) -> Tensor:
    """Value ``cos(theta_y + m)``, gradient of ``cos_y`` (straight through). (B, 1)"""
    with torch.no_grad():
        shift = _cos_theta_plus_m(cos_y, margin) - cos_y
    return cos_y + shift


def margin_logits(cos: Tensor, labels: Tensor, kind: str, scale: float, margin: float) -> Tensor:
    """Scaled margin logits.

    cos: (B, C) cosine of each embedding to each class centre; labels: (B,) int64 column of the
    target class, or -1 for "no target among these C columns". Returns (B, C) in the dtype of
    ``cos`` promoted to at least float32.
    """
    check_kind(kind)
    work = cos.to(torch.promote_types(cos.dtype, torch.float32))
    has_target = labels >= 0  # (B,)
    column = labels.clamp_min(0).unsqueeze(1)  # (B, 1); rows without target point at column 0
    cos_y = work.gather(1, column)  # (B, 1)
    if kind == "arcface":
        target = _arcface_target(cos_y, margin)
    elif kind == "arcface_st":
        target = _arcface_st_target(cos_y, margin)
    else:
        target = cos_y - margin
    # Rows without a target write their own cosine back, i.e. stay unchanged.
    target = torch.where(has_target.unsqueeze(1), target, cos_y)
    return work.scatter(1, column, target) * scale


def cosine_to_centres(emb: Tensor, weight: Tensor) -> Tensor:
    """(B, C) cosine between embeddings (B, d) and class centres (C, d), in at least float32."""
    dtype = torch.promote_types(emb.dtype, torch.float32)
    # Autocast off: a half-precision matmul of unit vectors loses the margin's precision.
    with torch.autocast(device_type=emb.device.type, enabled=False):
        cos = F.linear(F.normalize(emb.to(dtype)), F.normalize(weight.to(dtype)))
    return cos.clamp(-1.0, 1.0)


def check_labels(labels: Tensor, num_classes: int) -> None:
    """Raise if a label cannot index ``num_classes`` centres (a head/data mismatch)."""
    if labels.numel() == 0:
        return
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        bad = low if low < 0 else high
        raise TrainingError(
            f"label {bad} is outside the head's {num_classes} classes; "
            "set the head's num_classes to the number of identities in the training data"
        )


class MarginHead(nn.Module):
    """Class centres ``weight`` (C, d) with a margin softmax on top."""

    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        kind: str = "arcface",
        scale: float = 64.0,
        margin: float = 0.5,
    ) -> None:
        super().__init__()
        check_kind(kind)
        self.num_classes = num_classes
        self.embedding_size = embedding_size
        self.kind = kind
        self.scale = scale
        self.margin = margin
        # N(0, 0.01) as insightface initialises its FC / PartialFC centres.
        self.weight = nn.Parameter(torch.normal(0.0, 0.01, (num_classes, embedding_size)))

    def cosine(self, emb: Tensor) -> Tensor:
        """(B, C) cosine of embeddings (B, d) to every class centre, float32."""
        return cosine_to_centres(emb, self.weight)

    def forward(self, emb: Tensor, labels: Tensor) -> Tensor:
        """(B, C) scaled margin logits for embeddings (B, d) and labels (B,)."""
        check_labels(labels, self.num_classes)
        return margin_logits(self.cosine(emb), labels, self.kind, self.scale, self.margin)

    def loss(self, emb: Tensor, labels: Tensor) -> Tensor:
        """Mean margin-softmax cross-entropy over the batch (scalar)."""
        return F.cross_entropy(self(emb, labels), labels)

    def extra_repr(self) -> str:
        return f"{self.num_classes}, {self.embedding_size}, kind={self.kind}, s={self.scale}, m={self.margin}"
