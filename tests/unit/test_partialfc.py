"""PartialFC: equal to one full margin head (1 and 2 gloo ranks), and its negative sampling."""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from facekd.errors import ConfigError, TrainingError
from facekd.models.heads import MARGIN_KINDS, MarginHead, margin_logits
from facekd.models.partialfc import PartialFC, shard_bounds

C, D = 7, 6
LOCAL_SIZES = (3, 5)  # uneven local batches on the two ranks


def _problem(kind: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Global batch embeddings (8, D), labels from both shards, centres (C, D)."""
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(sum(LOCAL_SIZES), D, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 6, 3, 3, 5, 1, 4, 6])
    weight = torch.randn(C, D, generator=g, dtype=torch.float64)
    return emb.float(), labels, weight.float()


def _reference(kind: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Loss, embedding grad and centre grad of a single full MarginHead on the whole batch."""
    emb, labels, weight = _problem(kind)
    head = MarginHead(C, D, kind, scale=16.0, margin=0.3)
    with torch.no_grad():
        head.weight.copy_(weight)
    emb.requires_grad_(True)
    loss = head.loss(emb, labels)
    loss.backward()
    return loss.detach(), emb.grad, head.weight.grad


def test_shards_are_contiguous_and_cover_every_class():
    for classes, world in [(7, 2), (10, 3), (4, 4)]:
        bounds = [shard_bounds(classes, r, world) for r in range(world)]
        assert bounds[0][0] == 0 and sum(n for _, n in bounds) == classes
        assert all(a + n == b for (a, n), (b, _) in zip(bounds, bounds[1:]))
        assert max(n for _, n in bounds) - min(n for _, n in bounds) <= 1


@pytest.mark.parametrize("kind", MARGIN_KINDS)
def test_single_process_equals_margin_head(kind):
    loss_ref, emb_grad_ref, weight_grad_ref = _reference(kind)
    emb, labels, weight = _problem(kind)
    pfc = PartialFC(C, D, kind, scale=16.0, margin=0.3)
    pfc.load_full_weight(weight)
    emb.requires_grad_(True)
    loss = pfc(emb, labels)
    loss.backward()
    torch.testing.assert_close(loss, loss_ref)
    torch.testing.assert_close(emb.grad, emb_grad_ref)
    torch.testing.assert_close(pfc.weight.grad, weight_grad_ref)
    torch.testing.assert_close(pfc.full_weight(), weight)


def test_large_scale_loss_is_exact_not_clamped():
    # s = 64 with a wrong, confident prediction: p_target ~ e^-128, far below any clamp
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    weight = torch.tensor([[-1.0, 0.0], [1.0, 0.0]])
    labels = torch.tensor([0, 1])
    pfc = PartialFC(2, 2, "cosface", scale=64.0, margin=0.0)
    pfc.load_full_weight(weight)
    expected = torch.nn.functional.cross_entropy(margin_logits(emb @ weight.T, labels, "cosface", 64.0, 0.0), labels)
    torch.testing.assert_close(pfc(emb, labels), expected)
    assert pfc(emb, labels).item() > 60


def test_sampling_keeps_every_positive_and_trains_only_sampled_centres():
    torch.manual_seed(0)
    pfc = PartialFC(40, D, "arcface", sample_rate=0.25)
    labels = torch.tensor([3, 3, 17, 39, 0])
    emb = torch.randn(5, D, requires_grad=True)
    loss = pfc(emb, labels)
    loss.backward()
    sampled = pfc.last_sample
    assert sampled.numel() == 10 and torch.equal(sampled, sampled.sort().values)
    assert set(labels.tolist()) <= set(sampled.tolist())
    touched = pfc.weight.grad.abs().sum(1).nonzero().flatten()
    assert set(touched.tolist()) <= set(sampled.tolist()) and set(labels.tolist()) <= set(touched.tolist())
    # the loss is the full-head loss restricted to the sampled columns
    cos = torch.nn.functional.normalize(emb) @ torch.nn.functional.normalize(pfc.weight[sampled]).T
    columns = torch.searchsorted(sampled, labels)
    expected = torch.nn.functional.cross_entropy(margin_logits(cos, columns, "arcface", 64.0, 0.5), columns)
    torch.testing.assert_close(loss, expected)


def test_more_positives_than_samples_keeps_exactly_the_positives():
    pfc = PartialFC(20, D, "cosface", sample_rate=0.1)  # 2 samples, 4 positive classes
    labels = torch.tensor([1, 5, 5, 9, 19])
    pfc(torch.randn(5, D), labels)
    assert pfc.last_sample.tolist() == [1, 5, 9, 19]


def test_bad_arguments_raise():
    with pytest.raises(ConfigError):
        PartialFC(5, D, sample_rate=0.0)
    with pytest.raises(ConfigError):
        PartialFC(5, D, kind="bogus")
    with pytest.raises(TrainingError, match="shape"):
        PartialFC(5, D).load_full_weight(torch.zeros(4, D))
    with pytest.raises(TrainingError, match="label 5"):
        PartialFC(5, D)(torch.randn(2, D), torch.tensor([0, 5]))


CASES = [("arcface", False), ("arcface_st", False), ("cosface", True)]  # (kind, backbone_grads_averaged)


def _rank_worker(rank: int, init_file: str, out_dir: str) -> None:
    """One of two gloo ranks: its local slice of the batch through PartialFC; saves what it got."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        for kind, averaged in CASES:
            emb, labels, weight = _problem(kind)
            start = sum(LOCAL_SIZES[:rank])
            local = emb[start : start + LOCAL_SIZES[rank]].clone().requires_grad_(True)
            pfc = PartialFC(C, D, kind, scale=16.0, margin=0.3, backbone_grads_averaged=averaged)
            pfc.load_full_weight(weight)
            loss = pfc(local, labels[start : start + LOCAL_SIZES[rank]])
            loss.backward()
            result = {"loss": loss.detach(), "emb_grad": local.grad, "weight_grad": pfc.weight.grad,
                      "full_weight": pfc.full_weight(), "class_start": pfc.class_start}
            torch.save(result, f"{out_dir}/{kind}_rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_equal_one_full_head(tmp_path):
    # two fresh interpreters import torch: 18 s measured on the shared 2-core machine
    mp.spawn(_rank_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for kind, averaged in CASES:
        loss_ref, emb_grad_ref, weight_grad_ref = _reference(kind)
        got = [torch.load(tmp_path / f"{kind}_rank{r}.pt", weights_only=True) for r in range(2)]
        factor = 2.0 if averaged else 1.0  # DDP will average the backbone's gradient over 2 ranks
        for rank in range(2):
            torch.testing.assert_close(got[rank]["loss"], loss_ref)
            torch.testing.assert_close(got[rank]["full_weight"], _problem(kind)[2])
        assert [g["class_start"] for g in got] == [0, 4]
        torch.testing.assert_close(torch.cat([g["emb_grad"] for g in got]), factor * emb_grad_ref)
        torch.testing.assert_close(torch.cat([g["weight_grad"] for g in got]), weight_grad_ref)
