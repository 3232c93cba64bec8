"""The training set the students (and their teachers' feature caches) see, and the prepared data's meta.

``data/prepared`` (``data.prepared_dir``) holds ``train.rec`` + ``train.idx`` and the ``meta.json``
that ``prepare`` writes; a label-free run (``data.source: unlabeled``) reads a folder of images at
``data.path`` instead, identified by the hash of its listing and bytes.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facekd.data.dataset import open_training_data
from facekd.errors import DataError
from facekd.fsio import read_json_object

if TYPE_CHECKING:
    from facekd.config import Params
    from facekd.data.dataset import FaceDataset


def read_prepared_meta(prepared: Path) -> dict[str, Any]:
    """``meta.json`` of the prepared data, with a ``data_hash`` (computed when absent)."""
    meta_path = prepared / "meta.json"
    meta = read_json_object(meta_path, DataError, missing="missing; run `facekd prepare` first",
                            redo="re-run `facekd prepare`")
    _check_prepared_meta(meta, meta_path)
    if "data_hash" not in meta:
        digest = hashlib.sha256((prepared / "train.idx").read_bytes() + meta_path.read_bytes())
        meta["data_hash"] = digest.hexdigest()
    return meta


def _check_prepared_meta(meta: dict[str, Any], meta_path: Path) -> None:
    """The fields stages use have the types `prepare` writes (absurd ones were tracebacks later)."""
    for key in ("num_images", "num_classes"):
        value = meta.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**31:
            raise DataError(f"{meta_path}: {key} is {str(value)[:40]!r}, not a count; re-run `facekd prepare`")
    if not isinstance(meta.get("data_hash", ""), str):
        raise DataError(f"{meta_path}: data_hash is not a string; re-run `facekd prepare`")


@dataclass(frozen=True)
class StudentData:
    """The training set of the students: a dataset, its identity hash and its class count (0 unlabeled)."""

    dataset: "FaceDataset"
    data_hash: str
    num_classes: int
    where: str


def folder_listing_hash(dataset: "FaceDataset") -> str:
    """sha256 over the sorted relative paths and the bytes of an unlabeled folder's images.

    The cache's row i is the teacher's embedding of image i, so the key must change when any image
    is added, removed, renamed or replaced, even by one of the same size and mtime (an edit, a
    re-encode, ``cp -p``): paths and sizes alone served stale rows. Reading every file costs about
    what one epoch's reads do.
    """
    root = Path(dataset.name)
    h = hashlib.sha256()
    for path in dataset.source.paths:
        size = path.stat().st_size
        h.update(f"{path.relative_to(root).as_posix()}\0{size}\n".encode())
        with open(path, "rb") as fh:  # the bytes stat promised, in blocks: bounded memory and time
            while size > 0 and (block := fh.read(min(size, 1 << 20))):
                h.update(block)
                size -= len(block)
    return h.hexdigest()


def student_data(params: Params, *, augment: bool = True) -> StudentData:
    """The students' training set: ``data.prepared_dir``, or the unlabeled folder at ``data.path``."""
    data = params.data
    if data.source == "unlabeled":
        dataset = open_training_data(data.path, "unlabeled", seed=params.seed, augment=augment)
        return StudentData(dataset, folder_listing_hash(dataset), 0, str(data.path))
    prepared = Path(data.prepared_dir)
    meta = read_prepared_meta(prepared)
    dataset = open_training_data(prepared, "rec", seed=params.seed, augment=augment)
    declared = (int(meta.get("num_images", len(dataset))), int(meta.get("num_classes", dataset.num_classes)))
    if declared != (len(dataset), dataset.num_classes):
        raise DataError(
            f"{prepared / 'meta.json'} says {declared[0]} images of {declared[1]} identities but "
            f"{prepared / 'train.rec'} has {len(dataset)} of {dataset.num_classes}; re-run `dvc repro prepare`"
        )
    return StudentData(dataset, meta["data_hash"], dataset.num_classes, str(prepared))
