"""Model directory round trips, its failure messages, and the insightface import."""
from __future__ import annotations

import json

import pytest
import torch

from facekd.errors import DataError, TrainingError
from facekd.models.heads import MarginHead
from facekd.models.insightface_import import import_insightface
from facekd.models.registry import create_backbone
from facekd.models.store import load_backbone, load_head_weight, read_meta, save_model_dir

EMB = 16


def _trained_like(name: str = "iresnet_tiny", **kwargs) -> torch.nn.Module:
    """A backbone with non-trivial BN statistics (as after training), in eval mode."""
    torch.manual_seed(0)
    model = create_backbone(name, embedding_size=EMB, width=0.25, **kwargs)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _images() -> torch.Tensor:
    return torch.randn(3, 3, 112, 112, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("name", ["iresnet_tiny", "mfn", "mbf"])
def test_round_trip_gives_identical_embeddings(tmp_path, name):
    model = _trained_like(name)
    head = MarginHead(5, EMB)
    save_model_dir(tmp_path / "m", model, {"run": "abc"}, head=head)
    loaded, meta = load_backbone(tmp_path / "m")
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(_images()), model(_images()))
    assert meta["arch"] == name and meta["embedding_size"] == EMB and meta["width"] == 0.25
    assert meta["run"] == "abc" and meta["num_classes"] == 5 and meta["params"] > 0 and meta["gmacs"] > 0
    assert torch.equal(load_head_weight(tmp_path / "m"), head.weight.detach())
    if name == "iresnet_tiny":  # the fixed BN scale stays fixed after loading
        assert not loaded.features.weight.requires_grad


def test_saving_without_head_removes_a_stale_one(tmp_path):
    model = _trained_like()
    save_model_dir(tmp_path, model, {}, head=torch.zeros(3, EMB))
    save_model_dir(tmp_path, model, {})
    assert not (tmp_path / "head.pt").exists()
    with pytest.raises(DataError, match="head.pt"):
        load_head_weight(tmp_path)


def test_meta_must_describe_the_backbone(tmp_path):
    plain = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 112 * 112, 4))
    with pytest.raises(TrainingError, match="arch"):
        save_model_dir(tmp_path, plain, {"embedding_size": 4})


def test_missing_directory_names_the_file(tmp_path):
    with pytest.raises(DataError, match="meta.json"):
        load_backbone(tmp_path / "nowhere")


def test_truncated_weights_name_the_file(tmp_path):
    save_model_dir(tmp_path, _trained_like(), {})
    data = (tmp_path / "backbone.pt").read_bytes()
    (tmp_path / "backbone.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="backbone.pt"):
        load_backbone(tmp_path)


def test_weights_of_another_arch_are_rejected(tmp_path):
    save_model_dir(tmp_path, _trained_like(), {})
    meta = json.loads((tmp_path / "meta.json").read_text())
    meta["width"] = 1.0  # 16-channel stem instead of 8
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="do not fit"):
        load_backbone(tmp_path)
    meta["arch"] = "vgg"
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="vgg"):
        load_backbone(tmp_path)


def test_insightface_import_round_trip(tmp_path):
    # An insightface-layout backbone.pth (as saved from a DDP run, "module." prefixed keys) and two
    # PartialFC rank checkpoints as written by arcface_torch's train_v2.py.
    source = create_backbone("iresnet_tiny", embedding_size=EMB)
    torch.nn.init.normal_(source.features.bias)
    source.eval()
    torch.save({f"module.{k}": v for k, v in source.state_dict().items()}, tmp_path / "backbone.pth")
    centres = torch.randn(9, EMB)
    for rank, rows in enumerate((centres[:5], centres[5:])):
        checkpoint = {"epoch": 3, "global_step": 100, "state_dict_softmax_fc": {"weight": rows}}
        torch.save(checkpoint, tmp_path / f"checkpoint_gpu_{rank}.pt")
    shards = [tmp_path / f"checkpoint_gpu_{r}.pt" for r in range(2)]
    meta = import_insightface(
        tmp_path / "backbone.pth", "iresnet_tiny", tmp_path / "out", embedding_size=EMB, head_shards=shards
    )
    assert meta == read_meta(tmp_path / "out") and meta["source"] == "insightface" and meta["num_classes"] == 9
    loaded, _ = load_backbone(tmp_path / "out")
    with torch.no_grad():
        assert torch.equal(loaded(_images()), source(_images()))
    assert torch.equal(load_head_weight(tmp_path / "out"), centres)


def test_insightface_import_rejects_the_wrong_arch(tmp_path):
    torch.save(create_backbone("iresnet_tiny", embedding_size=EMB).state_dict(), tmp_path / "backbone.pth")
    with pytest.raises(DataError, match="backbone.pth"):
        import_insightface(tmp_path / "backbone.pth", "iresnet10", tmp_path / "out", embedding_size=EMB)
    assert not (tmp_path / "out").exists()
    torch.save({"epoch": 1}, tmp_path / "checkpoint_gpu_0.pt")
    with pytest.raises(DataError, match="checkpoint_gpu_0.pt"):
        import_insightface(tmp_path / "backbone.pth", "iresnet_tiny", tmp_path / "out", embedding_size=EMB,
                           head_shards=[tmp_path / "checkpoint_gpu_0.pt"])
