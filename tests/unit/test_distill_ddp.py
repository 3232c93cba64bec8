"""Shared method state on 2 gloo ranks equals a single-process run on the whole batch."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from facekd.config import DistillParams
from facekd.distill.base import DistillBatch
from facekd.distill.registry import build_method
from facekd.distill.sync import all_gather_nograd, broadcast_buffers

C, D, B, STEPS = 5, 4, 8, 3
# Labels repeat within and across the two halves, so AdaDistill's order of updates matters.
LABELS = [[0, 1, 2, 0, 0, 3, 1, 2], [4, 4, 0, 1, 2, 2, 3, 0], [1, 0, 1, 0, 3, 3, 4, 4]]
# key -> (method, its adadistill section); the two AdaDistill modes differ on repeated labels.
STATEFUL = {
    "qud": ("qud", {}),
    "ada_seq": ("adadistill", {"repeated_labels": "sequential"}),
    "ada_avg": ("adadistill", {"repeated_labels": "average"}),
}


def _methods(seed: int) -> dict:
    torch.manual_seed(seed)
    out = {}
    for key, (name, section) in STATEFUL.items():
        params = DistillParams(optim={"batch_size": B}, qud={"queue_size": 16}, adadistill=section)
        out[key] = build_method(name, params, num_classes=C, student_dim=D, teacher_dim=D)
    return out


def _global_batch(step: int) -> DistillBatch:
    g = torch.Generator().manual_seed(100 + step)
    return DistillBatch(torch.randn(B, D, generator=g), torch.randn(B, D, generator=g), torch.tensor(LABELS[step]))


def _half(batch: DistillBatch, rank: int) -> DistillBatch:
    part = slice(rank * B // 2, (rank + 1) * B // 2)
    return DistillBatch(batch.student[part], batch.teacher[part], batch.labels[part])


def _run(methods: dict, rank: int | None) -> dict:
    """STEPS steps; returns final state and per-step losses."""
    losses = {key: [] for key in methods}
    for step in range(STEPS):
        batch = _global_batch(step)
        if rank is not None:
            batch = _half(batch, rank)
        for key, method in methods.items():
            losses[key].append(method(batch)["loss"].detach())
    return {"state": {k: m.state_dict() for k, m in methods.items()}, "losses": losses}


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        methods = _methods(seed=rank)  # ranks seeded differently on purpose ...
        for method in methods.values():
            broadcast_buffers(method)  # ... the broadcast makes the initial state rank 0's
        result = _run(methods, rank)
        result["ragged"] = all_gather_nograd(torch.full((3 - rank, 2), float(rank)))
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_hold_identical_state_equal_to_one_process(tmp_path: Path) -> None:
    # fork, not spawn: a spawned child re-imports torch (seconds each on a busy 2-core box); the
    # child sets one intra-op thread first, as DataLoader's forked workers do.
    ranks = mp.start_processes(
        _worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=False, start_method="fork"
    )
    deadline = time.monotonic() + 120
    while not ranks.join(timeout=1):
        if time.monotonic() > deadline:
            for process in ranks.processes:
                process.kill()
            pytest.fail("the two gloo ranks did not finish within 120 s")
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    single = _run(_methods(seed=0), None)
    for key in STATEFUL:
        for name, value in single["state"][key].items():
            assert torch.equal(results[0]["state"][key][name], results[1]["state"][key][name]), (key, name)
            assert torch.allclose(results[0]["state"][key][name], value, atol=1e-6), (key, name)
        # equal halves: the mean of the per-rank losses is the whole-batch loss
        for step in range(STEPS):
            mean = (results[0]["losses"][key][step] + results[1]["losses"][key][step]) / 2
            assert torch.allclose(mean, single["losses"][key][step], atol=1e-5), (key, step)
    # the sequential and average modes really saw repeated labels (they end up different)
    assert not torch.allclose(single["state"]["ada_seq"]["centres"], single["state"]["ada_avg"]["centres"])
    # ragged gather: 3 rows from rank 0, then 2 from rank 1
    assert results[0]["ragged"].tolist() == [[0.0, 0.0]] * 3 + [[1.0, 1.0]] * 2
    assert torch.equal(results[0]["ragged"], results[1]["ragged"])


def test_helpers_are_the_identity_without_a_process_group() -> None:
    x = torch.randn(3, 2, requires_grad=True)
    gathered = all_gather_nograd(x)
    assert torch.equal(gathered, x) and not gathered.requires_grad
    method = _methods(seed=0)["qud"]
    before = method.queue.clone()
    broadcast_buffers(method)
    assert torch.equal(method.queue, before)
