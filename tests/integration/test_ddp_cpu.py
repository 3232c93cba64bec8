"""Two CPU processes under torchrun (gloo): sharded PartialFC checkpoints resume on one process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from facekd.config import OptimParams, parse_params
from facekd.data.dataset import open_training_data
from facekd.data.images import encode_jpeg
from facekd.data.face_rec import write_face_rec
from facekd.mlops.tracking import NullTracker
from facekd.models.heads import MarginHead
from facekd.models.registry import create_backbone
from facekd.models.store import load_backbone, load_head_weight
from facekd.stages import train_teacher
from facekd.training.checkpoint import load_checkpoint
from facekd.training.loop import fit
from facekd.training.objectives import HeadObjective

SRC = Path(__file__).resolve().parents[2] / "src"
OPTIM = {"epochs": 2, "batch_size": 8, "lr": 0.05, "checkpoint_every": 100}
TEACHER = {"backbone": {"arch": "iresnet_tiny", "embedding_size": 16, "width": 0.125},
           "head": {"scale": 16.0, "margin": 0.3}, "optim": OPTIM}

SCRIPT = """
import json, sys
from pathlib import Path
sys.path.insert(0, {src!r})
import torch
from facekd.config import OptimParams, parse_params
from facekd.data.dataset import open_training_data
from facekd.models.partialfc import PartialFC
from facekd.models.registry import create_backbone
from facekd.stages import train_teacher
from facekd.mlops.tracking import NullTracker
from facekd.training.distributed import init_distributed
from facekd.training.loop import fit
from facekd.training.sampling import seed_everything
from facekd.training.objectives import HeadObjective

dist = init_distributed()
assert dist.world_size == 2 and dist.distributed
seed_everything(0)
backbone = create_backbone("iresnet_tiny", embedding_size=16, width=0.125)
head = PartialFC(4, 16, "arcface", 16.0, 0.3, backbone_grads_averaged=True)
assert head.weight.shape == (2, 16)  # each rank holds half of the 4 centres
result = fit(run_name="ddp", backbone=backbone, objective=HeadObjective(head),
             dataset=open_training_data("data/prepared", "rec"), optim=OptimParams(**{optim!r}),
             run_dir=Path("checkpoints/partial"), config={{"optim": {optim!r}}}, seed=0, tracker=NullTracker(),
             dist=dist, max_steps=2)
assert result["step"] == 2
train_teacher.run(parse_params(json.loads({params!r})))
"""


def _prepare(root: Path) -> None:
    rng = np.random.default_rng(2)
    root.mkdir(parents=True)
    items = [(c, encode_jpeg(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8))) for c in range(4) for _ in range(4)]
    info = write_face_rec(root / "train.rec", root / "train.idx", items)
    (root / "meta.json").write_text(json.dumps(info))


@pytest.mark.slow
def test_two_rank_checkpoints_resume_on_one_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for var in ("MLFLOW_TRACKING_URI", "WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    _prepare(tmp_path / "data" / "prepared")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(uri).search_experiments()  # create the store once, before two processes start
    raw = {"seed": 0, "teacher": TEACHER, "tracking": {"uri": uri, "experiment": "ddp"}}
    script = tmp_path / "ddp.py"
    script.write_text(SCRIPT.format(src=str(SRC), optim=OPTIM, params=json.dumps(raw)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]

    # The partial 2-rank checkpoint holds the full (C, d) centres and their momentum.
    state = load_checkpoint(tmp_path / "checkpoints" / "partial" / "last.pt")
    assert state["step"] == 2 and state["world_size"] == 2
    assert state["objective"]["head.weight"].shape == (4, 16)
    head_slot = state["optimizer"]["state"][max(state["optimizer"]["state"])]
    assert head_slot["momentum_buffer"].shape == (4, 16)

    # ... and resumes on one process with an ordinary MarginHead, at step 2.
    torch.set_num_threads(1)
    backbone = create_backbone("iresnet_tiny", embedding_size=16, width=0.125)
    objective = HeadObjective(MarginHead(4, 16, "arcface", 16.0, 0.3))
    result = fit(run_name="ddp", backbone=backbone, objective=objective,
                 dataset=open_training_data(tmp_path / "data" / "prepared", "rec"), optim=OptimParams(**OPTIM),
                 run_dir=tmp_path / "checkpoints" / "partial", config={"optim": OPTIM}, seed=0, tracker=NullTracker(),
                 max_steps=2)
    assert result["step"] == 2  # loaded the 2-rank state; nothing left to do up to step 2
    assert torch.equal(objective.head.weight.detach(), state["objective"]["head.weight"])
    for key, value in state["model"].items():
        assert torch.equal(backbone.state_dict()[key], value)
    result = fit(run_name="ddp", backbone=backbone, objective=objective,
                 dataset=open_training_data(tmp_path / "data" / "prepared", "rec"), optim=OptimParams(**OPTIM),
                 run_dir=tmp_path / "checkpoints" / "partial", config={"optim": OPTIM}, seed=0, tracker=NullTracker())
    assert result["completed"] and result["step"] == 4

    # The stage under torchrun wrote one model (rank 0) with the gathered head; a 1-process rerun agrees.
    teacher_dir = tmp_path / "models" / "teacher"
    two_rank_head = load_head_weight(teacher_dir)
    two_rank_model, meta = load_backbone(teacher_dir)
    assert two_rank_head.shape == (4, 16) and meta["trained_steps"] == 4
    train_teacher.run(parse_params(raw))
    assert torch.equal(load_head_weight(teacher_dir), two_rank_head)
    for a, b in zip(two_rank_model.state_dict().values(), load_backbone(teacher_dir)[0].state_dict().values()):
        assert torch.equal(a, b)
    run = MlflowClient(uri).get_run(meta["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["facekd.world_size"] == "1"  # reattached by rank 0
