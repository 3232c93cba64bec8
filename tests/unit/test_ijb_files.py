"""IJB protocol files (insightface packaging): write/read round trip, line-numbered errors, alignment."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from facekd.data.ijb_protocol import ARCFACE_TEMPLATE, align_face, load_ijb, similarity_transform, write_ijb
from facekd.data.images import encode_jpeg
from facekd.errors import DataError

NAME = "ijbc"


def protocol(root: Path, *, one_to_n: bool = True) -> dict:
    """A 6-image, 3-template protocol written in the real layout; returns what was written."""
    rng = np.random.default_rng(0)
    names = [f"{i}.jpg" for i in range(1, 7)]
    tid_mid = pd.DataFrame({"image_name": names, "template_id": [10, 10, 20, 20, 30, 30],
                            "media_id": [100, 101, 200, 200, 300, 301]})
    landmarks = ARCFACE_TEMPLATE[None] + rng.normal(0, 2, (6, 5, 2))
    args = dict(
        images={n: encode_jpeg(rng.integers(0, 256, (20, 16, 3), dtype=np.uint8)) for n in names},
        face_tid_mid=tid_mid,
        landmarks=landmarks,
        faceness=np.linspace(0.5, 0.99, 6),
        pairs=np.array([[10, 20], [10, 30], [20, 30]]),
        labels=np.array([1, 0, 0]),
    )
    if one_to_n:
        args.update(
            gallery_g1=pd.DataFrame({"template_id": [10], "subject_id": [7]}),
            gallery_g2=pd.DataFrame({"template_id": [20, 20], "subject_id": [8, 8]}),
            probes=pd.DataFrame({"template_id": [30, 30], "subject_id": [7, 7],
                                 "image_name": ["img/5.jpg", "frames/6.png"]}),
        )
    write_ijb(root, NAME, **args)
    return args


def meta(root: Path, suffix: str) -> Path:
    return root / "meta" / f"{NAME}_{suffix}"


def edit_line(path: Path, lineno: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[lineno - 1] = text
    path.write_text("\n".join(lines) + "\n")


def test_round_trip(tmp_path: Path) -> None:
    written = protocol(tmp_path)
    proto = load_ijb(tmp_path, NAME)
    assert proto.name == NAME and proto.root == tmp_path
    pd.testing.assert_frame_equal(proto.images[["image_name", "template_id", "media_id"]], written["face_tid_mid"])
    np.testing.assert_allclose(proto.images["faceness"], written["faceness"], atol=1e-6)
    assert proto.landmarks.shape == (6, 5, 2)
    np.testing.assert_allclose(proto.landmarks, written["landmarks"], atol=1e-5)
    assert proto.pairs.dtype == np.int64 and proto.pairs.tolist() == [[10, 20], [10, 30], [20, 30]]
    assert proto.labels.dtype == np.int8 and proto.labels.tolist() == [1, 0, 0]
    assert proto.gallery.to_dict("list") == {"template_id": [10, 20], "subject_id": [7, 8], "gallery": ["G1", "G2"]}
    assert proto.probes.to_dict("list") == {"template_id": [30, 30], "subject_id": [7, 7],
                                            "image_name": ["img/5.jpg", "frames/6.png"]}
    assert proto.image_path("3.jpg").read_bytes() == written["images"]["3.jpg"]


def test_files_have_the_published_layout(tmp_path: Path) -> None:
    protocol(tmp_path)
    assert meta(tmp_path, "face_tid_mid.txt").read_text().splitlines()[0] == "1.jpg 10 100"
    assert meta(tmp_path, "template_pair_label.txt").read_text().splitlines() == ["10 20 1", "10 30 0", "20 30 0"]
    five = meta(tmp_path, "name_5pts_score.txt").read_text().splitlines()[0].split(" ")
    assert five[0] == "1.jpg" and len(five) == 12 and float(five[-1]) == 0.5
    assert meta(tmp_path, "1N_gallery_G1.csv").read_text().splitlines() == ["TEMPLATE_ID,SUBJECT_ID", "10,7"]


def test_ijbb_gallery_names_and_optional_1n(tmp_path: Path) -> None:
    protocol(tmp_path)
    meta(tmp_path, "1N_gallery_G1.csv").rename(meta(tmp_path, "1N_gallery_S1.csv"))
    meta(tmp_path, "1N_gallery_G2.csv").rename(meta(tmp_path, "1N_gallery_S2.csv"))
    assert load_ijb(tmp_path, NAME).gallery["gallery"].tolist() == ["G1", "G2"]
    other = tmp_path / "plain"
    protocol(other, one_to_n=False)
    proto = load_ijb(other, NAME)
    assert proto.gallery is None and proto.probes is None


@pytest.mark.parametrize(
    ("suffix", "line", "text", "message"),
    [
        ("face_tid_mid.txt", 3, "3.jpg 20", r"line 3: expected 3 columns"),
        ("face_tid_mid.txt", 2, "2.jpg ten 101", r"line 2, column 2: 'ten' is not an integer"),
        ("face_tid_mid.txt", 4, "4.jpg 20 200 9", r"line 4: expected 3 columns"),
        ("name_5pts_score.txt", 2, "2.jpg 1 2 3 x 5 6 7 8 9 10 0.9", r"line 2, column 5: 'x' is not a number"),
        ("name_5pts_score.txt", 5, "5.jpg 1 2 3 4 5 6 7 8 9 10 nan", r"line 5, column 12: 'nan' is not a finite"),
        ("template_pair_label.txt", 2, "10 30 2", r"line 2: label 2 must be 0 or 1"),
        ("template_pair_label.txt", 3, "20 30.5 0", r"line 3, column 2: '30.5' is not an integer"),
        ("template_pair_label.txt", 3, "20 99 0", r"line 3: template 99 has no images"),
        ("1N_probe_mixed.csv", 3, "30,seven,6.png", r"line 3: SUBJECT_ID 'seven' is not an integer"),
        ("1N_gallery_G2.csv", 2, "77,8", r"template 77 has no images"),
        ("1N_gallery_G2.csv", 2, "20,9", r"template 20 is listed with two different subjects"),
    ],
)
def test_malformed_lines_are_named(tmp_path: Path, suffix: str, line: int, text: str, message: str) -> None:
    protocol(tmp_path)
    edit_line(meta(tmp_path, suffix), line, text)
    with pytest.raises(DataError, match=rf"{NAME}_{suffix}: {message}"):
        load_ijb(tmp_path, NAME)


@pytest.mark.parametrize("suffix", ["face_tid_mid.txt", "name_5pts_score.txt", "template_pair_label.txt"])
def test_missing_file_is_named(tmp_path: Path, suffix: str) -> None:
    protocol(tmp_path)
    meta(tmp_path, suffix).unlink()
    with pytest.raises(DataError, match=rf"{NAME}_{suffix}: .* not found"):
        load_ijb(tmp_path, NAME)


def test_image_without_landmarks_or_crop(tmp_path: Path) -> None:
    protocol(tmp_path)
    pts = meta(tmp_path, "name_5pts_score.txt")
    lines = pts.read_text().splitlines()
    pts.write_text("\n".join(lines[:3] + lines[4:]) + "\n")  # drop 4.jpg
    with pytest.raises(DataError, match=r"name_5pts_score.txt: image '4.jpg' .* has no landmarks"):
        load_ijb(tmp_path, NAME)
    pts.write_text("\n".join(reversed(lines)) + "\n")  # other order: matched by name
    six = np.array(lines[5].split()[1:11], dtype=float).reshape(5, 2)  # 6.jpg's landmarks
    np.testing.assert_allclose(load_ijb(tmp_path, NAME).landmarks[5], six, atol=1e-5)
    (tmp_path / "loose_crop" / "2.jpg").unlink()
    with pytest.raises(DataError, match=r"loose_crop: image '2.jpg'"):
        load_ijb(tmp_path, NAME)


def face_pattern() -> np.ndarray:
    img = np.zeros((112, 112, 3), np.uint8)
    for (x, y), colour in zip(ARCFACE_TEMPLATE, [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]):
        cv2.circle(img, (int(round(x)), int(round(y))), 6, colour, -1)
    return cv2.GaussianBlur(img, (5, 5), 1.5)


def test_align_is_identity_on_the_template() -> None:
    img = face_pattern()
    out = align_face(img, ARCFACE_TEMPLATE)
    assert out.shape == (112, 112, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - img.astype(int)).max() <= 1


def test_align_undoes_a_similarity_transform() -> None:
    img = face_pattern()
    # Rotate 20 degrees, scale 1.7, shift: the face moves inside a bigger "loose crop".
    forward = cv2.getRotationMatrix2D((56, 56), 20, 1.7)
    forward[:, 2] += (40, 25)
    loose = cv2.warpAffine(img, forward, (260, 240))
    moved = ARCFACE_TEMPLATE @ forward[:, :2].T + forward[:, 2]  # (5, 2)
    np.testing.assert_allclose(similarity_transform(ARCFACE_TEMPLATE, moved), forward, atol=1e-6)
    out = align_face(loose, moved)
    assert np.abs(out.astype(int) - img.astype(int)).mean() < 2.0
