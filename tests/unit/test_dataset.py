"""FaceDataset over real .rec files and image folders written by the real writers."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from facekd.data.dataset import collate, flip_decisions, normalize_batch, open_training_data
from facekd.data.face_rec import write_face_rec
from facekd.errors import DataError


def _png(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


def _face(label: int, k: int, size: int = 112) -> np.ndarray:
    """A lossless test image whose left and right halves differ (so a flip is visible)."""
    img = np.zeros((size, size, 3), np.uint8)
    img[:, : size // 2] = (label * 20, k * 30, 7)
    img[:, size // 2:] = (200, 100, 50)
    return img


def _write_rec(root: Path, classes: int = 3, per_class: int = 2, odd: int | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    items = []
    for c in range(classes):
        for k in range(per_class):
            n = len(items)
            items.append((c, _png(_face(c, k, 96 if n == odd else 112))))
    write_face_rec(root / "train.rec", root / "train.idx", items)
    return root


def _write_folders(root: Path, labeled: bool) -> Path:
    for c in range(2):
        folder = root / f"id{c}" if labeled else root / f"batch{c}"
        folder.mkdir(parents=True)
        for k in range(3):
            (folder / f"{k}.png").write_bytes(_png(_face(c, k)))
    return root


def test_rec_items_labels_and_indices(tmp_path: Path) -> None:
    ds = open_training_data(_write_rec(tmp_path / "rec"), "rec", seed=1, augment=False)
    assert (len(ds), ds.num_classes) == (6, 3)
    assert ds.labels.tolist() == [0, 0, 1, 1, 2, 2]
    item = ds[3]
    assert (item["label"], item["index"], item["flip"]) == (1, 3, False)
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 112, 112)
    assert np.array_equal(item["image"].permute(1, 2, 0).numpy(), _face(1, 1))


def test_flips_are_deterministic_per_seed_epoch_index(tmp_path: Path) -> None:
    ds = open_training_data(_write_rec(tmp_path / "rec", classes=4, per_class=4), "rec", seed=5)
    flips0 = [ds[i]["flip"] for i in range(len(ds))]
    again = open_training_data(tmp_path / "rec" / "train.rec", "rec", seed=5)
    assert [again[i]["flip"] for i in range(len(ds))] == flips0
    assert flips0 == flip_decisions(5, 0, range(16)).tolist()
    ds.set_epoch(1)
    flips1 = [ds[i]["flip"] for i in range(len(ds))]
    assert flips1 != flips0 and 0 < sum(flips0) < 16
    flipped = next(i for i in range(16) if flips1[i])
    image = ds[flipped]["image"].permute(1, 2, 0).numpy()
    assert np.array_equal(image, _face(flipped // 4, flipped % 4)[:, ::-1])
    share = flip_decisions(0, 0, np.arange(10_000)).mean()
    assert 0.47 < share < 0.53


def test_identity_and_unlabeled_folders(tmp_path: Path) -> None:
    labeled = open_training_data(_write_folders(tmp_path / "ids", labeled=True), "folder")
    assert labeled.labels.tolist() == [0, 0, 0, 1, 1, 1] and labeled.num_classes == 2
    unlabeled = open_training_data(_write_folders(tmp_path / "raw", labeled=False), "unlabeled")
    assert unlabeled.labels.tolist() == [-1] * 6 and unlabeled.num_classes == 0
    assert unlabeled[4]["label"] == -1


def test_wrong_image_size_names_the_record(tmp_path: Path) -> None:
    ds = open_training_data(_write_rec(tmp_path / "rec", odd=4), "rec")
    assert ds[3]["index"] == 3
    with pytest.raises(DataError, match=r"train\.rec: image 4: image is 96x96x3.*expected 112x112x3"):
        ds[4]


def test_collate_and_normalize(tmp_path: Path) -> None:
    ds = open_training_data(_write_rec(tmp_path / "rec"), "rec", augment=False)
    batch = collate([ds[0], ds[5]])
    assert batch["image"].shape == (2, 3, 112, 112) and batch["label"].tolist() == [0, 2]
    assert batch["index"].dtype == torch.int64 and batch["flip"].dtype == torch.bool
    x = normalize_batch(batch["image"], torch.device("cpu"))
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert x[0, 0, 0, 100].item() == pytest.approx((200 - 127.5) / 127.5)
    assert -1.0 <= x.min() and x.max() <= 1.0


def test_missing_data_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        open_training_data(tmp_path / "nothing", "rec")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no train.rec"):
        open_training_data(tmp_path / "empty", "rec")


def test_batches_do_not_depend_on_workers_ranks_or_resume(tmp_path: Path) -> None:
    from facekd.config import OptimParams
    from facekd.data.dataset import worker_init_fn
    from facekd.training.distributed import DistInfo
    from facekd.training.sampling import EpochBatches, StepPlan

    ds = open_training_data(_write_rec(tmp_path / "rec", classes=4, per_class=5), "rec", seed=2)
    optim = OptimParams(batch_size=8, grad_accum=2)
    one = DistInfo(0, 0, 1, torch.device("cpu"))
    plan = StepPlan.build(len(ds), optim, one)
    assert (plan.steps_per_epoch, plan.micro_batch) == (2, 4)  # 20 images: 4 left out per epoch

    def batches(workers: int, sampler: EpochBatches) -> list[dict]:
        loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, num_workers=workers, collate_fn=collate,
                                             worker_init_fn=worker_init_fn(0))
        return list(loader)

    sampler = EpochBatches(len(ds), plan, one, seed=2)
    sampler.set_epoch(1)
    ds.set_epoch(1)
    serial, parallel = batches(0, sampler), batches(2, sampler)
    assert len(serial) == 4
    for a, b in zip(serial, parallel, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)
    order = torch.cat([b["index"] for b in serial])
    assert len(set(order.tolist())) == 16

    sampler.set_epoch(1, start_step=1)  # resume after the first step: its micro-batches are skipped
    assert [b for b in sampler] == [b["index"].tolist() for b in serial[2:]]

    shards = []
    for rank in (0, 1):
        two = DistInfo(rank, rank, 2, torch.device("cpu"))
        ranked = EpochBatches(len(ds), StepPlan.build(len(ds), optim, two), two, seed=2)
        ranked.set_epoch(1)
        shards.append(list(ranked))
    # step s of the global order = rank 0's micro-batches then rank 1's
    assert sum(shards[0][:2] + shards[1][:2], []) == order[:8].tolist()


def _datasets(tmp_path: Path) -> dict[str, object]:
    """One dataset per source kind, flipping (seed 3), 9-10 images each."""
    _write_folders(tmp_path / "ids", labeled=True)
    _write_folders(tmp_path / "raw", labeled=False)
    return {
        "rec": open_training_data(_write_rec(tmp_path / "rec", classes=3, per_class=3), "rec", seed=3),
        "folder": open_training_data(tmp_path / "ids", "folder", seed=3),
        "unlabeled": open_training_data(tmp_path / "raw", "unlabeled", seed=3),
    }


@pytest.mark.parametrize("workers", [0, 2])
def test_batched_loader_equals_per_item_batches(tmp_path: Path, workers: int) -> None:
    batches = [[5, 0, 3], [1, 4], [2]]
    for kind, ds in _datasets(tmp_path).items():
        ds.set_epoch(1)
        loader = torch.utils.data.DataLoader(ds, batch_sampler=batches, num_workers=workers, collate_fn=collate)
        got = list(loader)
        assert len(got) == len(batches), kind
        for indices, batch in zip(batches, got, strict=True):
            expected = collate([ds[i] for i in indices])
            assert batch.keys() == expected.keys(), kind
            for key in expected:
                assert batch[key].dtype == expected[key].dtype and torch.equal(batch[key], expected[key]), (kind, key)
            assert batch["flip"].tolist() == flip_decisions(3, 1, indices).tolist()
        flips = torch.cat([b["flip"] for b in got])
        assert 0 < int(flips.sum()) < len(flips), kind  # both paths exercised, mirrored and not


def test_batched_rec_images_are_the_written_images(tmp_path: Path) -> None:
    ds = open_training_data(_write_rec(tmp_path / "rec", classes=3, per_class=3), "rec", seed=3)
    batch = ds.__getitems__([8, 2, 4, 7])
    assert batch["image"].shape == (4, 3, 112, 112) and batch["image"].is_contiguous()
    assert batch["label"].tolist() == [2, 0, 1, 2] and batch["index"].tolist() == [8, 2, 4, 7]
    for img, i, flip in zip(batch["image"], [8, 2, 4, 7], batch["flip"].tolist(), strict=True):
        face = _face(i // 3, i % 3)
        assert np.array_equal(img.permute(1, 2, 0).numpy(), face[:, ::-1] if flip else face)
    with pytest.raises(IndexError, match="image index 9 out of range for 9 images"):
        ds.__getitems__([0, 9])


@pytest.mark.parametrize("workers", [0, 2])
def test_batched_loader_names_a_corrupt_record(tmp_path: Path, workers: int) -> None:
    root = tmp_path / "rec"
    root.mkdir()
    items = [(0, _png(_face(0, 0))), (0, b"\xff\xd8 not a JPEG any more"), (1, _png(_face(1, 0)))]
    write_face_rec(root / "train.rec", root / "train.idx", items)
    ds = open_training_data(root, "rec")
    loader = torch.utils.data.DataLoader(ds, batch_sampler=[[0, 2], [2, 1, 0]], num_workers=workers,
                                         collate_fn=collate)
    with pytest.raises(DataError, match=r"train\.rec: record key 2 \(image 1\): cannot decode image"):
        list(loader)
    odd = open_training_data(_write_rec(tmp_path / "odd", odd=4), "rec")
    with pytest.raises(DataError, match=r"train\.rec: image 4: image is 96x96x3.*expected 112x112x3"):
        odd.__getitems__([3, 4])
