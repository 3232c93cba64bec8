"""Learning-rate schedules at known iterations, read back from a real SGD + LambdaLR."""
from __future__ import annotations

import pytest
import torch

from facekd.config import OptimParams
from facekd.errors import ConfigError
from facekd.training.optim import build_optimizer, build_scheduler, milestone_steps


def _lrs(params: OptimParams, steps_per_epoch: int) -> list[float]:
    """The lr used by every iteration of the run."""
    weight = torch.nn.Parameter(torch.zeros(2))
    opt = build_optimizer([weight], params)
    sched = build_scheduler(opt, params, steps_per_epoch)
    lrs = []
    for _ in range(params.epochs * steps_per_epoch):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_step_decay_with_fractional_milestones() -> None:
    p = OptimParams(epochs=4, lr=0.1, schedule="step", milestones=(0.5, 0.75), gamma=0.1)
    lrs = _lrs(p, steps_per_epoch=10)
    assert lrs[0] == pytest.approx(0.1) and lrs[19] == pytest.approx(0.1)
    assert lrs[20] == pytest.approx(0.01) and lrs[29] == pytest.approx(0.01)
    assert lrs[30] == pytest.approx(0.001) and lrs[39] == pytest.approx(0.001)


def test_step_decay_with_epoch_milestones_and_warmup() -> None:
    p = OptimParams(epochs=26, lr=0.1, milestones=(8, 14, 20, 25), gamma=0.1, warmup_epochs=1)
    assert milestone_steps(p, 5) == [40, 70, 100, 125]
    lrs = _lrs(p, steps_per_epoch=5)
    assert lrs[:5] == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.1])
    assert lrs[39] == pytest.approx(0.1) and lrs[40] == pytest.approx(0.01)
    assert lrs[125] == pytest.approx(1e-5)


def test_poly_with_warmup() -> None:
    p = OptimParams(epochs=10, lr=0.2, schedule="poly", warmup_epochs=2, poly_power=2.0)
    lrs = _lrs(p, steps_per_epoch=10)  # 100 iterations, warm-up 20
    assert lrs[0] == pytest.approx(0.2 / 20) and lrs[9] == pytest.approx(0.1)
    assert lrs[19] == pytest.approx(0.2) and lrs[20] == pytest.approx(0.2)
    assert lrs[60] == pytest.approx(0.2 * (1 - 40 / 80) ** 2)
    assert lrs[99] == pytest.approx(0.2 * (1 / 80) ** 2)
    assert all(a >= b for a, b in zip(lrs[20:], lrs[21:]))


def test_sgd_settings_applied() -> None:
    p = OptimParams(lr=0.3, momentum=0.8, weight_decay=1e-3, nesterov=True)
    group = build_optimizer([torch.nn.Parameter(torch.zeros(1))], p).param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"], group["nesterov"]) == (0.3, 0.8, 1e-3, True)


def test_bad_milestones_and_warmup_rejected() -> None:
    with pytest.raises(ConfigError, match="optim.milestones"):
        milestone_steps(OptimParams(epochs=10, milestones=(0.5, 12)), 4)
    with pytest.raises(ConfigError, match="warmup_epochs"):
        _lrs(OptimParams(epochs=2, warmup_epochs=2), 3)
