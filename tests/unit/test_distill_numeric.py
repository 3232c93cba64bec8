"""Closed-form checks of each method against METHODS.md, computed by hand in plain Python floats."""
from __future__ import annotations

import math

import pytest
import torch

from facekd.config import DistillParams
from facekd.distill.base import DistillBatch
from facekd.distill.methods.gkd import adaptive_k, grouped_kl, primary_group
from facekd.distill.registry import build_method

# ---- plain-Python reference math ------------------------------------------------------------------


def unit(v: list[float]) -> list[float]:
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


def cos(a: list[float], b: list[float]) -> float:
    return dot(unit(a), unit(b))


def softmax(z: list[float]) -> list[float]:
    m = max(z)
    e = [math.exp(x - m) for x in z]
    return [x / sum(e) for x in e]


def kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def ce(z: list[float], target: int) -> float:
    return -math.log(softmax(z)[target])


def cosface(scale: float, margin: float, e: list[float], centres: list[list[float]], y: int) -> list[float]:
    """CosFace logits of embedding ``e``: ``scale * (cos_j - margin [j == y])``."""
    return [scale * (cos(e, c) - (margin if j == y else 0.0)) for j, c in enumerate(centres)]


def close(actual: torch.Tensor | float, expected: float, tol: float = 1e-5) -> bool:
    return abs(float(torch.as_tensor(actual).detach()) - expected) <= tol * max(1.0, abs(expected))


def build(name: str, num_classes: int, dim: int, teacher_head: torch.Tensor | None = None, **sections):
    params = DistillParams(optim={"batch_size": 2}, **sections)
    return build_method(
        name, params, num_classes=num_classes, student_dim=dim, teacher_dim=dim, teacher_head=teacher_head
    )


# ---- feature -----------------------------------------------------------------------------------------


def test_feature_is_mean_squared_error_of_unit_embeddings() -> None:
    s, t = [[3.0, 4.0], [1.0, 0.0]], [[0.0, 2.0], [1.0, 1.0]]
    method = build("feature", 2, 2, feature={"weight": 2.5})
    out = method(DistillBatch(torch.tensor(s), torch.tensor(t), None))
    diffs = [a - b for si, ti in zip(s, t) for a, b in zip(unit(si), unit(ti))]
    mse = sum(d * d for d in diffs) / 4
    assert close(out["feature"], mse) and close(out["loss"], 2.5 * mse)


# ---- QUD -----------------------------------------------------------------------------------------------


