"""Image-folder datasets: one sub-folder per identity, or a tree of unlabeled images."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from facekd.errors import DataError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})


def is_image_file(path: Path) -> bool:
    """True for a regular, non-hidden file with an image extension (any case)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".") and path.is_file()


def _visible(path: Path, root: Path) -> bool:
    # Skip hidden files and folders (.git, .ipynb_checkpoints, macOS ._ files) anywhere below root.
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if _visible(p, folder) and is_image_file(p))


def _require_dir(root: Path) -> None:
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found")


def scan_identity_folders(root: str | Path) -> tuple[list[Path], np.ndarray, list[str]]:
    """(image paths, int64 labels, class names) for ``root/<identity>/<images>``.

    Identities are the sub-folders sorted by name, labelled 0..C-1; images are found recursively
    inside each and sorted. A sub-folder without images is an error rather than a missing class.
    """
    root = Path(root)
    _require_dir(root)
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose = [p for p in root.iterdir() if is_image_file(p)]
    if loose:
        log.warning("%s: %d images directly in the root belong to no identity and are ignored", root, len(loose))
    if not folders:
        raise DataError(f"{root}: no identity sub-folders; expected <root>/<identity>/<image files>")
    paths: list[Path] = []
    labels: list[int] = []
    for label, folder in enumerate(folders):
        found = _images_under(folder)
        if not found:
            raise DataError(
                f"{folder}: identity folder '{folder.name}' has no images ({', '.join(sorted(IMAGE_EXTENSIONS))}); "
                "remove it or add its images"
            )
        paths.extend(found)
        labels.extend([label] * len(found))
    return paths, np.asarray(labels, dtype=np.int64), [f.name for f in folders]


def scan_unlabeled(root: str | Path) -> list[Path]:
    """Every image file below ``root`` (recursive), sorted."""
    root = Path(root)
    _require_dir(root)
    found = _images_under(root)
    if not found:
        raise DataError(f"{root}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) found below this folder")
    return found
