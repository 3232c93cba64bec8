"""Stage train_teacher on tiny params: outputs, idempotent rerun, init_from, MLflow run."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from facekd.config import parse_params
from facekd.data.images import encode_jpeg
from facekd.data.face_rec import write_face_rec
from facekd.models.store import load_backbone, load_head_weight
from facekd.stages import train_teacher
from facekd.training.checkpoint import load_checkpoint


def _prepare(root: Path, identities: int = 4, per_identity: int = 4) -> None:
    """A prepared folder as `facekd prepare` leaves it: train.rec/.idx + meta.json."""
    rng = np.random.default_rng(1)
    root.mkdir(parents=True)
    items = [(c, encode_jpeg(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)))
             for c in range(identities) for _ in range(per_identity)]
    info = write_face_rec(root / "train.rec", root / "train.idx", items)
    (root / "meta.json").write_text(json.dumps({**info, "source": "synthetic"}))


def _params(tmp_path: Path, **teacher: object):
    return parse_params({
        "seed": 1,
        "teacher": {"backbone": {"arch": "iresnet_tiny", "embedding_size": 16, "width": 0.125},
                    "head": {"scale": 16.0, "margin": 0.3},
                    "optim": {"epochs": 2, "batch_size": 8, "lr": 0.05, "checkpoint_every": 2}, **teacher},
        "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "stage-tests"},
    })


pytestmark = pytest.mark.usefixtures("run_in_tmp")


@pytest.mark.slow
def test_train_teacher_writes_outputs_and_rerun_does_nothing(tmp_path: Path) -> None:
    _prepare(tmp_path / "data" / "prepared")
    params = _params(tmp_path)
    train_teacher.run(params)

    model, meta = load_backbone(tmp_path / "models" / "teacher")
    assert (meta["arch"], meta["embedding_size"], meta["num_classes"]) == ("iresnet_tiny", 16, 4)
    assert meta["params"] > 0 and meta["gmacs"] > 0 and len(meta["data_hash"]) == 64
    assert load_head_weight(tmp_path / "models" / "teacher").shape == (4, 16)
    assert model(torch.zeros(1, 3, 112, 112)).shape == (1, 16)
    metrics = json.loads((tmp_path / "metrics" / "train" / "teacher.json").read_text())
    assert metrics["steps"] == 4 and metrics["epochs"] == 2 and np.isfinite(metrics["loss"])
    assert metrics["img_per_s"] > 0
    state = load_checkpoint(tmp_path / "checkpoints" / "teacher" / "last.pt")
    assert state["step"] == 4
    run = MlflowClient(params.tracking.uri).get_run(state["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.params["teacher.optim.lr"] == "0.05"
    assert run.data.tags["dvc.stage"] == "train_teacher"
    artifacts = {a.path for a in MlflowClient(params.tracking.uri).list_artifacts(run.info.run_id)}
    assert {"config.json", "model"} <= artifacts

    checkpoint_mtime = (tmp_path / "checkpoints" / "teacher" / "last.pt").stat().st_mtime_ns
    weights = (tmp_path / "models" / "teacher" / "backbone.pt").read_bytes()
    train_teacher.run(params)
    assert (tmp_path / "checkpoints" / "teacher" / "last.pt").stat().st_mtime_ns == checkpoint_mtime
    assert json.loads((tmp_path / "metrics" / "train" / "teacher.json").read_text()) == metrics
    reloaded, _ = load_backbone(tmp_path / "models" / "teacher")
    for a, b in zip(model.state_dict().values(), reloaded.state_dict().values()):
        assert torch.equal(a, b)
    assert len(weights) > 0


@pytest.mark.slow
def test_init_from_a_model_dir(tmp_path: Path) -> None:
    _prepare(tmp_path / "data" / "prepared")
    train_teacher.run(_params(tmp_path, optim={"epochs": 1, "batch_size": 8, "lr": 0.05}))
    source, _ = load_backbone(tmp_path / "models" / "teacher")
    (tmp_path / "models" / "teacher").rename(tmp_path / "start")
    from facekd.models.registry import create_backbone
    from facekd.models.heads import MarginHead

    backbone = create_backbone("iresnet_tiny", embedding_size=16, width=0.125)
    head = MarginHead(4, 16)
    train_teacher.init_from_model(str(tmp_path / "start"), backbone, head)
    for a, b in zip(source.state_dict().values(), backbone.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(head.weight.detach(), load_head_weight(tmp_path / "start"))
