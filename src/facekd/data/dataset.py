"""The torch Dataset for training: RecordIO, identity folders or unlabeled folders.

Items are ``{"image": uint8 (3, 112, 112), "label": int64, "index": int64, "flip": bool}``; the
only augmentation is a horizontal flip, decided by a hash of ``(seed, epoch, index)`` rather than
by a worker's RNG, so the result does not depend on the number of workers and a resumed run sees
exactly the images it would have seen. Normalisation to [-1, 1] happens on the whole batch in the
main process (:func:`normalize_batch`), which is cheaper than per item.

A DataLoader that batches calls :meth:`FaceDataset.__getitems__`, which builds the collated batch
in one pass (the same bytes as collating ``__getitem__``'s items); :func:`collate` passes it through.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from facekd.data.paths import shown
from facekd.errors import DataError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

IMAGE_SHAPE = (112, 112, 3)
CHW_SHAPE = (IMAGE_SHAPE[2], *IMAGE_SHAPE[:2])  # an item's image: (3, 112, 112)
KINDS = ("auto", "rec", "folder", "unlabeled")

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser over a uint64 array (wrapping arithmetic): a cheap, well-mixed hash."""
    x = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
    x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
    x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
    return x ^ (x >> np.uint64(31))


def flip_decisions(seed: int, epoch: int, indices: Sequence[int] | np.ndarray) -> np.ndarray:
    """(n,) bool: whether image ``indices[i]`` is mirrored in ``epoch`` of a run seeded ``seed``."""
    idx = np.asarray(indices, dtype=np.uint64)
    key = _splitmix64(np.array([seed & 0xFFFFFFFF], dtype=np.uint64) << np.uint64(32)
                      | np.array([epoch & 0xFFFFFFFF], dtype=np.uint64))
    return (_splitmix64(idx ^ key) >> np.uint64(63)).astype(bool)


class _RecordSource:
    """Images of an insightface ``.rec`` (the reader reopens its file in each worker process)."""

    def __init__(self, rec_path: Path, idx_path: Path | None) -> None:
        from facekd.data.face_rec import FaceRecordFile

        self.reader = FaceRecordFile(rec_path, idx_path)
        self.labels = np.asarray(self.reader.labels, dtype=np.int64)
        self.num_classes = int(self.reader.num_classes)
        self.name = str(rec_path)

    def image(self, i: int) -> np.ndarray:
        return self.reader.image(i)

    def images(self, indices: list[int]) -> Iterator[np.ndarray]:
        """Images ``indices`` in order (decode errors named as :meth:`FaceRecordFile.image` names them).

        All their bytes are read first: reads (two ``pread`` system calls each) between decodes
        slow the decoder by ~10% (measured per image: 242 us interleaved, 215 us grouped).
        """
        from facekd.data.images import decode_image

        encoded = [self.reader.image_bytes(i) for i in indices]
        for i, data in zip(indices, encoded, strict=True):
            yield decode_image(data, f"{self.name}: record key {self.reader.image_key(i)} (image {i})")

    def where(self, i: int) -> str:
        return f"{self.name}: image {i}"


class _FileSource:
    """Loose image files, with labels (identity folders) or -1 (unlabeled)."""

    def __init__(self, paths: Sequence[Path], labels: np.ndarray, num_classes: int, name: str) -> None:
        self.paths = [Path(p) for p in paths]
        self.labels = labels
        self.num_classes = num_classes
        self.name = name

    def image(self, i: int) -> np.ndarray:
        from facekd.data.images import read_image_file

        return read_image_file(self.paths[i])

    def images(self, indices: list[int]) -> Iterator[np.ndarray]:
        """Images ``indices`` in order."""
        return map(self.image, indices)

    def where(self, i: int) -> str:
        return f"{self.paths[i]} (image {i} of {self.name})"


