"""Identity-per-folder and unlabeled image trees."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from facekd.data.folder import scan_identity_folders, scan_unlabeled
from facekd.data.images import encode_jpeg
from facekd.errors import DataError

JPEG = encode_jpeg(np.zeros((4, 4, 3), np.uint8))


def touch(path: Path, data: bytes = JPEG) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_identity_folders_sorted_and_labelled(tmp_path: Path) -> None:
    touch(tmp_path / "bob" / "2.JPG")
    touch(tmp_path / "bob" / "1.png")
    touch(tmp_path / "alice" / "x.jpeg")
    touch(tmp_path / "alice" / "deeper" / "y.webp")
    touch(tmp_path / "carol" / "z.BMP")
    touch(tmp_path / "carol" / "notes.txt", b"hi")  # not an image: ignored
    touch(tmp_path / "carol" / ".hidden.jpg")  # hidden: ignored
    touch(tmp_path / ".cache" / "a.jpg")  # hidden folder: not an identity
    paths, labels, names = scan_identity_folders(tmp_path)
    assert names == ["alice", "bob", "carol"]
    assert labels.dtype == np.int64 and labels.tolist() == [0, 0, 1, 1, 2]
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == [
        "alice/deeper/y.webp", "alice/x.jpeg", "bob/1.png", "bob/2.JPG", "carol/z.BMP"]


def test_empty_identity_folder_is_named(tmp_path: Path) -> None:
    touch(tmp_path / "alice" / "a.jpg")
    touch(tmp_path / "bob" / "readme.txt", b"no images here")
    with pytest.raises(DataError, match=r"identity folder 'bob' has no images"):
        scan_identity_folders(tmp_path)


def test_identity_root_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"missing: image folder not found"):
        scan_identity_folders(tmp_path / "missing")
    touch(tmp_path / "loose.jpg")
    with pytest.raises(DataError, match=r"no identity sub-folders"):
        scan_identity_folders(tmp_path)


def test_unlabeled_is_recursive_and_sorted(tmp_path: Path) -> None:
    touch(tmp_path / "b.jpg")
    touch(tmp_path / "a" / "c.PNG")
    touch(tmp_path / "a" / "skip.gif")
    assert [p.relative_to(tmp_path).as_posix() for p in scan_unlabeled(tmp_path)] == ["a/c.PNG", "b.jpg"]


def test_unlabeled_errors(tmp_path: Path) -> None:
    touch(tmp_path / "only.txt", b"x")
    with pytest.raises(DataError, match=r"no image files"):
        scan_unlabeled(tmp_path)
    with pytest.raises(DataError, match=r"nowhere: image folder not found"):
        scan_unlabeled(tmp_path / "nowhere")
