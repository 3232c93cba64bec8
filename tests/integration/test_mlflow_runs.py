"""MLflow as its users expect (issue 19, item 8), on a real SQLite store: the experiment opens as
model training, runs of crashed processes are closed on the next start, evaluation is a run of its
own nested under the training run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from facekd.mlops.tracking import Tracker

pytestmark = pytest.mark.slow


@pytest.fixture()
def uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root is relative to the cwd
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_the_experiment_is_tagged_as_model_training(uri: str) -> None:
    client = MlflowClient(uri)
    older = client.create_experiment("made-before")  # by an older facekd: no kind
    for name in ("facekd", "made-before"):
        tracker = Tracker(uri, name)
        tracker.start("t", {}, None, {})
        tracker.end()
        assert client.get_experiment_by_name(name).tags["mlflow.experimentKind"] == "custom_model_development"
    assert client.get_experiment(older).tags["mlflow.experimentKind"] == "custom_model_development"


def test_a_run_left_running_by_a_killed_process_is_closed_on_the_next_start(uri: str) -> None:
    child = textwrap.dedent(f"""
        import os, signal
        from facekd.mlops.tracking import Tracker
        tracker = Tracker({uri!r}, "facekd")
        print(tracker.start("crashes", {{}}, None, {{}}), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # no finally, no end(): what a segfault or OOM leaves
        """)
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "MLFLOW_TRACKING_URI": uri})
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    crashed = proc.stdout.strip().splitlines()[-1]
    client = MlflowClient(uri)
    assert client.get_run(crashed).info.status == "RUNNING"
    alive = Tracker(uri, "facekd")
    alive.start("alive", {}, None, {})  # this process's own run: never touched
    again = Tracker(uri, "facekd")
    again.start("next stage", {}, None, {})
    run = client.get_run(crashed)
    assert run.info.status == "FAILED" and "ended without closing this run" in run.data.tags["facekd.reconciled"]
    assert client.get_run(alive.run_id).info.status == "RUNNING"
    alive.end()
    again.end()


def test_evaluation_is_a_nested_run_and_leaves_the_training_run_alone(uri: str, tmp_path: Path) -> None:
    from facekd.config import parse_params
    from facekd.stages.evaluate import _log_to_mlflow

    training = Tracker(uri, "facekd", stage="train_teacher")
    training.start("train-teacher", {}, None, {})
    training.end()
    client = MlflowClient(uri)
    before = client.get_run(training.run_id)
    png = tmp_path / "roc.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n")
    params = parse_params({"tracking": {"uri": uri}})
    _log_to_mlflow(params, {"mlflow_run_id": training.run_id}, {"model": "teacher", "ijb": {"tar@far=1e-3": 0.5}},
                   png)
    after = client.get_run(training.run_id)
    assert (after.info.end_time, after.data.tags["dvc.stage"]) == (before.info.end_time, "train_teacher")
    assert not after.data.metrics
    (evaluation,) = client.search_runs([after.info.experiment_id], filter_string="tags.`facekd.model` = 'teacher'")
    assert evaluation.data.tags["mlflow.parentRunId"] == training.run_id
    assert evaluation.data.tags["dvc.stage"] == "evaluate@teacher" and evaluation.info.status == "FINISHED"
    assert evaluation.data.metrics["eval.ijb.tar_at_far_1e-3"] == 0.5
