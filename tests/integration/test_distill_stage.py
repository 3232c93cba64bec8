"""Stages teacher_features, distill and student_aware_teacher on tiny real files.

One module-wide project holds a real .rec training set, a tiny teacher saved as a model folder,
its feature cache and an MLflow SQLite store; each test works in its own folder that links them.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from facekd.config import parse_params
from facekd.data.images import encode_jpeg
from facekd.data.face_rec import write_face_rec
from facekd.distill.registry import foreach_methods
from facekd.errors import ConfigError, DataError
from facekd.fsio import file_sha256
from facekd.models.registry import create_backbone
from facekd.models.store import load_backbone, load_head_weight, save_model_dir
from facekd.stages import distill, student_aware_teacher, teacher_features
from facekd.training.checkpoint import load_checkpoint

IDS, PER_ID, D = 6, 4, 16
STUDENTS = sorted(foreach_methods())
WITH_OWN_HEAD = {"none", "logit", "thkd", "gkd"}


def _jpegs(rng: np.random.Generator, n: int) -> list[bytes]:
    return [encode_jpeg(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)) for _ in range(n)]


def _save_teacher(path: Path, seed: int) -> None:
    torch.manual_seed(seed)
    model = create_backbone("iresnet_tiny", embedding_size=D, width=0.125)
    save_model_dir(path, model, {"role": "teacher"}, head=torch.randn(IDS, D))


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data/prepared (6 ids x 4 JPEGs), models/teacher, features/teacher; the first tracked run
    creates mlflow.db (seconds), so the fast tests below never pay for it."""
    root = tmp_path_factory.mktemp("project")
    prepared = root / "data" / "prepared"
    prepared.mkdir(parents=True)
    rng = np.random.default_rng(0)
    items = [(c, blob) for c in range(IDS) for blob in _jpegs(rng, PER_ID)]
    info = write_face_rec(prepared / "train.rec", prepared / "train.idx", items)
    (prepared / "meta.json").write_text(json.dumps({**info, "source": "synthetic"}))
    _save_teacher(root / "models" / "teacher", seed=0)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        teacher_features.run(_params(root), "teacher")
    return root


def _params(project: Path, **extra: Any):
    base = {
        "seed": 1,
        "teacher": {"backbone": {"arch": "iresnet_tiny", "embedding_size": D, "width": 0.125},
                    "optim": {"epochs": 1, "batch_size": 8, "lr": 0.05}},
        "distill": {"student": {"arch": "mfn", "embedding_size": D, "width": 0.125},
                    "head": {"scale": 16.0},
                    "optim": {"epochs": 1, "batch_size": 8, "lr": 0.05, "checkpoint_every": 2},
                    "qud": {"queue_size": 16}, "gkd": {"warmup_epochs": 0.5},
                    "shkd": {"teacher_epochs": 1, "teacher_lr": 0.05}},
        "tracking": {"uri": f"sqlite:///{project / 'mlflow.db'}", "experiment": "distill-tests"},
    }
    methods = extra.get("distill", {}).get("methods")
    if methods:  # only trained models can be evaluated or exported
        base |= {"evaluate": {"models": ["teacher", *methods]}, "export": {"models": ["teacher", *methods]}}
    return parse_params(_merge(base, extra))


pytestmark = pytest.mark.usefixtures("run_in_tmp")


def _link(project: Path, tmp_path: Path, *names: str) -> None:
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).symlink_to(project / name)


def _read(path: str) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


@pytest.mark.slow
@pytest.mark.parametrize("method", STUDENTS)
def test_every_method_trains_a_student(method: str, project: Path, tmp_path: Path) -> None:
    _link(project, tmp_path, "data/prepared", "models/teacher", "features/teacher")
    params = _params(project)
    distill.run(params, method)

    model, meta = load_backbone(f"models/{method}")
    assert (meta["arch"], meta["embedding_size"], meta["method"], meta["role"]) == ("mfn", D, method, "student")
    assert meta["data_hash"] == _read("features/teacher/meta.json")["data_hash"]
    assert meta["trained_steps"] == 3 and meta["params"] > 0 and meta["gmacs"] > 0
    if method == "none":
        assert "teacher" not in meta  # the baseline never reads the teacher
    else:
        assert meta["teacher"] == "teacher"
        assert meta["teacher_weights_sha256"] == file_sha256("models/teacher/backbone.pt")
    assert Path(f"models/{method}/head.pt").is_file() == (method in WITH_OWN_HEAD)
    assert model(torch.zeros(1, 3, 112, 112)).shape == (1, D)

    metrics = _read(f"metrics/train/{method}.json")
    assert metrics["steps"] == 3 and np.isfinite(metrics["loss"]) and metrics["img_per_s"] > 0
    state = load_checkpoint(f"checkpoints/students/{method}/last.pt")
    assert state["step"] == 3 and state["config"]["method"] == method
    run = MlflowClient(params.tracking.uri).get_run(state["mlflow_run_id"])
    assert run.info.run_name == f"distill-{method}" and run.info.status == "FINISHED"
    assert run.data.tags["dvc.stage"] == f"distill@{method}"
    section = params.distill.model_dump()[method]
    assert {f"distill.{method}.{k}" for k in section} <= set(run.data.params)
    parts = {k for k in metrics if k.startswith("loss.")}
    assert {f"train/{k[5:]}" for k in parts} <= set(run.data.metrics)


