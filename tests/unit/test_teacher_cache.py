"""Teacher-feature cache: layout, equality with the online teacher, staleness, float16 policy.

A tiny real teacher (iresnet_tiny) embeds a tiny real .rec file; nothing is mocked.
"""
from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from facekd.config import DistillParams
from facekd.data.dataset import collate, normalize_batch, open_training_data
from facekd.data.images import encode_jpeg
from facekd.data.face_rec import write_face_rec
from facekd.data.training_set import StudentData
from facekd.distill.registry import build_method, methods
from facekd.distill.teacher import CachedTeacher, DistillObjective, OnlineTeacher
from facekd.distill.teacher_cache import FP16_SAFE_METHODS, check_cache_dtype, open_cache, write_teacher_features
from facekd.errors import ConfigError, DataError, TrainingError
from facekd.models.registry import create_backbone
from facekd.training.batch import StepBatch

IDS, PER_ID, D = 6, 4, 16
N = IDS * PER_ID
HASH, WEIGHTS = "data-hash", "weights-hash"


@pytest.fixture(scope="module")
def rec_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("prepared")
    rng = np.random.default_rng(3)
    items = [(c, encode_jpeg(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)))
             for c in range(IDS) for _ in range(PER_ID)]
    write_face_rec(root / "train.rec", root / "train.idx", items)
    return root


@pytest.fixture(scope="module")
def teacher() -> torch.nn.Module:
    torch.manual_seed(5)
    model = create_backbone("iresnet_tiny", embedding_size=D, width=0.125)
    with torch.no_grad():  # non-trivial BN statistics, so eval mode differs from train mode
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _data(rec_dir: Path, augment: bool = False) -> StudentData:
    return StudentData(open_training_data(rec_dir, "rec", seed=7, augment=augment), HASH, IDS, str(rec_dir))


def _write(out: Path, teacher: torch.nn.Module, rec_dir: Path, dtype: str = "float32") -> dict:
    return write_teacher_features(out, copy.deepcopy(teacher), _data(rec_dir), teacher_name="teacher",
                                  weights_hash=WEIGHTS, dtype=dtype, batch_size=10)


