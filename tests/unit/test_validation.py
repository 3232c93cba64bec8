"""The Great Expectations data gate passes good data and names each problem in bad data."""
from __future__ import annotations

import json

import numpy as np
import pytest

from facekd.config import Params, parse_params
from facekd.data.bins import write_bin
from facekd.data.images import encode_jpeg
from facekd.data.face_rec import write_face_rec
from facekd.data.validation import ValidationFailed
from facekd.stages import validate


def _face(seed: int, size: int = 112) -> bytes:
    rng = np.random.default_rng(seed)
    return encode_jpeg(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def _dataset(root, items, pairs_issame=(True, False) * 10, eval_seed_offset=1000):
    train, ev = root / "prepared", root / "eval"
    train.mkdir(parents=True)
    ev.mkdir()
    write_face_rec(train / "train.rec", train / "train.idx", items)
    images = [_face(eval_seed_offset + i) for i in range(2 * len(pairs_issame))]
    write_bin(ev / "synth_lfw.bin", images, list(pairs_issame))
    return parse_params({"data": {"prepared_dir": str(train), "eval_dir": str(ev)}})


def _good_items(classes=4, per=3):
    return [(c, _face(c * 100 + k)) for c in range(classes) for k in range(per)]


def test_good_data_passes_and_writes_reports(tmp_path):
    params = _dataset(tmp_path, _good_items())
    report = validate.run(params, tmp_path / "v.json", tmp_path / "v.md")
    assert report["success"]
    assert json.loads((tmp_path / "v.json").read_text())["num_classes"] == 4
    assert "PASSED" in (tmp_path / "v.md").read_text()


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda items: items[:-2], "label=3"),  # class 3 has 1 image
        (lambda items: items[:1] + [(0, items[0][1])] + items[2:], "expect_column_values_to_be_unique"),
        (lambda items: items[:-1] + [(3, b"\xff\xd8 not a jpeg")], "decodes=False index=11"),
        (lambda items: items[:-1] + [(3, _face(7, size=96))], "height=96 index=11"),
    ],
    ids=["too-few-images", "duplicate", "undecodable", "wrong-size"],
)
def test_bad_training_data_fails_naming_the_expectation(tmp_path, mutate, expected):
    params = _dataset(tmp_path, mutate(_good_items()))
    with pytest.raises(ValidationFailed) as err:
        validate.run(params, tmp_path / "v.json", tmp_path / "v.md")
    assert expected in str(err.value)
    report = json.loads((tmp_path / "v.json").read_text())
    assert report["success"] is False
    assert "FAIL" in (tmp_path / "v.md").read_text()


def test_unbalanced_pairs_and_leaked_eval_images_fail(tmp_path):
    items = _good_items()
    params = _dataset(tmp_path, items, pairs_issame=(True,) * 18 + (False,) * 2, eval_seed_offset=0)
    with pytest.raises(ValidationFailed) as err:
        validate.run(params, tmp_path / "v.json", tmp_path / "v.md")
    message = str(err.value)
    assert "genuine_share" in message
    assert "in_training" in message


def test_defaults_are_embedded_paths():
    assert Params().data.prepared_dir == "data/prepared"
