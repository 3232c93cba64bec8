"""Property 6: concurrency.

a) Two distill stages logging to one SQLite MLflow store at the same time lose nothing: a copy of
   the finished reference repo (its store already holds the sequential runs of qud and
   adadistill) trains both students again, as two `facekd distill` processes started together.
   The two new runs must be FINISHED with exactly the params and the metric history (every step)
   of their sequential twins in the same store, and end with the same weights.
b) A second `dvc repro` while one runs fails fast, and through the Prefect flow's runner
   (`pipelines.dvcstages.run_checked`, what `reproduce`/`retrain` call) says "pipeline busy";
   the running pipeline is not disturbed.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from pipelines.dvcstages import CommandFailed, dvc_command, run_checked
from tests.faults.conftest import (FACEKD, Background, assert_same_tree, checkpoint_step, clone, dvc, kill_group,
                                   load_tensors, wait_for, write_params)

pytestmark = pytest.mark.slow

METHODS = ("qud", "adadistill")


def _run_record(client, run_id: str) -> dict:
    """Status, params and {metric: {step: value}} of one run (timing metrics left out)."""
    run = client.get_run(run_id)
    history = {}
    for key in run.data.metrics:
        if "img_per_s" not in key:
            points = client.get_metric_history(run_id, key)
            history[key] = {p.step: p.value for p in points}
            assert len(points) == len(history[key]), f"{run_id} {key}: a step was logged twice"
    return {"status": run.info.status, "params": run.data.params, "metrics": history}


def test_parallel_distill_runs_share_one_sqlite_store(reference_run: Background, tmp_path: Path) -> None:
    reference_run.wait()
    ws = clone(reference_run.cwd, tmp_path / "repo")
    before = {m: json.loads((ws / "models" / m / "meta.json").read_text())["mlflow_run_id"] for m in METHODS}
    for method in METHODS:
        for path in (ws / "checkpoints/students" / method, ws / "models" / method):
            shutil.rmtree(path)
        (ws / "metrics/train" / f"{method}.json").unlink()

    jobs = [Background([FACEKD, "distill", m], ws, tmp_path / f"{m}.log") for m in METHODS]
    for job in jobs:
        job.wait(timeout=300)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{ws / 'mlflow.db'}")
    for method in METHODS:
        new_id = json.loads((ws / "models" / method / "meta.json").read_text())["mlflow_run_id"]
        assert new_id != before[method]
        sequential, parallel = _run_record(client, before[method]), _run_record(client, new_id)
        assert parallel["status"] == "FINISHED"
        assert parallel["params"] == sequential["params"], f"{method}: params lost or changed"
        assert parallel["metrics"] == sequential["metrics"], f"{method}: metric points lost or changed"
        assert len(parallel["params"]) > 20 and parallel["metrics"]["train/loss"]
        for name in ("backbone.pt",):
            assert_same_tree(load_tensors(ws / "models" / method / name),
                             load_tensors(reference_run.cwd / "models" / method / name), f"models/{method}/{name}")


def test_second_repro_fails_fast_with_pipeline_busy(validated_repo: Path, tmp_path: Path) -> None:
    ws = clone(validated_repo, tmp_path / "repo")
    write_params(ws, {"teacher": {"optim": {"epochs": 40}}})  # long enough to be caught running
    first = Background(dvc_command("repro", "train_teacher"), ws, tmp_path / "first.log")
    last = ws / "checkpoints/teacher/last.pt"
    wait_for(lambda: checkpoint_step(last) >= 1, 300, "the first pipeline to be training", first.proc)

    started = time.monotonic()
    plain = dvc("repro", "train_teacher", cwd=ws, check=False)
    took = time.monotonic() - started
    output = plain.stdout + plain.stderr
    assert plain.returncode != 0 and ("Unable to acquire lock" in output or "is busy" in output), output[-2000:]
    assert took < 30, f"the second dvc repro took {took:.0f} s to give up"
    with pytest.raises(CommandFailed, match=r"^pipeline busy: another `dvc repro`"):
        run_checked(dvc_command("repro", "train_teacher"), ws, lambda line: None, what="DVC stage 'train_teacher'")

    step = checkpoint_step(last)
    wait_for(lambda: checkpoint_step(last) > step, 120, "the first pipeline to go on training", first.proc)
    kill_group(first.proc)
