"""Margin heads against closed forms, gradcheck, and the cos = +-1 edge."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from facekd.errors import ConfigError, TrainingError
from facekd.models.heads import MARGIN_KINDS, MarginHead, margin_logits

S, M = 64.0, 0.5

COS = torch.tensor([[0.5, 0.2, -0.3], [0.9, -0.1, 0.4], [-0.2, 0.7, 0.1]])
LABELS = torch.tensor([0, 2, -1])


def test_arcface_matches_closed_form():
    out = margin_logits(COS, LABELS, "arcface", S, M)
    expected = S * COS.clone()
    expected[0, 0] = S * math.cos(math.acos(0.5) + M)
    expected[1, 2] = S * math.cos(math.acos(0.4) + M)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-5)


def test_arcface_past_pi_uses_insightface_fallback():
    # theta + m > pi where cos <= cos(pi - m) = -0.8776 for m = 0.5: cos - m * sin(m) instead
    cos = torch.tensor([[-0.95, 0.1]])
    out = margin_logits(cos, torch.tensor([0]), "arcface", 1.0, M)
    assert out[0, 0].item() == pytest.approx(-0.95 - M * math.sin(M), abs=1e-6)
    just_inside = margin_logits(torch.tensor([[-0.85, 0.1]]), torch.tensor([0]), "arcface", 1.0, M)
    assert just_inside[0, 0].item() == pytest.approx(math.cos(math.acos(-0.85) + M), abs=1e-6)


def test_cosface_matches_closed_form():
    out = margin_logits(COS, LABELS, "cosface", S, 0.35)
    expected = S * COS.clone()
    expected[0, 0] = S * (0.5 - 0.35)
    expected[1, 2] = S * (0.4 - 0.35)
    torch.testing.assert_close(out, expected)


def test_arcface_st_value_exact_gradient_straight_through():
    cos = COS.clone().requires_grad_(True)
    out = margin_logits(cos, LABELS, "arcface_st", S, M)
    torch.testing.assert_close(out, margin_logits(COS, LABELS, "arcface", S, M), rtol=1e-6, atol=1e-5)
    out.sum().backward()
    # straight through: d logits / d cos = s everywhere, target columns included
    torch.testing.assert_close(cos.grad, torch.full_like(COS, S))


def test_arcface_exact_gradient_is_not_straight_through():
    cos = COS.clone().requires_grad_(True)
    margin_logits(cos, LABELS, "arcface", S, M).sum().backward()
    theta = math.acos(0.5)
    assert cos.grad[0, 0].item() == pytest.approx(S * math.sin(theta + M) / math.sin(theta), rel=1e-5)


def test_rows_without_target_get_no_margin():
    for kind in MARGIN_KINDS:
        out = margin_logits(COS, LABELS, kind, S, M)
        torch.testing.assert_close(out[2], S * COS[2])


@pytest.mark.parametrize("margin", [0.2, 0.5, 1.0])
def test_gradcheck_arcface_exact(margin):
    torch.manual_seed(0)
    cos = (torch.rand(4, 5, dtype=torch.float64) * 1.8 - 0.9).requires_grad_(True)
    labels = torch.tensor([0, 3, -1, 4])
    assert torch.autograd.gradcheck(lambda c: margin_logits(c, labels, "arcface", 2.0, margin), (cos,))


def test_gradcheck_arcface_st_where_it_is_a_true_gradient():
    # With m = 0 the straight-through gradient is the true one, so gradcheck applies.
    torch.manual_seed(0)
    cos = (torch.rand(4, 5, dtype=torch.float64) * 1.8 - 0.9).requires_grad_(True)
    labels = torch.tensor([0, 3, -1, 4])
    assert torch.autograd.gradcheck(lambda c: margin_logits(c, labels, "arcface_st", 2.0, 0.0), (cos,))


@pytest.mark.parametrize("kind", MARGIN_KINDS)
def test_no_nan_at_cos_plus_minus_one(kind):
    cos = torch.tensor([[1.0, -1.0, 0.0], [-1.0, 1.0, 0.3], [0.3, 1.0, -1.0]], requires_grad=True)
    labels = torch.tensor([0, 0, 2])
    out = margin_logits(cos, labels, kind, S, M)
    F.cross_entropy(out, labels).backward()
    assert torch.isfinite(out).all() and torch.isfinite(cos.grad).all()
    if kind != "cosface":
        assert out[0, 0].item() == pytest.approx(S * math.cos(M), rel=1e-6)


def test_head_embedding_on_its_centre_is_finite():
    head = MarginHead(4, 8, "arcface")
    emb = head.weight.detach()[:2].clone().requires_grad_(True)  # cos = 1 exactly to its own centre
    loss = head.loss(emb, torch.tensor([0, 1]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(emb.grad).all() and torch.isfinite(head.weight.grad).all()


def test_head_cosine_logits_and_loss():
    torch.manual_seed(0)
    head = MarginHead(6, 8, "cosface", scale=10.0, margin=0.3)
    emb, labels = torch.randn(5, 8), torch.tensor([0, 1, 2, 5, 5])
    cos = F.normalize(emb) @ F.normalize(head.weight).T
    torch.testing.assert_close(head.cosine(emb), cos)
    logits = 10.0 * cos
    logits[torch.arange(5), labels] -= 10.0 * 0.3
    torch.testing.assert_close(head(emb, labels), logits)
    torch.testing.assert_close(head.loss(emb, labels), F.cross_entropy(logits, labels))
    assert head.weight.std().item() == pytest.approx(0.01, rel=0.5)


def test_half_precision_input_gives_float32_logits():
    head = MarginHead(3, 4)
    assert head(torch.randn(2, 4).half(), torch.tensor([0, 1])).dtype == torch.float32


def test_unknown_kind_and_bad_label_raise():
    with pytest.raises(ConfigError, match="arcface_st"):
        MarginHead(3, 4, kind="sphereface")
    with pytest.raises(ConfigError):
        margin_logits(COS, LABELS, "nope", S, M)
    with pytest.raises(TrainingError, match="label 3"):
        MarginHead(3, 4).loss(torch.randn(2, 4), torch.tensor([0, 3]))