@pytest.fixture(scope="module")
def caches(tmp_path_factory: pytest.TempPathFactory, teacher, rec_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("features")
    out = {}
    for dtype in ("float32", "float16"):
        out[dtype] = root / dtype / "teacher"
        _write(out[dtype], teacher, rec_dir, dtype)
    return out


def _open(path: Path, dtype: str = "float32", **overrides) -> np.ndarray:
    expected = {"num_images": N, "data_hash": HASH, "weights_hash": WEIGHTS, "dim": D, "dtype": dtype, **overrides}
    return open_cache(path, **expected)


def _batch(rec_dir: Path, epoch: int, indices: list[int]) -> StepBatch:
    """A device batch as the training loop builds it (flips hashed from (seed, epoch, index))."""
    dataset = _data(rec_dir, augment=True).dataset
    dataset.set_epoch(epoch)
    raw = collate([dataset[i] for i in indices])
    return StepBatch(image=normalize_batch(raw["image"], torch.device("cpu"), channels_last=True),
                     label=raw["label"], index=raw["index"], flip=raw["flip"], step=0, epoch=float(epoch))


def _small_batch(labels: list[int], teacher: torch.Tensor | None = None) -> StepBatch:
    n = len(labels)
    return StepBatch(image=torch.zeros(n, 3, 112, 112), label=torch.tensor(labels), index=torch.arange(n),
                     flip=torch.zeros(n, dtype=torch.bool), step=0, epoch=0.0, teacher=teacher)


def test_cache_holds_each_image_and_its_mirror_in_index_order(caches, teacher, rec_dir) -> None:
    cache = _open(caches["float32"])
    assert cache.shape == (N, 2, D) and cache.dtype == np.float32
    meta = json.loads((caches["float32"] / "meta.json").read_text())
    assert meta | {"layout": None} == {"teacher": "teacher", "teacher_weights_sha256": WEIGHTS, "data_hash": HASH,
                                       "data": str(rec_dir), "num_images": N, "dim": D, "dtype": "float32",
                                       "layout": None}
    dataset = _data(rec_dir).dataset
    for i in (0, 13, N - 1):  # first, middle (second batch of 10), last (short batch)
        image = dataset.load(i)
        pair = np.stack([image, image[:, ::-1]]).transpose(0, 3, 1, 2).copy()  # (2, 3, 112, 112)
        x = (torch.from_numpy(pair).float() - 127.5) / 127.5
        with torch.no_grad():
            expected = teacher(x).numpy()  # (2, d): raw, not normalised
        np.testing.assert_allclose(cache[i], expected, rtol=1e-4, atol=1e-5)
    assert not list(caches["float32"].glob(".*.tmp"))


@pytest.mark.parametrize("name", ["feature", "adadistill"])
def test_cached_teacher_equals_online_teacher(name: str, caches, teacher, rec_dir) -> None:
    batch = _batch(rec_dir, epoch=2, indices=[3, 17, 8, 22, 0, 11, 5, 19])
    assert 0 < int(batch.flip.sum()) < len(batch.flip)  # both branches of the cache are read
    cached = CachedTeacher(_open(caches["float32"]))(replace(batch)).teacher
    online = OnlineTeacher(copy.deepcopy(teacher), "cpu")(replace(batch)).teacher
    assert cached.dtype == torch.float32 and cached.shape == (8, D)
    torch.testing.assert_close(cached, online, rtol=1e-4, atol=1e-5)

    params = DistillParams(optim={"batch_size": 8})
    torch.manual_seed(0)
    method = build_method(name, params, num_classes=IDS, student_dim=D, teacher_dim=D)
    emb = torch.randn(8, D, generator=torch.Generator().manual_seed(1))
    loss_cached = DistillObjective(copy.deepcopy(method))(emb, replace(batch, teacher=cached))["loss"]
    loss_online = DistillObjective(copy.deepcopy(method))(emb, replace(batch, teacher=online))["loss"]
    assert abs(float(loss_cached) - float(loss_online)) < 1e-5


def test_stale_cache_is_refused_with_the_stage_to_rerun(caches) -> None:
    stale = r"float32/teacher/meta.json.*teacher_weights_sha256.*dvc repro teacher_features"
    with pytest.raises(DataError, match=stale):
        _open(caches["float32"], weights_hash="another-teacher")
    with pytest.raises(DataError, match=r"num_images: cache has 24, current is 30.*dvc repro teacher_features"):
        _open(caches["float32"], num_images=30)
    with pytest.raises(DataError, match="dtype: cache has 'float16', current is 'float32'"):
        _open(caches["float16"], dtype="float32")


def test_missing_or_damaged_cache_names_the_stage(tmp_path: Path, caches) -> None:
    with pytest.raises(DataError, match=r"teacher_shkd/meta.json: missing.*dvc repro student_aware_features"):
        _open(tmp_path / "teacher_shkd")
    damaged = tmp_path / "teacher"
    damaged.mkdir()
    (damaged / "meta.json").write_text((caches["float32"] / "meta.json").read_text())
    np.save(damaged / "embeddings.npy", np.zeros((N - 1, 2, D), np.float32))
    with pytest.raises(DataError, match=r"embeddings.npy: shape \(23, 2, 16\).*dvc repro teacher_features"):
        _open(damaged)


class _FailsOnSecondBatch(torch.nn.Module):
    """A real backbone that raises partway through, as an out-of-memory error would."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls > 2:  # call 1 probes the output size, call 2 is the first batch
            raise RuntimeError("out of memory")
        return self.inner(x)


def test_interrupted_write_leaves_no_valid_cache(tmp_path: Path, teacher, rec_dir) -> None:
    out = tmp_path / "teacher"
    _write(out, teacher, rec_dir)
    before = (out / "embeddings.npy").read_bytes()
    with pytest.raises(RuntimeError, match="out of memory"):
        write_teacher_features(out, _FailsOnSecondBatch(copy.deepcopy(teacher)), _data(rec_dir), teacher_name="teacher",
                               weights_hash="new-teacher", batch_size=10)
    assert not (out / "meta.json").exists()  # distill refuses it rather than reading half a cache
    assert (out / "embeddings.npy").read_bytes() == before
    assert not list(out.glob(".*.tmp"))


def _loss(name: str, cache: np.ndarray, method, emb: torch.Tensor, batch: StepBatch) -> float:
    fed = CachedTeacher(cache)(replace(batch))
    return float(DistillObjective(copy.deepcopy(method))(emb, fed)["loss"].detach())


@pytest.mark.parametrize("name", sorted(methods()))
def test_float16_cache_keeps_the_loss_to_1e4_exactly_where_allowed(name: str, caches, rec_dir) -> None:
    """Spec: float16 storage only where the loss it feeds is unchanged to 1e-4 (default params, scale 64)."""
    params = DistillParams(optim={"batch_size": 8}, qud={"queue_size": 16})
    worst = 0.0
    for k, epoch in enumerate((0, 5, 9)):  # GKD's KD weight ramps up to full by epoch 10 at the defaults
        batch = replace(_batch(rec_dir, epoch=epoch, indices=list(range(k, N, 3))[:8]), epoch=float(epoch) + 0.5)
        torch.manual_seed(k)
        centres = torch.randn(IDS, D)
        method = build_method(name, params, num_classes=IDS, student_dim=D, teacher_dim=D, teacher_head=centres)
        emb = torch.randn(8, D, generator=torch.Generator().manual_seed(10 + k)) * 5
        full = _loss(name, _open(caches["float32"]), method, emb, batch)
        half = _loss(name, _open(caches["float16"], dtype="float16"), method, emb, batch)
        worst = max(worst, abs(full - half))
    if name in FP16_SAFE_METHODS:
        assert worst < 1e-4
        check_cache_dtype(name, "float16")
    else:
        assert worst >= 1e-4  # else: add the method to FP16_SAFE_METHODS
        with pytest.raises(ConfigError, match=f"float16 changes the '{name}' loss.*float32"):
            check_cache_dtype(name, "float16")
    assert DistillParams().cache_dtype == "float32"


def test_label_free_method_gets_no_labels() -> None:
    method = build_method("qud", DistillParams(optim={"batch_size": 4}, qud={"queue_size": 8}),
                          num_classes=0, student_dim=D, teacher_dim=D)
    batch = _small_batch([-1] * 4, teacher=torch.randn(4, D))
    out = DistillObjective(method)(torch.randn(4, D, requires_grad=True), batch)
    assert torch.isfinite(out["loss"]) and set(out) == {"loss", "infonce", "pos_cos"}
    assert DistillObjective(method).student_head() is None


def test_teacher_free_method_runs_without_teacher() -> None:
    method = build_method("none", DistillParams(), num_classes=IDS, student_dim=D, teacher_dim=D)
    objective = DistillObjective(method)
    out = objective(torch.randn(4, D), _small_batch([0, 1, 2, 3]))
    assert torch.isfinite(out["loss"])
    assert objective.student_head() is method.head


@pytest.mark.parametrize("name", sorted(set(methods()) - {"none"}))
def test_a_method_that_reads_a_teacher_refuses_a_batch_without_one(name: str) -> None:
    """A missing teacher provider is a wiring error: never silently trained on zeros."""
    method = build_method(name, DistillParams(optim={"batch_size": 4}, qud={"queue_size": 8}), num_classes=IDS,
                          student_dim=D, teacher_dim=D, teacher_head=torch.randn(IDS, D))
    with pytest.raises(TrainingError, match=f"'{name}' distils from models/teacher.*step 1 has no teacher"):
        DistillObjective(method)(torch.randn(4, D), _small_batch([0, 1, 2, 3]))


@pytest.mark.gpu
def test_cache_built_on_cuda_matches_cpu_and_lands_on_cuda(tmp_path: Path, caches, teacher, rec_dir) -> None:
    out = tmp_path / "teacher"
    write_teacher_features(out, copy.deepcopy(teacher), _data(rec_dir), teacher_name="teacher", weights_hash=WEIGHTS,
                           batch_size=10, device="cuda")
    # TF32 convolutions on CUDA: close, not bitwise equal.
    np.testing.assert_allclose(_open(out), _open(caches["float32"]), rtol=1e-2, atol=1e-3)
    host = _batch(rec_dir, 1, [0, 5, 9, 2])
    batch = replace(host, image=host.image.cuda(), label=host.label.cuda(), index=host.index.cuda(), flip=host.flip.cuda())
    cached = CachedTeacher(_open(out))(replace(batch)).teacher
    online = OnlineTeacher(copy.deepcopy(teacher), "cuda")(replace(batch)).teacher
    assert cached.device.type == "cuda" and cached.dtype == torch.float32
    torch.testing.assert_close(cached, online, rtol=1e-2, atol=1e-3)


def test_flipping_dataset_is_refused(tmp_path: Path, teacher, rec_dir) -> None:
    # The cache's row [i, 0] must be the unflipped image; a dataset that flips itself would mix them.
    with pytest.raises(ValueError, match="augment=False"):
        write_teacher_features(tmp_path / "f", copy.deepcopy(teacher), _data(rec_dir, augment=True),
                               teacher_name="teacher", weights_hash=WEIGHTS)
    assert not (tmp_path / "f" / "embeddings.npy").exists()