@pytest.mark.slow
def test_rerun_of_a_finished_student_does_nothing(project: Path, tmp_path: Path) -> None:
    _link(project, tmp_path, "data/prepared", "models/teacher", "features/teacher")
    params = _params(project)
    distill.run(params, "feature")
    checkpoint = tmp_path / "checkpoints/students/feature/last.pt"
    mtime, metrics = checkpoint.stat().st_mtime_ns, _read("metrics/train/feature.json")
    distill.run(params, "feature")
    assert checkpoint.stat().st_mtime_ns == mtime and _read("metrics/train/feature.json") == metrics

    # New params after a finished run (dvc repro, retrain): trained again, not refused. (An
    # unfinished run under other params is refused: tests/integration/test_training_loop.py.)
    distill.run(_params(project, distill={"feature": {"weight": 2.0}}), "feature")
    assert checkpoint.stat().st_mtime_ns != mtime and _read("metrics/train/feature.json") != metrics
    assert _read("models/feature/meta.json")["distill_params"]["weight"] == 2.0


@pytest.mark.slow
def test_seeds_train_in_one_stage_into_the_first_seeds_folder(project: Path, tmp_path: Path) -> None:
    _link(project, tmp_path, "data/prepared", "models/teacher", "features/teacher")
    params = _params(project, distill={"seeds": 3})  # seed 1: models/feature; seeds 2 and 3 inside it
    distill.run(params, "feature")
    first, *others = (load_backbone(f) for f in ("models/feature", "models/feature/seeds/2", "models/feature/seeds/3"))
    assert [meta["seed"] for _, meta in (first, *others)] == [1, 2, 3]
    weights = [next(iter(model.state_dict().values())) for model, _ in (first, *others)]
    assert not torch.equal(weights[0], weights[1]) and not torch.equal(weights[1], weights[2])
    assert _read("metrics/train/feature.json")["steps"] == 3
    assert _read("models/feature/seeds/3/train_metrics.json")["steps"] == 3
    state = load_checkpoint("checkpoints/students/feature/seeds/2/last.pt")
    assert state["config"]["seed"] == 2 and state["step"] == 3
    run = MlflowClient(params.tracking.uri).get_run(state["mlflow_run_id"])
    assert run.info.run_name == "distill-feature-seed2" and run.data.tags["dvc.stage"] == "distill@feature"
    first_run = MlflowClient(params.tracking.uri).get_run(first[1]["mlflow_run_id"])
    logged = {a.path for a in MlflowClient(params.tracking.uri).list_artifacts(first_run.info.run_id, "model")}
    assert logged == {"model/backbone.pt", "model/meta.json"}  # the model's files, not the other seeds'

    mtime = Path("checkpoints/students/feature/seeds/3/last.pt").stat().st_mtime_ns
    distill.run(params, "feature")  # finished: every seed confirmed, none retrained
    assert Path("checkpoints/students/feature/seeds/3/last.pt").stat().st_mtime_ns == mtime


@pytest.mark.slow
def test_cached_and_online_teacher_train_the_same_student(project: Path, tmp_path: Path) -> None:
    losses = {}
    for source in ("cache", "online"):
        work = tmp_path / source
        work.mkdir()
        _link(project, work, "data/prepared", "models/teacher", "features/teacher")
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(work)
            distill.run(_params(project, distill={"teacher_source": source}), "adadistill")
        losses[source] = _read(str(work / "metrics/train/adadistill.json"))
        assert _read(str(work / "models/adadistill/meta.json"))["teacher_source"] == source
    # The cache embeds in other batches than the online teacher: oneDNN's AVX-512 kernels round
    # batch-dependently (alpha: rel 1.5e-4 measured there; it held 1e-4 on AVX2); the loss holds 1e-4.
    assert losses["cache"]["loss.alpha"] == pytest.approx(losses["online"]["loss.alpha"], rel=1e-3)
    assert losses["cache"]["loss"] == pytest.approx(losses["online"]["loss"], rel=1e-4, abs=1e-5)


