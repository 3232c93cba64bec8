"""describe(): recognise each supported format from files on disk and summarise it."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from facekd.data.bins import write_bin
from facekd.data.ijb_protocol import ARCFACE_TEMPLATE, write_ijb
from facekd.data.images import encode_jpeg
from facekd.data.info import describe
from facekd.data.face_rec import write_face_rec
from facekd.errors import DataError


def jpeg(h: int = 12, w: int = 10) -> bytes:
    return encode_jpeg(np.full((h, w, 3), 128, np.uint8))


def put(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_recordio_file_and_folder(tmp_path: Path) -> None:
    write_face_rec(tmp_path / "train.rec", tmp_path / "train.idx", [(0, jpeg()), (0, jpeg()), (1, jpeg())])
    expected = {"format": "recordio", "path": str(tmp_path / "train.rec"), "num_images": 3, "num_classes": 2,
                "image_size": [12, 10, 3]}
    assert describe(tmp_path / "train.rec") == expected
    assert describe(tmp_path) == expected
    assert describe(tmp_path / "train.idx") == expected
    json.dumps(expected)


def test_bin(tmp_path: Path) -> None:
    write_bin(tmp_path / "lfw.bin", [jpeg(16, 16)] * 6, [True, False, True])
    assert describe(tmp_path / "lfw.bin") == {"format": "bin", "path": str(tmp_path / "lfw.bin"), "num_images": 6,
                                             "pairs": 3, "genuine_pairs": 2, "image_size": [16, 16, 3]}


def test_ijb(tmp_path: Path) -> None:
    names = ["a.jpg", "b.jpg", "c.jpg"]
    write_ijb(
        tmp_path, "ijbb", images={n: jpeg() for n in names},
        face_tid_mid=pd.DataFrame({"image_name": names, "template_id": [1, 1, 2], "media_id": [5, 6, 7]}),
        landmarks=np.repeat(ARCFACE_TEMPLATE[None], 3, 0), faceness=np.ones(3),
        pairs=np.array([[1, 2], [1, 1]]), labels=np.array([0, 1]),
        gallery_g1=pd.DataFrame({"template_id": [1], "subject_id": [3]}),
    )
    summary = describe(tmp_path)
    assert summary["format"] == "ijb"
    assert summary["protocols"] == {"ijbb": {"num_images": 3, "templates": 2, "pairs": 2, "genuine_pairs": 1,
                                             "gallery_templates": 1, "probe_templates": None}}
    json.dumps(summary)


def test_identity_folder_and_unlabeled(tmp_path: Path) -> None:
    put(tmp_path / "ids" / "anna" / "1.jpg", jpeg())
    put(tmp_path / "ids" / "ben" / "1.jpg", jpeg())
    put(tmp_path / "ids" / "ben" / "2.jpg", jpeg())
    assert describe(tmp_path / "ids") == {"format": "folder", "path": str(tmp_path / "ids"), "num_images": 3,
                                          "num_classes": 2, "image_size": [12, 10, 3]}
    put(tmp_path / "raw" / "x.png", jpeg(8, 8))
    put(tmp_path / "raw" / "more" / "y.jpg", jpeg())
    assert describe(tmp_path / "raw") == {"format": "unlabeled", "path": str(tmp_path / "raw"), "num_images": 2,
                                          "image_size": [12, 10, 3]}


def test_unrecognisable_paths(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nothing: not found"):
        describe(tmp_path / "nothing")
    put(tmp_path / "notes.txt", b"hello")
    with pytest.raises(DataError, match=r"notes\.txt: not a recognised dataset file"):
        describe(tmp_path / "notes.txt")
    with pytest.raises(DataError, match=r"not a recognised dataset \(no train\.rec"):
        describe(tmp_path)
