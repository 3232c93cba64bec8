"""Image-folder datasets: one sub-folder per identity, or a tree of unlabeled images.

Every image found is confined to the dataset folder (:class:`facekd.data.paths.Confined`): a
symlink to a file outside it, or to a device, is refused rather than read.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from facekd.data.paths import Confined, shown
from facekd.errors import DataError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def is_image_file(path: Path) -> bool:
    """True for a non-hidden file with an image extension (any case); a symlink counts whatever
    it points at, so the scan below refuses it rather than skipping it silently."""
    return _is_image_name(path) and (path.is_file() or path.is_symlink())


def _visible(path: Path, root: Path) -> bool:
    # Skip hidden files and folders (.git, .ipynb_checkpoints, macOS ._ files) anywhere below root.
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


def _images_under(folder: Path, confined: Confined) -> list[Path]:
    found = sorted(p for p in folder.rglob("*") if _visible(p, folder) and is_image_file(p))
    for path in found:
        confined.file(path.relative_to(confined.root), "found in the image folder")
    return found


def _require_dir(root: Path) -> None:
    if not root.is_dir():
        raise DataError(f"{shown(root)}: image folder not found")


def scan_identity_folders(root: str | Path) -> tuple[list[Path], np.ndarray, list[str]]:
    """(image paths, int64 labels, class names) for ``root/<identity>/<images>``.

    Identities are the sub-folders sorted by name, labelled 0..C-1; images are found recursively
    inside each and sorted. A sub-folder without images is an error rather than a missing class.
    """
    root = Path(root)
    _require_dir(root)
    confined = Confined(root)
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose = [p for p in root.iterdir() if is_image_file(p)]
    if loose:
        log.warning("%s: %d images directly in the root belong to no identity and are ignored", shown(root), len(loose))
    if not folders:
        raise DataError(f"{shown(root)}: no identity sub-folders; expected <root>/<identity>/<image files>")
    paths: list[Path] = []
    labels: list[int] = []
    for label, folder in enumerate(folders):
        found = _images_under(folder, confined)
        if not found:
            raise DataError(
                f"{shown(folder)}: identity folder {folder.name!r} has no images "
                f"({', '.join(sorted(IMAGE_EXTENSIONS))}); remove it or add its images"
            )
        paths.extend(found)
        labels.extend([label] * len(found))
    return paths, np.asarray(labels, dtype=np.int64), [f.name for f in folders]


def scan_unlabeled(root: str | Path) -> list[Path]:
    """Every image file below ``root`` (recursive), sorted."""
    root = Path(root)
    _require_dir(root)
    found = _images_under(root, Confined(root))
    if not found:
        raise DataError(f"{shown(root)}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) found below this folder")
    return found