@pytest.mark.slow
def test_qud_runs_label_free_on_an_unlabeled_folder(project: Path, tmp_path: Path) -> None:
    _link(project, tmp_path, "models/teacher")
    rng = np.random.default_rng(4)
    for i, blob in enumerate(_jpegs(rng, 16)):
        path = tmp_path / "faces" / f"batch{i % 2}" / f"{i:03d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob)
    params = _params(project, data={"source": "unlabeled", "path": str(tmp_path / "faces")},
                     distill={"methods": ["none", "qud"]})
    teacher_features.run(params, "teacher")
    cache = tmp_path / "features/teacher/embeddings.npy"
    assert np.load(cache).shape == (16, 2, D)
    mtime = cache.stat().st_mtime_ns
    teacher_features.run(params, "teacher")  # up to date: nothing rewritten
    assert cache.stat().st_mtime_ns == mtime

    distill.run(params, "qud")
    meta = _read("models/qud/meta.json")
    assert meta["data_hash"] == _read("features/teacher/meta.json")["data_hash"]
    assert _read("metrics/train/qud.json")["steps"] == 2
    with pytest.raises(ConfigError, match="'none' needs identity labels.*unlabeled.*qud"):
        distill.run(params, "none")


def test_stale_cache_is_refused(project: Path, tmp_path: Path) -> None:
    _link(project, tmp_path, "data/prepared", "features/teacher")
    _save_teacher(tmp_path / "models" / "teacher", seed=1)  # retrained teacher, cache not rebuilt
    with pytest.raises(DataError, match=r"features/teacher/meta.json.*stale.*teacher_weights_sha256"
                                        r".*dvc repro teacher_features"):
        distill.run(_params(project), "feature")
    assert not Path("models/feature").exists()


def test_float16_cache_is_refused_where_it_changes_the_loss(project: Path, tmp_path: Path) -> None:
    _link(project, tmp_path, "data/prepared", "models/teacher", "features/teacher")
    with pytest.raises(ConfigError, match="float16 changes the 'adadistill' loss"):
        distill.run(_params(project, distill={"cache_dtype": "float16"}), "adadistill")
    with pytest.raises(DataError, match="dtype: cache has 'float32', current is 'float16'"):
        distill.run(_params(project, distill={"cache_dtype": "float16"}), "feature")


def test_unconfigured_method_is_refused(project: Path, tmp_path: Path) -> None:
    _link(project, tmp_path, "data/prepared", "models/teacher", "features/teacher")
    with pytest.raises(ConfigError, match=r"'gkd' is not in distill.methods \['none', 'feature'\]"):
        distill.run(_params(project, distill={"methods": ["none", "feature"]}), "gkd")


def test_shkd_teacher_needs_equal_embedding_sizes(project: Path, tmp_path: Path) -> None:
    params = _params(project, teacher={"backbone": {"embedding_size": 32}})
    sizes = r"distill.student.embedding_size \(16\).*teacher.backbone.embedding_size \(32\)"
    with pytest.raises(ConfigError, match=sizes):
        student_aware_teacher.run(params, "shkd")


@pytest.mark.slow
def test_shkd_chain(project: Path, tmp_path: Path) -> None:
    _link(project, tmp_path, "data/prepared", "models/teacher", "features/teacher")
    params = _params(project)
    with pytest.raises(DataError, match=r"models/none/meta.json: missing.*dvc repro distill@none"):
        student_aware_teacher.run(params, "shkd")
    distill.run(params, "none")
    student_aware_teacher.run(params, "shkd")

    none_head = load_head_weight("models/none")
    assert torch.equal(load_head_weight("models/teacher_shkd"), none_head)
    state = load_checkpoint("checkpoints/teacher_shkd/last.pt")
    assert torch.equal(state["objective"]["head.weight"], none_head)  # frozen through training
    tuned, meta = load_backbone("models/teacher_shkd")
    base, _ = load_backbone("models/teacher")
    assert any(not torch.equal(a, b) for a, b in zip(tuned.state_dict().values(), base.state_dict().values()))
    assert meta["base_teacher_weights_sha256"] == file_sha256("models/teacher/backbone.pt")
    assert _read("metrics/train/teacher_shkd.json")["steps"] == 3

    with pytest.raises(DataError, match=r"features/teacher_shkd/meta.json: missing.*dvc repro student_aware_features"):
        distill.run(params, "shkd")
    teacher_features.run(params, "teacher_shkd")
    distill.run(params, "shkd")
    student = _read("models/shkd/meta.json")
    assert (student["method"], student["teacher"]) == ("shkd", "teacher_shkd")
    assert student["teacher_weights_sha256"] == file_sha256("models/teacher_shkd/backbone.pt")
    assert _read("metrics/train/shkd.json")["steps"] == 3
