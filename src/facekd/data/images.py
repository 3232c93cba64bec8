"""Encode and decode face images (JPEG/PNG bytes <-> HxWx3 uint8 RGB arrays) with OpenCV.

Every dataset format stores encoded images; this is the one place that turns them into pixels,
so every decode error names where the bytes came from, and every image's declared size is read
from its header and checked against the limits (``data.limits``) before OpenCV allocates it.
"""
from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np

from facekd.data.limits import active_limits
from facekd.data.paths import shown
from facekd.errors import DataError

# OpenCV >= 4.10 decodes straight to RGB (same pixels as BGR + cvtColor, one pass less); older
# versions lack the flag and take the BGR path.
_IMREAD_RGB: int | None = getattr(cv2, "IMREAD_COLOR_RGB", None)
_FORMATS = "not a JPEG/PNG/BMP/WebP"
# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic): not C4/C8/CC.
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RST0-7: no length field


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the first start-of-frame segment; segments before it are skipped."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _JPEG_STANDALONE:
            pos += 2
            continue
        if marker in (0xD8, 0xD9, 0xDA):  # SOI again, EOI or scan data before any frame header
            return None
        if marker in _JPEG_SOF:
            if pos + 9 > len(data):
                return None
            height, width = struct.unpack_from(">HH", data, pos + 5)
            return width, height
        pos += 2 + struct.unpack_from(">H", data, pos + 2)[0]
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    if chunk == b"VP8L" and len(data) >= 25:
        bits = int.from_bytes(data[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if chunk == b"VP8 " and len(data) >= 30:
        width, height = struct.unpack_from("<HH", data, 26)
        return width & 0x3FFF, height & 0x3FFF
    return None


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) an encoded JPEG/PNG/BMP/WebP declares in its header; None for anything else.

    Reads only the header: OpenCV has no header-only call, and it allocates the declared size
    before it finds out that the pixel data are missing.
    """
    if data[:3] == b"\xff\xd8\xff":
        return _jpeg_size(data)
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 24:
        return struct.unpack_from(">II", data, 16)
    if data[:2] == b"BM" and len(data) >= 26:
        if struct.unpack_from("<I", data, 14)[0] == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
            return struct.unpack_from("<HH", data, 18)
        width, height = struct.unpack_from("<ii", data, 18)
        return abs(width), abs(height)  # negative height: a top-down bitmap
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_size(data)
    return None


def _check_declared_size(data: bytes, where: str) -> None:
    if len(data) == 0:
        raise DataError(f"{where}: image is empty (0 bytes); re-create the dataset file")
    size = image_size(data)
    if size is None:
        raise DataError(
            f"{where}: cannot decode image ({len(data)} bytes; {_FORMATS}, or its header is cut short); "
            "the file is corrupt or not an image"
        )
    width, height = size
    pixels = width * height
    limits = active_limits()
    if pixels == 0:
        raise DataError(f"{where}: image header declares {width}x{height} pixels; the image is corrupt")
    if pixels > limits.max_image_pixels:
        raise DataError(
            f"{where}: image header declares {width}x{height} pixels, more than data.limits.max_image_pixels="
            f"{limits.max_image_pixels}; refused before decoding (resize the image, or raise the limit)"
        )
    if pixels > limits.max_pixels_per_byte * len(data):
        raise DataError(
            f"{where}: image header declares {width}x{height} pixels in only {len(data)} bytes (more than "
            f"data.limits.max_pixels_per_byte={limits.max_pixels_per_byte}); the header is forged or the image "
            "is cut short; refused before decoding"
        )


def decode_stored(data: bytes, where: str) -> np.ndarray:
    """Decode as stored (channels and depth unchanged: what the validation gate inspects)."""
    _check_declared_size(data, where)
    img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DataError(f"{where}: cannot decode image ({len(data)} bytes); the file is corrupt or not an image")
    return img


def decode_image(data: bytes, where: str) -> np.ndarray:
    """Decode encoded image bytes to an (H, W, 3) uint8 RGB array.

    ``where`` names the source (file, record, pair) for the error message. Grey images come out
    with 3 equal channels and an alpha channel is dropped, as insightface's readers do. The size
    declared in the header is checked against ``data.limits`` before anything is decoded.
    """
    _check_declared_size(data, where)
    buf = np.frombuffer(data, dtype=np.uint8)
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR if _IMREAD_RGB is None else _IMREAD_RGB)
    except cv2.error as err:
        raise DataError(f"{where}: cannot decode image ({len(data)} bytes): {err.err}") from None
    if img is None or img.ndim != 3 or img.shape[2] != 3:
        raise DataError(
            f"{where}: cannot decode image ({len(data)} bytes; {_FORMATS}); the file is corrupt or not an image"
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
        raise DataError(f"{shown(path)}: image file not found") from None
    except OSError as err:
        raise DataError(f"{shown(path)}: cannot read image file ({err.strerror})") from None
    return decode_image(data, shown(path))
