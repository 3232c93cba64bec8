"""SGD and the field's learning-rate schedules, stepped once per optimizer step (iteration).

Schedules (``OptimParams.schedule``), both with an optional linear warm-up of
``warmup_epochs`` epochs:

- ``step``: the lr is multiplied by ``gamma`` at every milestone. Milestones are fractions of the
  total number of epochs when all of them are <= 1 (``(0.5, 0.75)`` = half and three quarters of the
  run), otherwise epoch numbers (``(8, 14, 20, 25)`` = after epochs 8, 14, 20, 25, as the papers
  write them). A milestone falls on the first iteration of that point, so decays happen mid-epoch
  only for fractional milestones that are not whole epochs.
- ``poly``: insightface's polynomial decay with warm-up (``PolynomialLRWarmup`` of arcface_torch):
  after the warm-up, ``lr * (1 - (i - w) / (T - w)) ** poly_power`` reaching 0 at the last
  iteration ``T``. One deliberate difference: insightface runs iteration 0 at the full lr and
  iteration 1 at ``lr / w``; here the warm-up factor is ``(i + 1) / w``, rising monotonically.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from facekd.config import OptimParams
from facekd.errors import ConfigError

if TYPE_CHECKING:
    import torch


def build_optimizer(param_groups: Iterable[Any], params: OptimParams) -> "torch.optim.SGD":
    """SGD with momentum, weight decay and optional Nesterov over ``param_groups``.

    ``param_groups`` is an iterable of tensors or of dicts (torch param groups); weight decay is
    applied to every parameter, as insightface does (BN and bias included).
    """
    import torch

    if params.nesterov and params.momentum == 0:
        raise ConfigError("optim.nesterov: Nesterov momentum needs optim.momentum > 0")
    return torch.optim.SGD(
        list(param_groups),
        lr=params.lr,
        momentum=params.momentum,
        weight_decay=params.weight_decay,
        nesterov=params.nesterov,
    )


def milestone_steps(params: OptimParams, steps_per_epoch: int) -> list[int]:
    """Iterations at which the step schedule multiplies the lr by gamma (sorted)."""
    milestones = sorted(params.milestones)
    as_fraction = all(m <= 1 for m in milestones)
    if not as_fraction and any(m != int(m) or m > params.epochs for m in milestones):
        raise ConfigError(
            f"optim.milestones={list(params.milestones)}: give all milestones as fractions of the run "
            f"(<= 1) or all as whole epoch numbers <= optim.epochs={params.epochs}"
        )
    epochs = [m * params.epochs if as_fraction else m for m in milestones]
    return [round(e * steps_per_epoch) for e in epochs]


def lr_factor_fn(params: OptimParams, steps_per_epoch: int) -> Callable[[int], float]:
    """The lr multiplier as a function of the iteration (what LambdaLR calls)."""
    if steps_per_epoch < 1:
        raise ConfigError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    total = params.epochs * steps_per_epoch
    warmup = round(params.warmup_epochs * steps_per_epoch)
    if warmup >= total:
        raise ConfigError(
            f"optim.warmup_epochs={params.warmup_epochs} covers the whole run of {params.epochs} epoch(s); "
            "make it smaller than optim.epochs"
        )
    decay_at = milestone_steps(params, steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if params.schedule == "poly":
            done = (min(step, total) - warmup) / (total - warmup)
            return max(0.0, 1.0 - done) ** params.poly_power
        passed = sum(1 for m in decay_at if step >= m)
        return params.gamma**passed

    return factor


def build_scheduler(
    optimizer: "torch.optim.Optimizer", params: OptimParams, steps_per_epoch: int
) -> "torch.optim.lr_scheduler.LambdaLR":
    """Per-iteration LambdaLR: call ``.step()`` after every optimizer step.

    The factor is a plain closure, so the scheduler's state_dict holds only counters and lrs
    (safe for ``torch.load(weights_only=True)``).
    """
    import torch

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor_fn(params, steps_per_epoch))
