"""A short training run still draws a loss curve in MLflow (issue 19, item 8: 8 points per student).

The embedded students train 74 steps; a fixed "log every 10 steps" gave MLflow 8 points each. The
loop now logs about 100 points a run (every step below 200 steps). Checked on a real MLflow SQLite
store with a real run of the training loop.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from facekd.config import OptimParams
from facekd.data.dataset import open_training_data
from facekd.mlops.tracking import Tracker
from facekd.training.loop import fit
from facekd.training.progress import LOG_EVERY_MAX, log_interval
from tests.integration.test_training_loop import _models, write_tiny_rec

pytestmark = pytest.mark.slow


def test_log_interval_gives_a_curve_for_short_and_long_runs() -> None:
    assert log_interval(74) == 1 and log_interval(199) == 1  # the embedded students: every step
    assert log_interval(222) == 2 and 222 // log_interval(222) >= 100  # the embedded teacher
    assert log_interval(10**6) == LOG_EVERY_MAX  # full scale: a point every 100 steps at least
    assert all(total // log_interval(total) >= min(total, 100) for total in (1, 7, 50, 74, 150, 999, 12345))


@pytest.mark.usefixtures("run_in_tmp")
def test_a_74_step_run_logs_every_step_to_mlflow(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    data = write_tiny_rec(tmp_path / "data", identities=4, per_identity=2)  # 8 images: one step per epoch
    optim = OptimParams(epochs=74, batch_size=8, lr=0.01, milestones=(0.9,), checkpoint_every=10_000, workers=0)
    backbone, objective = _models()
    result = fit(run_name="rate", backbone=backbone, objective=objective, dataset=open_training_data(data, "rec"),
                 optim=optim, run_dir=tmp_path / "run", config={"optim": optim.model_dump(mode="json")}, seed=0,
                 tracker=Tracker(uri, "log-rate"))
    assert result["step"] == 74
    history = MlflowClient(uri).get_metric_history(result["mlflow_run_id"], "train/loss")
    assert len(history) == 74, f"{len(history)} loss points for 74 steps"
    assert sorted(p.step for p in history) == list(range(1, 75))
