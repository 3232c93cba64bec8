"""fit(): exact resume, non-finite loss, SIGTERM, on a tiny real backbone and a real .rec file."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from facekd.config import OptimParams
from facekd.data.dataset import open_training_data
from facekd.data.images import encode_jpeg
from facekd.data.face_rec import write_face_rec
from facekd.errors import TrainingError
from facekd.mlops.tracking import NullTracker, Tracker
from facekd.models.heads import MarginHead
from facekd.models.registry import create_backbone
from facekd.training.batch import StepBatch
from facekd.training.checkpoint import load_checkpoint
from facekd.training.loop import fit
from facekd.training.sampling import seed_everything
from facekd.training.objectives import HeadObjective

SRC = Path(__file__).resolve().parents[2] / "src"
OPTIM = OptimParams(epochs=2, batch_size=8, lr=0.05, milestones=(0.5,), grad_accum=2, checkpoint_every=3,
                    workers=0)


def write_tiny_rec(root: Path, identities: int = 4, per_identity: int = 4) -> Path:
    """identities x per_identity random 112x112 JPEGs as a real insightface .rec/.idx."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    items = [(c, encode_jpeg(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)))
             for c in range(identities) for _ in range(per_identity)]
    write_face_rec(root / "train.rec", root / "train.idx", items)
    return root


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_rec(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite store for the module (creating one costs seconds)."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    MlflowClient(uri).search_experiments()
    return uri


pytestmark = pytest.mark.usefixtures("run_in_tmp")


def _models(num_classes: int = 4) -> tuple[torch.nn.Module, HeadObjective]:
    seed_everything(0)
    backbone = create_backbone("iresnet_tiny", embedding_size=16, width=0.125)
    return backbone, HeadObjective(MarginHead(num_classes, 16, "arcface", 16.0, 0.3))


def _fit(run_dir: Path, data_dir: Path, tracker=None, optim: OptimParams = OPTIM, **kw) -> tuple[dict, torch.nn.Module, HeadObjective]:
    backbone, objective = _models()
    result = fit(run_name="t", backbone=backbone, objective=objective, dataset=open_training_data(data_dir, "rec"),
                 optim=optim, run_dir=run_dir, config={"optim": optim.model_dump(mode="json")}, seed=3,
                 tracker=tracker or NullTracker(), log_every=1, **kw)
    return result, backbone, objective


def test_resume_is_bit_identical_and_a_finished_run_does_nothing(tmp_path: Path, data_dir: Path) -> None:
    evaluated = []

    def eval_fn(backbone: torch.nn.Module, step: int) -> dict[str, float]:
        assert not backbone.training
        evaluated.append(step)
        torch.rand(3)  # must not shift the training RNG
        return {"eval/score": float(step)}

    with_eval = OPTIM.model_copy(update={"eval_every": 2})
    full, backbone_a, objective_a = _fit(tmp_path / "a", data_dir, optim=with_eval, eval_fn=eval_fn)
    assert full["completed"] and full["step"] == 4  # 16 images / batch 8 x 2 epochs
    assert evaluated == [2, 4] and full["eval"] == {"eval/score": 4.0}

    part, _, _ = _fit(tmp_path / "b", data_dir, max_steps=1)  # stops mid-epoch
    assert (part["step"], part["completed"]) == (1, False)
    resumed, backbone_b, objective_b = _fit(tmp_path / "b", data_dir)
    assert resumed["step"] == 4
    for a, b in zip(list(backbone_a.state_dict().values()) + list(objective_a.state_dict().values()),
                    list(backbone_b.state_dict().values()) + list(objective_b.state_dict().values())):
        assert torch.equal(a, b)
    assert resumed["images"] == full["images"] == 32

    before = (tmp_path / "b" / "last.pt").stat().st_mtime_ns
    again, backbone_c, _ = _fit(tmp_path / "b", data_dir)
    assert again["step"] == 4 and again["loss"] == resumed["loss"]
    assert (tmp_path / "b" / "last.pt").stat().st_mtime_ns == before
    assert torch.equal(backbone_c.state_dict()["fc.weight"], backbone_b.state_dict()["fc.weight"])

    # Another config: an unfinished run is refused, naming the key; a finished one is retrained
    # from scratch (new data or params after a completed `dvc repro`).
    changed = OPTIM.model_copy(update={"lr": 0.2})
    _fit(tmp_path / "c", data_dir, max_steps=1)
    with pytest.raises(TrainingError, match=r"optim\.lr: 0\.05 -> 0\.2"):
        _fit(tmp_path / "c", data_dir, optim=changed)
    fresh, _, _ = _fit(tmp_path / "b", data_dir, optim=changed)
    assert (fresh["step"], fresh["images"]) == (4, 32) and fresh["loss"] != resumed["loss"]
    assert load_checkpoint(tmp_path / "b" / "last.pt")["config"]["optim"]["lr"] == 0.2


class _NanAtStep(HeadObjective):
    """Adds a part that becomes NaN at optimizer step ``bad_step`` (1-based)."""

    def __init__(self, head: MarginHead, bad_step: int) -> None:
        super().__init__(head)
        self.bad_step = bad_step

    def forward(self, emb: torch.Tensor, batch: StepBatch) -> dict[str, torch.Tensor]:
        ce = super().forward(emb, batch)["loss"]
        extra = emb.sum() * (float("nan") if batch.step + 1 == self.bad_step else 0.0)
        return {"loss": ce + extra, "ce": ce, "extra": extra}


@pytest.mark.slow  # creating the MLflow SQLite store alone takes 4-8 s
def test_non_finite_loss_names_step_and_part(tmp_path: Path, data_dir: Path, tracking_uri: str) -> None:
    backbone, objective = _models()
    objective = _NanAtStep(objective.head, bad_step=3)
    tracker = Tracker(tracking_uri, "loop-tests")
    optim = OPTIM.model_copy(update={"checkpoint_every": 2, "grad_accum": 1})
    with pytest.raises(TrainingError, match=r"non-finite loss at step 3 .*extra=nan"):
        fit(run_name="nan", backbone=backbone, objective=objective, dataset=open_training_data(data_dir, "rec"),
            optim=optim, run_dir=tmp_path / "run", config={}, seed=0, tracker=tracker)
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 2
    assert MlflowClient(tracking_uri).get_run(tracker.run_id).info.status == "FAILED"


SIGTERM_SCRIPT = """
import sys
from pathlib import Path
sys.path.insert(0, {src!r})
import torch
torch.set_num_threads(1)
from facekd.config import OptimParams
from facekd.data.dataset import open_training_data
from facekd.models.heads import MarginHead
from facekd.models.registry import create_backbone
from facekd.mlops.tracking import Tracker
from facekd.training.loop import fit
from facekd.training.objectives import HeadObjective

def progress(batch):
    Path({marker!r}).write_text(str(batch.step))
    return batch

fit(run_name="sigterm", backbone=create_backbone("iresnet_tiny", embedding_size=16, width=0.125),
    objective=HeadObjective(MarginHead(4, 16)), dataset=open_training_data({data!r}, "rec"),
    optim=OptimParams(epochs=500, batch_size=8, checkpoint_every=10_000), run_dir=Path({run_dir!r}),
    config={{}}, seed=0, tracker=Tracker({uri!r}, "loop-tests"), extra_batch_fn=progress)
"""


@pytest.mark.slow
def test_sigterm_saves_checkpoint_and_ends_run_killed(tmp_path: Path, data_dir: Path, tracking_uri: str) -> None:
    marker, run_dir = tmp_path / "step.txt", tmp_path / "run"
    script = tmp_path / "train.py"
    script.write_text(SIGTERM_SCRIPT.format(src=str(SRC), marker=str(marker), data=str(data_dir),
                                            run_dir=str(run_dir), uri=tracking_uri))
    proc = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (marker.exists() and marker.read_text() not in ("", "0")):
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "training never got going"
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    state = load_checkpoint(run_dir / "last.pt")
    assert 1 <= state["step"] < 1000
    run = MlflowClient(tracking_uri).get_run(state["mlflow_run_id"])
    assert run.info.status == "KILLED"
    assert "train/loss" in run.data.metrics
    assert not any(p.name.startswith(".") for p in run_dir.iterdir())  # no temp file left behind


def test_auto_threads_resume_with_the_count_the_run_started_with(tmp_path: Path, data_dir: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """A run started on 2 idle cores and resumed beside a busy process keeps its 2 threads."""
    from facekd.training import runtime

    monkeypatch.setattr(runtime, "choose_threads", lambda setting: 2)
    _fit(tmp_path / "run", data_dir, max_steps=1)
    assert load_checkpoint(tmp_path / "run" / "last.pt")["threads"] == 2
    monkeypatch.setattr(runtime, "choose_threads", lambda setting: 1)
    with caplog.at_level("INFO", logger="facekd.training.loop"):
        _fit(tmp_path / "run", data_dir, max_steps=2)
    assert torch.get_num_threads() == 2
    assert "resuming with the run's 2 intra-op threads (auto chose 1 now)" in caplog.text
    pinned = OPTIM.model_copy(update={"threads": 1})
    _fit(tmp_path / "pinned", data_dir, optim=pinned, max_steps=1)
    assert load_checkpoint(tmp_path / "pinned" / "last.pt")["threads"] == 1
