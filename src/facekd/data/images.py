"""Encode and decode face images (JPEG/PNG bytes <-> HxWx3 uint8 RGB arrays) with OpenCV.

Every dataset format stores encoded images; this is the one place that turns them into pixels,
so every decode error names where the bytes came from.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from facekd.errors import DataError

# OpenCV >= 4.10 decodes straight to RGB (same pixels as BGR + cvtColor, one pass less); older
# versions lack the flag and take the BGR path.
_IMREAD_RGB: int | None = getattr(cv2, "IMREAD_COLOR_RGB", None)


def decode_image(data: bytes, where: str) -> np.ndarray:
    """Decode encoded image bytes to an (H, W, 3) uint8 RGB array.

    ``where`` names the source (file, record, pair) for the error message. Grey images come out
    with 3 equal channels and an alpha channel is dropped, as insightface's readers do.
    """
    if len(data) == 0:
        raise DataError(f"{where}: image is empty (0 bytes); re-create the dataset file")
    buf = np.frombuffer(data, dtype=np.uint8)
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR if _IMREAD_RGB is None else _IMREAD_RGB)
    except cv2.error as err:
        raise DataError(f"{where}: cannot decode image ({len(data)} bytes): {err.err}") from None
    if img is None or img.ndim != 3 or img.shape[2] != 3:
        raise DataError(
            f"{where}: cannot decode image ({len(data)} bytes; not a JPEG/PNG/BMP/WebP); "
            "the file is corrupt or not an image"
        )
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB) if _IMREAD_RGB is None else img


def encode_jpeg(img: np.ndarray, quality: int = 95) -> bytes:
    """Encode an (H, W, 3) uint8 RGB array as JPEG bytes."""
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"encode_jpeg needs an (H, W, 3) uint8 RGB array, got {img.dtype} {img.shape}")
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    bgr = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"OpenCV could not encode a {img.shape} image as JPEG")
    return buf.tobytes()


def read_image_file(path: str | Path) -> np.ndarray:
    """Read and decode one image file to (H, W, 3) uint8 RGB."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read image file ({err.strerror})") from None
    return decode_image(data, str(path))
