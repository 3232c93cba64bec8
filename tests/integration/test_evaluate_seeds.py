"""`facekd evaluate STUDENT` with ``distill.seeds`` > 1: the students of the other seeds are scored on
the gate metric beside the first (real benchmarks of the synthetic generator, real MLflow store)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from facekd.config import parse_params
from facekd.errors import DataError
from tests.integration.test_evaluate_int8 import MODEL, workspace  # noqa: F401 - the module's fixture

pytestmark = pytest.mark.slow


def _params(root: Path, seeds: int):
    # the tiny set has too few impostor pairs for FAR 1e-3
    return parse_params({"seed": 4, "distill": {"seeds": seeds}, "evaluate": {"batch_size": 32},
                         "registry": {"gate_metric": "ijb.tar@far=1e-1"},
                         "tracking": {"uri": f"sqlite:///{root / 'mlflow.db'}"}})


def test_other_seeds_are_scored_on_the_gate_metric(workspace, monkeypatch):  # noqa: F811 - the fixture
    from facekd.stages import evaluate

    monkeypatch.chdir(workspace)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(DataError, match=r"models/none/seeds/5: no student trained under seed 5 .*dvc repro distill@none"):
        evaluate.run(_params(workspace, 2), MODEL)

    # seeds 5 and 6 hold the first seed's weights: the same gate metric, scored apart
    for seed in (5, 6):
        folder = workspace / "models" / MODEL / "seeds" / str(seed)
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("backbone.pt", "meta.json"):
            shutil.copy(workspace / "models" / MODEL / name, folder / name)
    metrics = evaluate.run(_params(workspace, 3), MODEL)
    gate = metrics["ijb"]["tar@far=1e-1"]
    assert 0 < gate < 1
    assert metrics["seeds"] == {"4": gate, "5": gate, "6": gate}
    written = json.loads((workspace / "metrics/eval" / f"{MODEL}.json").read_text())
    assert written["seeds"] == metrics["seeds"]
    one_seed = evaluate.run(_params(workspace, 1), MODEL)
    assert "seeds" not in one_seed
