"""The ``retrain`` flow's "new data?" decision on real DVC pipelines.

The main test runs the real project (a temporary copy) on ``data.source: folder`` at params.yaml's
default folders (``data/raw/train``, ``data/raw/eval``), filled from the synthetic generator's
output; only the ``none`` student (and no SHKD branch); tiny sizes; a local MLflow sqlite store.
The first retrain reproduces and promotes, a second finds "no change", and one new identity folder
makes ``dvc status prepare`` see new data: the pipeline reruns from ``prepare`` and the registry
gets a new version. A fast test on the trivial project of test_pipelines.py covers data that a
failed retrain prepared but never trained on.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.conftest import TINY, dvc, make_tiny_repo, set_params

pytestmark = pytest.mark.slow

IDENTITIES = 8  # in the first tree; the test then adds one more
FOLDER_SOURCE = {
    "data": {"source": "folder"},  # data.path / data.eval_path: the data/raw/ defaults
    "distill": {"methods": ["none"], "head_sharing": []},  # no SHKD branch: its stages only add wall time
    "evaluate": {"models": ["teacher", "none"]},
    "export": {"models": ["none"]},  # register considers students only
    "schedule": {"retries": 0},
}


@pytest.fixture(scope="module")
def faces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """IDENTITIES + 1 synthetic training identities (train.rec) and the synthetic eval sets."""
    from facekd.config import SyntheticData
    from facekd.data.synthetic import generate

    out = tmp_path_factory.mktemp("faces")
    cfg = SyntheticData(**{**TINY["data"]["synthetic"], "train_identities": IDENTITIES + 1})
    generate(cfg, out / "train", out / "eval", progress=False)
    return out


def write_identity(faces: Path, label: int, train_dir: Path) -> None:
    """Identity ``label`` of the generated train.rec as ``train_dir/id<label>/<image>.jpg``."""
    from facekd.data.face_rec import FaceRecordFile

    rec = FaceRecordFile(faces / "train" / "train.rec")
    folder = train_dir / f"id{label:03d}"
    folder.mkdir()
    for i in np.flatnonzero(rec.labels == label):
        (folder / f"{i:04d}.jpg").write_bytes(rec.image_bytes(int(i)))


def registry(repo: Path):
    """An MLflow client on the repo's sqlite store and the repo's params."""
    from mlflow.tracking import MlflowClient

    from facekd.config import load_params

    return MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}"), load_params(repo / "params.yaml")


def registry_state(repo: Path) -> tuple[list[int], int | None, int | None]:
    """(every version of the registered model, the version under ``candidate``, under ``champion``)."""
    from facekd.mlops.model_registry import CANDIDATE, CHAMPION

    client, params = registry(repo)
    name = params.registry.model_name
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
    alias = {key: int(version) for key, version in client.get_registered_model(name).aliases.items()}
    return versions, alias.get(CANDIDATE), alias.get(CHAMPION)


def gate_promotes(repo: Path, candidate: int, champion: int) -> bool:
    """The promotion gate's verdict for ``candidate`` against ``champion`` (from their tags)."""
    from facekd.mlops.model_registry import decide

    client, params = registry(repo)
    name, cfg = params.registry.model_name, params.registry
    versions = (client.get_model_version(name, str(v)) for v in (candidate, champion))
    return decide(*versions, cfg.gate_metric, cfg.min_improvement).promote


def prepared_classes(repo: Path) -> int:
    return json.loads((repo / "data/prepared/meta.json").read_text())["num_classes"]


def test_data_a_failed_retrain_prepared_is_retrained_next_time(prefect_server, tmp_path):
    """``prepare`` succeeded on new data, then ``train`` failed: ``dvc status prepare`` is clean,
    yet the next retrain must finish the job rather than report "no change"."""
    from pipelines.retrain import NO_CHANGE, retrain
    from tests.integration.test_pipelines import make_project

    repo = make_project(tmp_path / "repo", train_cmd="python flaky.py", retries=0)
    attempts = repo / "attempts.txt"  # flaky.py fails while its attempt number is below 3
    attempts.write_text("2")
    assert retrain(repo=str(repo), promote_model=False, return_state=True).is_completed()

    (repo / "raw.txt").write_text("raw-v2\n")
    attempts.write_text("0")
    assert retrain(repo=str(repo), promote_model=False, return_state=True).is_failed()
    assert (repo / "prepared.txt").read_text() == "raw-v2\nprepare\n"  # prepared, never trained on

    attempts.write_text("2")
    resumed = retrain(repo=str(repo), promote_model=False, return_state=True)
    assert resumed.is_completed() and resumed.message.startswith("retrained"), resumed.message
    assert (repo / "report.txt").read_text().startswith("raw-v2\n")
    assert retrain(repo=str(repo), promote_model=False, return_state=True).message == NO_CHANGE


def test_retrain_reruns_and_registers_only_when_an_identity_is_added(prefect_server, faces, tmp_path,
                                                                     monkeypatch):
    from pipelines.retrain import NO_CHANGE, retrain

    repo = make_tiny_repo(tmp_path / "repo")
    set_params(repo, FOLDER_SOURCE)
    train_dir, eval_dir = repo / "data/raw/train", repo / "data/raw/eval"
    for label in range(IDENTITIES):
        write_identity(faces, label, train_dir)
    shutil.copytree(faces / "eval", eval_dir, dirs_exist_ok=True)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{repo / 'mlflow.db'}")
    # One thread per stage process: the tiny models gain nothing from more, and on a shared 2-core
    # machine oversubscribed torch threads spin.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")

    first = retrain(repo=str(repo), return_state=True)
    assert first.is_completed() and first.message.startswith("retrained"), first.message
    assert "promotion gate run" in first.message
    assert prepared_classes(repo) == IDENTITIES
    assert registry_state(repo) == ([1], 1, 1)  # no champion yet: the gate promotes v1
    registered = (repo / "reports/registry.json").stat().st_mtime_ns

    again = retrain(repo=str(repo), return_state=True)
    assert again.is_completed() and again.message == NO_CHANGE, again.message
    assert (repo / "reports/registry.json").stat().st_mtime_ns == registered
    assert registry_state(repo) == ([1], 1, 1)

    write_identity(faces, IDENTITIES, train_dir)
    changed = retrain(repo=str(repo), return_state=True)
    assert changed.is_completed() and changed.message.startswith("retrained"), changed.message
    assert prepared_classes(repo) == IDENTITIES + 1
    versions, candidate, champion = registry_state(repo)
    assert versions == [1, 2] and candidate == 2
    # The gate ran: champion moved to v2 exactly when v2 beats v1 on the gate metric.
    assert champion == (2 if gate_promotes(repo, 2, 1) else 1)
    assert json.loads(dvc("status", "--json", cwd=repo).stdout or "{}") == {}