class FaceDataset:
    """Map-style dataset of aligned 112x112 face crops (a ``torch.utils.data.Dataset`` by duck typing).

    ``labels`` (N,) int64 (-1 everywhere for unlabeled data), ``num_classes`` (0 when unlabeled).
    ``augment=False`` turns the flip off (teacher feature extraction flips explicitly).
    """

    def __init__(self, source: _RecordSource | _FileSource, *, seed: int = 0, augment: bool = True) -> None:
        self.source = source
        self.seed = seed
        self.augment = augment
        self.epoch = 0

    @property
    def labels(self) -> np.ndarray:
        return self.source.labels

    @property
    def num_classes(self) -> int:
        return self.source.num_classes

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def labeled(self) -> bool:
        return self.num_classes > 0

    def __len__(self) -> int:
        return len(self.source.labels)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose flips ``__getitem__`` applies (set before creating the iterator)."""
        self.epoch = int(epoch)

    def flips(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """(n,) bool flip decisions of this epoch for ``indices``."""
        if not self.augment:
            return np.zeros(len(indices), dtype=bool)
        return flip_decisions(self.seed, self.epoch, indices)

    def load(self, i: int) -> np.ndarray:
        """Image ``i`` as (112, 112, 3) uint8 RGB, unflipped; a wrong size is a DataError."""
        self._check_range(np.array([i]))
        return self._checked(i, self.source.image(i))

    def _check_range(self, idx: np.ndarray) -> None:
        bad = idx[(idx < 0) | (idx >= len(self))]
        if bad.size:
            raise IndexError(f"image index {bad[0]} out of range for {len(self)} images of {self.name}")

    def _checked(self, i: int, img: np.ndarray) -> np.ndarray:
        if img.shape != IMAGE_SHAPE or img.dtype != np.uint8:
            raise DataError(
                f"{self.source.where(i)}: image is {'x'.join(map(str, img.shape))} {img.dtype}, expected "
                "112x112x3 uint8 (an aligned face crop); align/resize the data (e.g. re-run `facekd prepare`)"
            )
        return img

    def __getitem__(self, i: int) -> dict[str, Any]:
        import torch

        i = int(i)
        img = self.load(i)
        flip = bool(self.flips([i])[0])
        chw = np.empty(CHW_SHAPE, dtype=np.uint8)
        _write_chw(img, flip, chw)
        return {"image": torch.from_numpy(chw), "label": int(self.labels[i]), "index": i, "flip": flip}

    def __getitems__(self, indices: Sequence[int]) -> dict[str, "torch.Tensor"]:
        """The batch of ``indices``, byte for byte ``collate([self[i] for i in indices])``.

        torch's DataLoader calls this instead of ``__getitem__`` once per index when it batches.
        The flips are hashed once for the batch and each image is mirrored and transposed straight
        into its slot of the (B, 3, 112, 112) batch, which inside a worker is allocated in shared
        memory, so handing it to the main process copies nothing.
        """
        import torch

        idx = np.array(indices, dtype=np.int64)  # (B,), a copy: the batch's index tensor owns it
        self._check_range(idx)
        flips = self.flips(idx)  # (B,) bool
        images = _batch_images(len(idx))  # (B, 3, 112, 112) uint8
        planes = images.numpy()
        order = idx.tolist()
        for b, (i, img, flip) in enumerate(zip(order, self.source.images(order), flips.tolist(), strict=True)):
            _write_chw(self._checked(i, img), flip, planes[b])
        return _Batch(image=images, label=torch.from_numpy(self.labels[idx]), index=torch.from_numpy(idx),
                      flip=torch.from_numpy(flips))


class _Batch(dict):
    """The dict of tensors ``__getitems__`` returns; leaves a worker with label/index/flip pickled inline.

    torch hands each tensor a worker returns to the main process in a shared-memory segment of its
    own whose file descriptor crosses over an authenticated socket (a few hundred microseconds on
    each side); the three (B,) fields are a few hundred bytes, far cheaper as numpy arrays in the
    pickle. Only the (B, 3, 112, 112) image takes the shared-memory route. Unpickled, it is a plain
    dict of tensors again.
    """

    def __reduce__(self) -> tuple[Callable[..., dict[str, "torch.Tensor"]], tuple[Any, ...]]:
        return _unpickle_batch, (self["image"], self["label"].numpy(), self["index"].numpy(), self["flip"].numpy())


def _unpickle_batch(image: "torch.Tensor", label: np.ndarray, index: np.ndarray, flip: np.ndarray) -> dict[str, Any]:
    import torch

    return {"image": image, "label": torch.from_numpy(label), "index": torch.from_numpy(index),
            "flip": torch.from_numpy(flip)}


def _write_chw(img: np.ndarray, flip: bool, out: np.ndarray) -> None:
    """Write ``img`` (H, W, 3), mirrored left-right if ``flip``, into ``out`` (3, H, W) C-contiguous.

    ``cv2.split`` into the three planes of ``out`` is the HWC -> CHW transpose in one SIMD pass
    (numpy's strided copy takes twice as long); cv2 writes into the given planes in place.
    """
    cv2.split(cv2.flip(img, 1) if flip else img, [out[0], out[1], out[2]])


def _batch_images(n: int) -> "torch.Tensor":
    """An uninitialised (n, 3, 112, 112) uint8 batch, in shared memory inside a DataLoader worker.

    A worker hands tensors to the main process through shared memory; torch would copy an
    ordinary tensor there first (its ``default_collate`` allocates shared for the same reason).
    """
    import torch

    shape = (n, *CHW_SHAPE)
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=torch.uint8)
    storage = torch.UntypedStorage._new_shared(n * int(np.prod(CHW_SHAPE)))
    return torch.empty(0, dtype=torch.uint8).set_(storage).view(shape)


def collate(items: list[dict[str, Any]] | dict[str, "torch.Tensor"]) -> dict[str, "torch.Tensor"]:
    """Stack items: image (B, 3, 112, 112) uint8, label/index (B,) int64, flip (B,) bool.

    A batch :meth:`FaceDataset.__getitems__` built (a dict, not a list of items) passes through.
    """
    import torch

    if isinstance(items, dict):
        return items
    return {
        "image": torch.stack([it["image"] for it in items]),
        "label": torch.tensor([it["label"] for it in items], dtype=torch.int64),
        "index": torch.tensor([it["index"] for it in items], dtype=torch.int64),
        "flip": torch.tensor([it["flip"] for it in items], dtype=torch.bool),
    }


def normalize_batch(images: "torch.Tensor", device: "torch.device", channels_last: bool = True) -> "torch.Tensor":
    """uint8 (B, 3, H, W) -> float32 on ``device`` in [-1, 1] as insightface: (x - 127.5) / 127.5."""
    import torch

    x = images.to(device, non_blocking=True).float().sub_(127.5).div_(127.5)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def worker_init_fn(rank: int) -> Callable[[int], None]:
    """A DataLoader ``worker_init_fn`` seeding numpy/random per (base seed, rank, worker).

    Nothing in the item pipeline draws random numbers (flips are hashed), so this only keeps any
    future augmentation from repeating the same stream in every worker.
    """
    return _WorkerSeeder(rank)


class _WorkerSeeder:
    """Picklable worker initialiser (a closure would not survive the spawn start method)."""

    def __init__(self, rank: int) -> None:
        self.rank = rank

    def __call__(self, worker_id: int) -> None:
        import random

        import torch

        base = torch.initial_seed()  # distinct per worker: DataLoader sets base_seed + worker_id
        seed = (base + 1_000_003 * self.rank) % 2**32
        np.random.seed(seed)
        random.seed(seed)


def _rec_paths(path: Path) -> tuple[Path, Path | None]:
    if path.is_dir():
        rec = path / "train.rec"
        if not rec.is_file():
            raise DataError(f"{path}: no train.rec in this folder; point to the .rec file or the prepared folder")
        idx = path / "train.idx"
        return rec, idx if idx.is_file() else None
    return path, None


def _detect_kind(path: Path) -> str:
    if path.suffix == ".rec" or (path.is_dir() and (path / "train.rec").is_file()):
        return "rec"
    if path.is_dir() and any(p.is_dir() for p in path.iterdir()):
        return "folder"
    return "unlabeled"


def open_training_data(path: str | Path, kind: str = "auto", *, seed: int = 0, augment: bool = True) -> FaceDataset:
    """Open ``path`` as training data.

    kind: ``rec`` (a ``.rec`` file, or a folder holding ``train.rec`` + ``train.idx``), ``folder``
    (one sub-folder of images per identity), ``unlabeled`` (a folder tree of images; labels -1) or
    ``auto`` (``rec`` if there is a .rec, ``folder`` if there are sub-folders, else ``unlabeled``).
    """
    path = Path(path)
    if kind not in KINDS:
        raise DataError(f"unknown training data kind '{kind}'; choose one of {', '.join(KINDS)}")
    if not path.exists():
        raise DataError(f"{path}: training data not found (run `facekd prepare` or fix data.path)")
    if kind == "auto":
        kind = _detect_kind(path)
    if kind == "rec":
        source: _RecordSource | _FileSource = _RecordSource(*_rec_paths(path))
    elif kind == "folder":
        from facekd.data.folder import scan_identity_folders

        paths, labels, class_names = scan_identity_folders(path)
        source = _FileSource(paths, np.asarray(labels, dtype=np.int64), len(class_names), str(path))
    else:
        from facekd.data.folder import scan_unlabeled

        paths = scan_unlabeled(path)
        source = _FileSource(paths, np.full(len(paths), -1, dtype=np.int64), 0, str(path))
    if len(source.labels) == 0:
        raise DataError(f"{path}: no training images found ({kind})")
    log.info("training data %s: %d images, %d identities", shown(path), len(source.labels), source.num_classes)
    return FaceDataset(source, seed=seed, augment=augment)
