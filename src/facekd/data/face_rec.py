"""insightface's face layout on RecordIO (``train.rec`` + ``train.idx``): reading and writing it.

Record 0 has labels ``[a, b]``; images are keys 1..a-1 and keys a..b-1 are identity records whose
labels ``[start, end)`` give each identity's image keys. When record 0 has flag 0 there are no
identity records and every key is an image. The format underneath: :mod:`facekd.data.recordio`.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from facekd.data.images import decode_image
from facekd.data.paths import shown
from facekd.data.recordio import IR_SIZE, IRHeader, RecordIOReader, RecordIOWriter, pack_record, unpack_record
from facekd.errors import DataError

log = logging.getLogger(__name__)

# float32 holds every integer exactly only up to 2**24: labels and image keys stored as float32
# (insightface's header and identity records) must stay below it.
_FLOAT32_EXACT = 1 << 24


def _check_integer_labels(values: np.ndarray, keys: np.ndarray, where: Path, what: str) -> np.ndarray:
    """float32 label values -> int64, or DataError naming the first non-integer/negative one."""
    bad = np.flatnonzero(~np.isfinite(values) | (values != np.round(values)) | (values < 0))
    if bad.size:
        i = int(bad[0])
        raise DataError(
            f"{where}: record key {int(keys[i])}: {what} {float(values[i])!r} is not a non-negative integer; "
            "labels must be class indices 0..C-1"
        )
    return values.astype(np.int64)


class FaceRecordFile:
    """An insightface training set (``train.rec`` + ``train.idx``): labels read once, images on demand.

    ``labels[i]`` is the class of image ``i`` (images in key order), ``num_classes`` is derived
    from the identity records (or max label + 1 without them).
    """

    def __init__(self, rec_path: str | Path, idx_path: str | Path | None = None) -> None:
        rec_path = Path(rec_path)
        self.reader = RecordIOReader(rec_path, rec_path.with_suffix(".idx") if idx_path is None else idx_path)
        self.rec_path = rec_path
        if 0 not in self.reader:
            raise DataError(
                f"{self.reader.idx_path}: has no record key 0 (the insightface header record); "
                "this is not an insightface training .rec"
            )
        header0, _ = unpack_record(self.reader.read(0), f"{rec_path}: record key 0")
        self.identity_ranges: np.ndarray | None = None  # (C, 2) [start, end) image keys
        if header0.flag > 0:
            self._open_identity_layout(header0)
        else:
            self.image_keys = self.reader.key_array.copy()
            self.labels = self._image_labels(self.image_keys)
            self.num_classes = int(self.labels.max()) + 1 if self.labels.size else 0
        if self.labels.size == 0:
            raise DataError(f"{rec_path}: contains no images")
        self.num_images = int(self.labels.size)
        log.info("%s: %d images, %d classes", shown(rec_path), self.num_images, self.num_classes)

    def _open_identity_layout(self, header0: IRHeader) -> None:
        where = self.rec_path
        bounds = np.asarray(header0.label, dtype=np.float32)
        if bounds.size < 2:
            raise DataError(f"{where}: record key 0: header has {bounds.size} label(s), expected [a, b]")
        a, b = _check_integer_labels(bounds[:2], np.zeros(2, np.int64), where, "header bound")
        if not 1 <= a <= b:
            raise DataError(f"{where}: record key 0: header range [{a}, {b}) is invalid (need 1 <= a <= b)")
        # Before any per-key array is built: a forged header can claim 4e8 keys in a 2-KB file.
        self._require_keys(a, b)
        self.image_keys = np.arange(1, a, dtype=np.int64)
        identity_keys = np.arange(a, b, dtype=np.int64)
        extra = self.reader.key_array[(self.reader.key_array < 0) | (self.reader.key_array >= b)]
        if extra.size:
            log.warning("%s: %d keys outside the header's range [0, %d) are ignored", shown(where), extra.size, b)
        self.labels = self._image_labels(self.image_keys)
        self.identity_ranges = self._identity_ranges(identity_keys, a)
        self.num_classes = int(identity_keys.size)
        self._check_labels_match_identities(a)

    def _require_keys(self, a: int, b: int) -> None:
        first, count = self.reader.missing_in_range(1, b)
        if count:
            raise DataError(
                f"{self.reader.idx_path}: has no record key {first} ({count} missing), but the "
                f"header (record 0) says images are keys 1..{a - 1} and identities {a}..{b - 1}; "
                "the .idx is truncated or does not belong to this .rec"
            )

    def _image_labels(self, keys: np.ndarray) -> np.ndarray:
        # The scalar label field, or the first array label when flag > 0: IRHeader + 1 float.
        heads, lengths = self.reader.peek(keys, IR_SIZE + 4)
        flag = heads[:, 0:4].copy().view("<u4")[:, 0]
        scalar = heads[:, 4:8].copy().view("<f4")[:, 0]
        first = heads[:, IR_SIZE : IR_SIZE + 4].copy().view("<f4")[:, 0]
        short = np.flatnonzero((lengths < IR_SIZE) | ((flag > 0) & (lengths < IR_SIZE + 4)))
        if short.size:
            i = int(short[0])
            raise DataError(f"{self.rec_path}: record key {int(keys[i])}: too short to hold an IRHeader and its label")
        return _check_integer_labels(np.where(flag > 0, first, scalar), keys, self.rec_path, "label")

    def _identity_ranges(self, keys: np.ndarray, a: int) -> np.ndarray:
        heads, lengths = self.reader.peek(keys, IR_SIZE + 8)
        flag = heads[:, 0:4].copy().view("<u4")[:, 0]
        bad = np.flatnonzero((flag < 2) | (lengths < IR_SIZE + 8))
        if bad.size:
            i = int(bad[0])
            raise DataError(
                f"{self.rec_path}: record key {int(keys[i])}: identity record has {int(flag[i])} labels, "
                "expected [start, end) image keys"
            )
        values = heads[:, IR_SIZE : IR_SIZE + 8].copy().view("<f4")  # (C, 2)
        ranges = np.stack(
            [_check_integer_labels(values[:, j], keys, self.rec_path, "identity range bound") for j in (0, 1)], 1
        )
        if keys.size == 0:
            if a != 1:
                raise DataError(f"{self.rec_path}: record key 0: header lists images 1..{a - 1} but no identity records")
            return ranges.reshape(0, 2)
        expected_start = np.concatenate([[1], ranges[:-1, 1]])  # identities tile the image keys in order
        bad = np.flatnonzero((ranges[:, 0] != expected_start) | (ranges[:, 1] < ranges[:, 0]))
        if not bad.size and ranges[-1, 1] != a:
            bad = np.array([keys.size - 1])
        if bad.size:
            i = int(bad[0])
            raise DataError(
                f"{self.rec_path}: record key {int(keys[i])}: identity records are inconsistent: identity {i} "
                f"covers image keys [{ranges[i, 0]}, {ranges[i, 1]}), but the identities must tile keys "
                f"1..{a - 1} in order"
            )
        return ranges

    def _check_labels_match_identities(self, a: int) -> None:
        ranges = self.identity_ranges
        out = np.flatnonzero(self.labels >= self.num_classes)
        if out.size:
            i = int(out[0])
            raise DataError(
                f"{self.rec_path}: record key {int(self.image_keys[i])}: label {int(self.labels[i])} is out of "
                f"range; the header declares {self.num_classes} identities (0..{self.num_classes - 1})"
            )
        expected = np.repeat(np.arange(self.num_classes), ranges[:, 1] - ranges[:, 0])  # (num_images,)
        bad = np.flatnonzero(expected != self.labels)
        if bad.size:
            i = int(bad[0])
            c = int(expected[i])
            raise DataError(
                f"{self.rec_path}: record key {int(self.image_keys[i])}: label {int(self.labels[i])} but identity "
                f"record {a + c} puts this image in identity {c}; identity records are inconsistent"
            )

    def __len__(self) -> int:
        return self.num_images

    def image_key(self, i: int) -> int:
        """Record key of image ``i``."""
        if not 0 <= i < self.num_images:
            raise IndexError(f"image index {i} out of range 0..{self.num_images - 1}")
        return int(self.image_keys[i])

    def image_bytes(self, i: int) -> bytes:
        """Encoded bytes of image ``i``."""
        key = self.image_key(i)
        _, payload = unpack_record(self.reader.read(key), f"{self.rec_path}: record key {key}")
        return payload

    def image(self, i: int) -> np.ndarray:
        """Image ``i`` as (H, W, 3) uint8 RGB."""
        return decode_image(self.image_bytes(i), f"{self.rec_path}: record key {self.image_key(i)} (image {i})")


def _label_of(item_no: int, label: object) -> int:
    if isinstance(label, bool | np.bool_) or not isinstance(label, int | np.integer):
        raise DataError(f"write_face_rec: item {item_no}: label {label!r} is not an integer")
    return int(label)


def write_face_rec(rec_path: str | Path, idx_path: str | Path, items: Iterable[tuple[int, bytes]]) -> dict:
    """Write ``(label, encoded image)`` items as an insightface .rec/.idx; streams, never holds the images.

    Items must come grouped by label, labels 0..C-1 ascending and contiguous. Returns
    ``{"num_images", "num_classes"}``.
    """
    placeholder = pack_record(IRHeader(2, np.zeros(2, np.float32), 0, 0), b"")
    starts: list[int] = []  # first image key of each identity
    key, prev = 1, -1
    with RecordIOWriter(rec_path, idx_path) as writer:
        # The header needs the image count; reserve it now, patch it once the stream is done.
        head_offset = writer.write(0, placeholder)
        for n, (raw_label, data) in enumerate(items):
            label = _label_of(n, raw_label)
            if label == prev + 1:
                starts.append(key)
            elif label != prev:
                raise DataError(
                    f"write_face_rec: item {n} has label {label} after label {prev}; items must come grouped "
                    "by label with labels 0..C-1 ascending and contiguous"
                )
            prev = label
            writer.write(key, pack_record(IRHeader(0, float(label), key, 0), data))
            key += 1
        a, num_classes = key, len(starts)
        if a == 1:
            raise DataError(f"write_face_rec: {rec_path}: no images given")
        if a + num_classes >= _FLOAT32_EXACT:
            raise DataError(
                f"write_face_rec: {rec_path}: {a - 1} images + {num_classes} identities exceed the 2**24 keys "
                "insightface's float32 header can address exactly"
            )
        ends = starts[1:] + [a]
        for c, (start, end) in enumerate(zip(starts, ends, strict=True)):
            writer.write(a + c, pack_record(IRHeader(2, np.array([start, end], np.float32), a + c, 0), b""))
        header = IRHeader(2, np.array([a, a + num_classes], np.float32), 0, 0)
        writer.patch(head_offset, pack_record(header, b""))
    return {"num_images": a - 1, "num_classes": num_classes}