def test_qud_infonce_uses_the_queue_before_the_batch_and_enqueues_in_order() -> None:
    tau, margin = 0.5, 0.2
    method = build("qud", 1, 2, qud={"queue_size": 4, "tau": tau, "margin": margin})
    queue = [[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]
    method.queue.copy_(torch.tensor(queue))
    s = [[1.0, 1.0], [2.0, -1.0]]
    t = [[3.0, 1.0], [-1.0, -1.0]]
    out = method(DistillBatch(torch.tensor(s), torch.tensor(t), None))
    expected = 0.0
    for si, ti in zip(s, t):
        logits = [(cos(si, ti) - margin) / tau] + [cos(si, q) / tau for q in queue]
        expected += ce(logits, 0) / 2
    assert close(out["loss"], expected)
    # the batch's unit teacher embeddings replace the two oldest rows; the pointer moves on
    assert torch.allclose(method.queue[:2], torch.tensor([unit(ti) for ti in t]))
    assert torch.equal(method.queue[2:], torch.tensor(queue[2:]))
    assert int(method.queue_ptr) == 2
    # next batch: its negatives are the first batch's teacher embeddings + the two old rows; the
    # ring buffer then wraps (rows 2, 3 replaced, pointer back to 0)
    s2, t2 = [[0.0, 1.0], [1.0, 2.0]], [[1.0, -2.0], [2.0, 2.0]]
    snapshot = [unit(ti) for ti in t] + queue[2:]
    out2 = method(DistillBatch(torch.tensor(s2), torch.tensor(t2), None))
    expected2 = sum(
        ce([(cos(si, ti) - margin) / tau] + [cos(si, q) / tau for q in snapshot], 0) / 2 for si, ti in zip(s2, t2)
    )
    assert close(out2["loss"], expected2)
    assert torch.allclose(method.queue[2:], torch.tensor([unit(ti) for ti in t2]))
    assert int(method.queue_ptr) == 0


def test_qud_rejects_a_batch_that_does_not_divide_the_queue() -> None:
    from facekd.errors import ConfigError

    method = build("qud", 1, 2, qud={"queue_size": 4})
    with pytest.raises(ConfigError, match="queue_size=4 is not a multiple of the global batch of 3"):
        method(DistillBatch(torch.randn(3, 2), torch.randn(3, 2), None))


# ---- AdaDistill ------------------------------------------------------------------------------------


CENTRES = [[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]
S = [[1.0, 0.5], [0.2, 1.0], [1.0, 1.2]]
T = [[1.0, 0.2], [0.5, 1.0], [0.3, 1.0]]
Y = [0, 1, 0]  # label 0 repeats


def _alpha(variant: str, s: list[float], t: list[float], c: list[float]) -> float:
    a = cos(s, t)
    if variant == "alpha_prime":
        a = max(-1.0, min(1.0, a)) * min(1.0, max(1e-6, cos(c, t)))
    return min(1.0, max(1e-6, a))


def _expected_centres(variant: str, mode: str) -> list[list[float]]:
    c = [list(row) for row in CENTRES]
    if mode == "sequential":
        for si, ti, y in zip(S, T, Y):
            a = _alpha(variant, si, ti, c[y])
            c[y] = [a * cy + (1 - a) * tu for cy, tu in zip(c[y], unit(ti))]
        return c
    moved: dict[int, list[list[float]]] = {}
    for si, ti, y in zip(S, T, Y):
        a = _alpha(variant, si, ti, CENTRES[y])
        moved.setdefault(y, []).append([a * cy + (1 - a) * tu for cy, tu in zip(CENTRES[y], unit(ti))])
    for y, rows in moved.items():
        c[y] = [sum(col) / len(rows) for col in zip(*rows)]
    return c


@pytest.mark.parametrize("variant", ["alpha", "alpha_prime"])
@pytest.mark.parametrize("mode", ["sequential", "average"])
def test_adadistill_centre_update_and_loss(variant: str, mode: str) -> None:
    scale, margin = 10.0, 0.3
    method = build(
        "adadistill", 3, 2,
        head={"scale": scale},
        adadistill={"variant": variant, "repeated_labels": mode, "head": "cosface", "margin": margin},
    )
    method.centres.copy_(torch.tensor(CENTRES))
    out = method(DistillBatch(torch.tensor(S), torch.tensor(T), torch.tensor(Y)))
    centres = _expected_centres(variant, mode)
    assert torch.allclose(method.centres, torch.tensor(centres), atol=1e-6)
    # CosFace margin softmax against the updated, normalised centres
    expected = 0.0
    for si, y in zip(S, Y):
        expected += ce(cosface(scale, margin, si, centres, y), y) / 3
    assert close(out["loss"], expected)


def test_adadistill_modes_differ_only_on_repeated_labels() -> None:
    def run(mode: str, labels: list[int]) -> torch.Tensor:
        method = build("adadistill", 3, 2, adadistill={"repeated_labels": mode})
        method.centres.copy_(torch.tensor(CENTRES))
        method(DistillBatch(torch.tensor(S), torch.tensor(T), torch.tensor(labels)))
        return method.centres

    assert torch.equal(run("sequential", [0, 1, 2]), run("average", [0, 1, 2]))
    assert not torch.allclose(run("sequential", Y), run("average", Y))


# ---- GKD -----------------------------------------------------------------------------------------


def test_gkd_adaptive_k_takes_the_smallest_candidate_reaching_the_mass() -> None:
    probs = [[0.5, 0.3, 0.1, 0.06, 0.04], [0.4, 0.4, 0.1, 0.05, 0.05]]
    z = torch.tensor(probs).log()  # softmax(z) == probs; summed + sorted: .9 .7 .2 .11 .09
    # cumulative top-K mass: 0.9, 1.6, 1.8, 1.91, 2.0 against mass * B
    assert adaptive_k(z, k_step=2, mass=0.4) == 1  # 0.9 >= 0.8
    assert adaptive_k(z, k_step=2, mass=0.85) == 3  # candidates 1, 3, 5: 1.8 >= 1.7
    assert adaptive_k(z, k_step=2, mass=0.93) == 5  # 1.8 < 1.86 <= 2.0
    assert adaptive_k(z, k_step=3, mass=0.93) == 4  # candidates 1, 4, 5: 1.91 >= 1.86
    assert adaptive_k(z, k_step=100, mass=0.93) == 5  # only 1 and C=5 qualify as candidates
    assert adaptive_k(z, k_step=100, mass=1.0) == 5


def test_gkd_primary_group_forces_the_true_identity_in() -> None:
    z = torch.tensor([[5.0, 4.0, 3.0, 2.0], [0.0, 9.0, 8.0, 1.0]])
    group = primary_group(z, torch.tensor([3, 1]), 2)
    assert [sorted(row) for row in group.tolist()] == [[0, 3], [1, 2]]


Z_S = [[2.0, 1.0, 0.5, -1.0], [0.0, 3.0, 1.0, 0.5]]
Z_T = [[3.0, 0.0, 1.0, -2.0], [1.0, 2.0, 2.5, 0.0]]


def _binary_and_primary(groups: list[list[int]], temp: float) -> tuple[float, float]:
    binary = primary = 0.0
    for zs, zt, group in zip(Z_S, Z_T, groups):
        ps, pt = softmax([x / temp for x in zs]), softmax([x / temp for x in zt])
        bs = [sum(ps[j] for j in group), sum(ps[j] for j in range(4) if j not in group)]
        bt = [sum(pt[j] for j in group), sum(pt[j] for j in range(4) if j not in group)]
        binary += kl(bt, bs)
        primary += kl([pt[j] / bt[0] for j in group], [ps[j] / bs[0] for j in group])
    b = len(Z_S)
    return binary / b * temp**2, primary / b * temp**2


def test_gkd_binary_and_primary_kl_on_hand_built_logits() -> None:
    temp = 2.0
    labels = torch.tensor([2, 0])
    group = primary_group(torch.tensor(Z_S), labels, 2)  # row 0: {0, 2}; row 1: {1, 0}
    assert [sorted(row) for row in group.tolist()] == [[0, 2], [0, 1]]
    binary, primary = grouped_kl(torch.tensor(Z_S), torch.tensor(Z_T), group, temp)
    exp_binary, exp_primary = _binary_and_primary([[0, 2], [0, 1]], temp)
    assert close(binary, exp_binary) and close(primary, exp_primary)
    # K = C: one bin holds everything, Binary-KD vanishes, Primary-KD is plain KD
    everything = primary_group(torch.tensor(Z_S), labels, 4)
    binary, primary = grouped_kl(torch.tensor(Z_S), torch.tensor(Z_T), everything, temp)
    assert float(binary) == 0.0
    assert close(primary, _binary_and_primary([[0, 1, 2, 3]] * 2, temp)[1])


@pytest.mark.parametrize("k_mode", ["adaptive", "fixed"])
def test_gkd_total_loss_and_warmup(k_mode: str) -> None:
    torch.manual_seed(0)
    w_t = torch.randn(4, 3)
    gkd = {"k_mode": k_mode, "fixed_k": 2, "k_step": 2, "mass": 0.5, "alpha": 1.5, "beta": 3.0,
           "temperature": 2.0, "warmup_epochs": 4.0, "margin": 0.4}
    method = build("gkd", 4, 3, teacher_head=w_t, head={"scale": 8.0}, gkd=gkd)
    s, t, y = torch.randn(2, 3), torch.randn(2, 3), torch.tensor([1, 3])
    # hand logits: CosFace, s=8, m=0.4, student through its own head, teacher through W_t
    w_s = method.head.weight.detach().tolist()
    z_s = [cosface(8.0, 0.4, e, w_s, yi) for e, yi in zip(s.tolist(), y.tolist())]
    z_t = [cosface(8.0, 0.4, e, w_t.tolist(), yi) for e, yi in zip(t.tolist(), y.tolist())]
    k = int(method(DistillBatch(s, t, y, epoch=0.0))["k"])
    assert k == (2 if k_mode == "fixed" else adaptive_k(torch.tensor(z_s), 2, 0.5))
    groups = primary_group(torch.tensor(z_s), y, k)
    binary, primary = grouped_kl(torch.tensor(z_s), torch.tensor(z_t), groups, 2.0)
    ce_expected = (ce(z_s[0], 1) + ce(z_s[1], 3)) / 2
    for epoch, weight in [(0.0, 0.0), (0.9, 0.0), (2.5, 0.5), (7.0, 1.0)]:
        out = method(DistillBatch(s, t, y, epoch=epoch))
        assert close(out["warmup"], weight)
        assert close(out["ce"], ce_expected, 1e-4)
        assert close(out["loss"], ce_expected + weight * (1.5 * float(binary) + 3.0 * float(primary)), 1e-4)


# ---- TH-KD and logit KD ----------------------------------------------------------------------------


W_T = [[1.0, 0.0], [0.0, 2.0], [-1.0, -1.0]]


def test_thkd_teacher_head_kl_and_embedding_term() -> None:
    scale, temp = 4.0, 2.0
    s, t, y = [[1.0, 0.2], [-0.5, 1.0]], [[0.8, 0.6], [-1.0, 0.3]], [0, 1]
    head = {"type": "cosface", "scale": scale, "margin": 0.2}
    method = build("thkd", 3, 2, teacher_head=torch.tensor(W_T), head=head,
                   thkd={"gamma": 0.5, "beta": 2.0, "delta": 3.0, "temperature": temp})
    w_s = method.head.weight.detach().tolist()
    out = method(DistillBatch(torch.tensor(s), torch.tensor(t), torch.tensor(y)))
    kd = emb = ce_ = 0.0
    for si, ti, yi in zip(s, t, y):
        z_th = [scale * cos(si, w) for w in W_T]
        z_t = [scale * cos(ti, w) for w in W_T]
        kd += kl(softmax([z / temp for z in z_t]), softmax([z / temp for z in z_th])) * temp**2 / 2
        emb += sum((a - b) ** 2 for a, b in zip(unit(si), unit(ti))) / 2
        ce_ += ce(cosface(scale, 0.2, si, w_s, yi), yi) / 2
    assert close(out["kd"], kd) and close(out["embedding"], emb) and close(out["ce"], ce_)
    assert close(out["loss"], 0.5 * ce_ + 2.0 * kd + 3.0 * emb)


def test_logit_kd_uses_scaled_cosines_and_margin_only_in_ce() -> None:
    scale, temp = 4.0, 3.0
    s, t, y = [[1.0, 0.2], [-0.5, 1.0]], [[0.8, 0.6], [-1.0, 0.3]], [2, 1]
    head = {"type": "cosface", "scale": scale, "margin": 0.3}
    method = build("logit", 3, 2, teacher_head=torch.tensor(W_T), head=head,
                   logit={"weight": 0.7, "temperature": temp})
    w_s = method.head.weight.detach().tolist()
    out = method(DistillBatch(torch.tensor(s), torch.tensor(t), torch.tensor(y)))
    kd = ce_ = 0.0
    for si, ti, yi in zip(s, t, y):
        z_s = [scale * cos(si, w) for w in w_s]
        z_t = [scale * cos(ti, w) for w in W_T]
        kd += kl(softmax([z / temp for z in z_t]), softmax([z / temp for z in z_s])) * temp**2 / 2
        ce_ += ce([z - (scale * 0.3 if j == yi else 0.0) for j, z in enumerate(z_s)], yi) / 2
    assert close(out["kd"], kd) and close(out["ce"], ce_)
    assert close(out["loss"], ce_ + 0.7 * kd)


def test_arcdistill_is_margin_softmax_against_the_frozen_teacher_centres() -> None:
    s, y = [[1.0, 0.2], [-0.5, 1.0]], [0, 2]
    method = build("arcdistill", 3, 2, teacher_head=torch.tensor(W_T), head={"scale": 5.0},
                   arcdistill={"head": "cosface", "margin": 0.35})
    out = method(DistillBatch(torch.tensor(s), torch.randn(2, 2), torch.tensor(y)))
    expected = sum(ce(cosface(5.0, 0.35, si, W_T, yi), yi) for si, yi in zip(s, y)) / 2
    assert close(out["loss"], expected)
