"""Checkpoint state that does not depend on the number of ranks, for objectives sharded across them.

An objective may split parameters by rows over the ranks (PartialFC's class centres: rank r holds
its slice of the C rows). A checkpoint stores them, and the optimizer's per-parameter slots
(momentum), gathered to the full (C, d) in class order; a resume cuts each rank's slice back out,
so a run saved on N processes resumes on M.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from facekd.training.distributed import DistInfo, all_reduce_sum, gather_shards, take_shard

if TYPE_CHECKING:
    import torch
    from torch import nn


def is_rows(value: Any, rows: int) -> bool:
    """True for a tensor whose first dimension is a row shard of ``rows`` rows (momentum buffers)."""
    import torch

    return isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == rows




class ShardedState:
    """The objective's and optimizer's state dicts with every sharded tensor gathered (and cut back on load).

    Collective: every rank calls each method. An objective declares its sharded parameters with
    ``sharded_parameters() -> {state_dict name: parameter}``; on one process nothing is sharded.
    """

    def __init__(self, objective: "nn.Module", optimizer: "torch.optim.Optimizer", dist: DistInfo) -> None:
        self.objective, self.optimizer, self.dist = objective, optimizer, dist
        self.device = dist.device

    def parameters(self) -> dict[str, "torch.nn.Parameter"]:
        """Objective parameters split by rows across ranks (PartialFC's centres), by state_dict name."""
        declared = getattr(self.objective, "sharded_parameters", None)
        return dict(declared()) if declared is not None and self.dist.distributed else {}

    def _optimizer_slots(self) -> dict[int, int]:
        """Optimizer state index -> local row count, for every sharded parameter."""
        rows = {id(p): p.shape[0] for p in self.parameters().values()}
        order = [p for group in self.optimizer.param_groups for p in group["params"]]
        return {i: rows[id(p)] for i, p in enumerate(order) if id(p) in rows}

    def objective_state(self) -> dict[str, Any]:
        state = dict(self.objective.state_dict())
        for name, param in self.parameters().items():
            state[name] = gather_shards(param.detach(), self.dist)  # (C, d) in class order
        return state

    def optimizer_state(self) -> dict[str, Any]:
        state = self.optimizer.state_dict()
        slots = dict(state["state"])  # the per-parameter dicts are the optimizer's own: copy, never edit
        for index, rows in self._optimizer_slots().items():
            if index in slots:
                slots[index] = {k: gather_shards(v, self.dist) if is_rows(v, rows) else v
                                for k, v in slots[index].items()}
        return {**state, "state": slots}

    def load_objective(self, state: dict[str, Any]) -> None:
        state = dict(state)
        for name, param in self.parameters().items():
            state[name] = take_shard(state[name], param.shape[0], self.dist)
        self.objective.load_state_dict(state)

    def load_optimizer(self, state: dict[str, Any]) -> None:
        slots = dict(state["state"])
        for index, rows in self._optimizer_slots().items():
            if index in slots:
                full_rows = self._full_rows(rows)
                slots[index] = {k: take_shard(v, rows, self.dist) if is_rows(v, full_rows) else v
                                for k, v in slots[index].items()}
        self.optimizer.load_state_dict({**state, "state": slots})

    def _full_rows(self, local_rows: int) -> int:
        """Rows of a gathered sharded tensor: the sum of every rank's rows (collective)."""
        import torch

        total = torch.tensor([local_rows], device=self.device)
        return int(all_reduce_sum(total, self.dist))
