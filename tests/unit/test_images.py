"""Image encode/decode helpers: RGB order, errors naming their source."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from facekd.data.images import decode_image, encode_jpeg, read_image_file
from facekd.errors import DataError


def _stripes() -> np.ndarray:
    # 16-pixel bands line up with JPEG's chroma blocks, so colours survive compression.
    img = np.zeros((32, 48, 3), dtype=np.uint8)
    img[:, :16, 0] = 255  # red band on the left
    img[:, 16:32, 1] = 255  # green in the middle
    img[:, 32:, 2] = 255  # blue on the right
    return img


def test_jpeg_round_trip_keeps_rgb_order() -> None:
    img = _stripes()
    out = decode_image(encode_jpeg(img, quality=100), "mem")
    assert out.shape == (32, 48, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - img.astype(int)).mean() < 8
    assert out[16, 4].argmax() == 0 and out[16, 24].argmax() == 1 and out[16, 44].argmax() == 2


def test_png_written_by_opencv_decodes_as_rgb(tmp_path) -> None:
    img = _stripes()
    path = tmp_path / "face.png"
    cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    assert np.array_equal(read_image_file(path), img)


def test_grey_image_comes_out_with_three_channels() -> None:
    ok, buf = cv2.imencode(".png", np.full((5, 7), 90, np.uint8))
    assert ok
    out = decode_image(buf.tobytes(), "grey")
    assert out.shape == (5, 7, 3) and (out == 90).all()


@pytest.mark.parametrize("data", [b"", b"not an image at all", b"\xff\xd8\xff\xe0" + b"\0" * 20])
def test_undecodable_bytes_name_the_source(data: bytes) -> None:
    with pytest.raises(DataError, match="train.rec record 7"):
        decode_image(data, "train.rec record 7")


def test_missing_file_is_named(tmp_path) -> None:
    with pytest.raises(DataError, match="nope.jpg"):
        read_image_file(tmp_path / "nope.jpg")


def test_encode_rejects_wrong_arrays() -> None:
    with pytest.raises(ValueError):
        encode_jpeg(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError):
        encode_jpeg(np.zeros((4, 4, 3), np.float32))
