"""MXNet/dmlc RecordIO (``.rec`` + ``.idx``), without mxnet: framing, the IRHeader, reader and writer.

Framing (dmlc-core, all little-endian uint32): each record is one or more chunks
``magic, lrec = (cflag << 29) | length, payload[length], zero padding to 4 bytes``. cflag 0 is a
whole record; 1/2/3 are the first/middle/last parts of a record that was split wherever the magic
number sat at a 4-byte-aligned offset of the payload (the reader re-inserts it between parts).
Payload: IRHeader ``<IfQQ`` (flag, label, id, id2), then ``flag`` float32 labels when flag > 0,
then the encoded image. The ``.idx`` is text, ``"key\\toffset\\n"`` per record.

insightface's face layout on top of this format: :mod:`facekd.data.face_rec`.
"""
from __future__ import annotations

import contextlib
import io
import logging
import numbers
import operator
import os
import struct
from pathlib import Path
from types import TracebackType
from typing import NamedTuple

import numpy as np

from facekd.errors import DataError
from facekd.fsio import atomic_path

log = logging.getLogger(__name__)

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_CHUNK_HEAD = struct.Struct("<II")  # magic, lrec
_IR = struct.Struct("<IfQQ")  # flag, label, id, id2: 24 bytes
IR_SIZE = _IR.size
_LENGTH_MASK = (1 << 29) - 1
MAX_RECORD = 1 << 29
_SCALARS = (int, float, np.number)  # concrete types: ABC checks cost ~10 us per record when writing
_PEEK_BATCH = 1 << 16  # records gathered per step when scanning headers (bounds the index array)
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


class IRHeader(NamedTuple):
    """The record header mxnet's ``recordio.pack`` writes before the image bytes."""

    flag: int
    label: float | np.ndarray
    id: int
    id2: int


def pack_record(header: IRHeader, payload: bytes) -> bytes:
    """Header + payload as mxnet's ``recordio.pack``: the flag is derived from the label.

    A scalar label gives flag 0; an array label of n values gives flag n, the scalar field 0 and
    the n float32 values before the payload.
    """
    if isinstance(header.label, _SCALARS):
        head = _IR.pack(0, float(header.label), header.id, header.id2)
        return head + bytes(payload)
    labels = np.asarray(header.label, dtype="<f4").ravel()
    if labels.size == 0:
        raise ValueError("pack_record: an array label needs at least one value")
    return _IR.pack(labels.size, 0.0, header.id, header.id2) + labels.tobytes() + bytes(payload)


def unpack_record(data: bytes, where: str) -> tuple[IRHeader, bytes]:
    """Split a record payload into its IRHeader (array label when flag > 0) and the image bytes."""
    if len(data) < IR_SIZE:
        raise DataError(f"{where}: record is {len(data)} bytes, shorter than the {IR_SIZE}-byte IRHeader")
    flag, label, rec_id, id2 = _IR.unpack_from(data)
    if flag == 0:
        return IRHeader(0, label, rec_id, id2), data[IR_SIZE:]
    end = IR_SIZE + 4 * flag
    if len(data) < end:
        raise DataError(
            f"{where}: IRHeader says {flag} labels but the record has only {len(data)} bytes; "
            "the record is corrupt"
        )
    labels = np.frombuffer(data, dtype="<f4", count=flag, offset=IR_SIZE).astype(np.float32)
    return IRHeader(flag, labels, rec_id, id2), data[end:]


def _aligned_magic_positions(record: bytes) -> list[int]:
    """Offsets (multiples of 4) where the magic number occurs in ``record``; the writer splits there."""
    positions = []
    pos = record.find(_MAGIC_BYTES)
    while pos >= 0:
        if pos % 4 == 0:
            positions.append(pos)
            pos = record.find(_MAGIC_BYTES, pos + 4)
        else:
            pos = record.find(_MAGIC_BYTES, pos + 1)
    return positions


def _chunk(cflag: int, body: bytes) -> bytes:
    pad = -len(body) % 4
    return _CHUNK_HEAD.pack(MAGIC, (cflag << 29) | len(body)) + body + b"\0" * pad


def frame_record(record: bytes) -> bytes:
    """The bytes dmlc's ``RecordIOWriter::WriteRecord`` puts in the .rec for one record."""
    if len(record) >= MAX_RECORD:
        raise ValueError(f"RecordIO records must be < 2**29 bytes, got {len(record)}")
    cuts = _aligned_magic_positions(record)
    if not cuts:
        return _chunk(0, record)
    starts = [0] + [c + 4 for c in cuts]
    ends = cuts + [len(record)]
    flags = [1] + [2] * (len(cuts) - 1) + [3]
    # Middle parts are 4-aligned by construction, so only the last part gets padding.
    return b"".join(_chunk(f, record[s:e]) for f, s, e in zip(flags, starts, ends, strict=True))


def _idx_line_error(idx_path: Path, text: str) -> DataError:
    """The error for the first malformed .idx line (only called once the fast parse failed)."""
    for lineno, line in enumerate(text.splitlines(), start=1):
        fields = line.strip().split("\t")
        if fields == [""]:
            continue
        if len(fields) != 2:
            return DataError(
                f"{idx_path}: line {lineno}: expected 'key<TAB>offset', got {line[:100]!r}; "
                "the index is corrupt: rebuild it from the .rec"
            )
        for name, field in zip(("key", "offset"), fields, strict=True):
            try:
                value = int(field)
            except ValueError:
                return DataError(
                    f"{idx_path}: line {lineno}: {name} {field[:40]!r} is not an integer "
                    f"(line {line[:100]!r}); the index is corrupt: rebuild it from the .rec"
                )
            if not _INT64_MIN <= value <= _INT64_MAX:
                return DataError(
                    f"{idx_path}: line {lineno}: {name} {field[:40]!r} is out of range (not a 64-bit integer); "
                    "the index is corrupt: rebuild it from the .rec"
                )
    return DataError(f"{idx_path}: cannot parse the index; the file is corrupt: rebuild it from the .rec")


def _parse_idx(idx_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(keys, offsets) int64 in file order; errors name the line."""
    try:
        raw = idx_path.read_bytes()
    except OSError as err:
        raise DataError(f"{idx_path}: cannot read the RecordIO index ({err.strerror})") from None
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError as err:
        lineno = raw[: err.start].count(b"\n") + 1
        raise DataError(f"{idx_path}: line {lineno}: non-ASCII bytes; this is not a RecordIO .idx file") from None
    if not text.strip():
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    try:
        # numpy's C parser: ~1.6 s for the 5.8M lines of MS1MV2.
        table = np.loadtxt(io.StringIO(text), dtype=np.int64, delimiter="\t", ndmin=2, comments=None)
    except (ValueError, OverflowError):
        raise _idx_line_error(idx_path, text) from None
    if table.shape[1] != 2:
        raise _idx_line_error(idx_path, text)
    return table[:, 0].copy(), table[:, 1].copy()


class RecordIOReader:
    """Random access to a dmlc RecordIO file through its .idx.

    Reads use ``os.pread`` on a file descriptor opened lazily and reopened after a fork, so one
    reader can be shared with DataLoader worker processes (it also pickles without the fd).
    """

    def __init__(self, rec_path: str | Path, idx_path: str | Path) -> None:
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path)
        for path, what in ((self.rec_path, "RecordIO data file"), (self.idx_path, "RecordIO index")):
            if not path.is_file():
                raise DataError(f"{path}: {what} not found")
        self._size = self.rec_path.stat().st_size
        self._keys, self._offsets = _parse_idx(self.idx_path)
        self._check_idx()
        self._first_key = int(self._keys[0]) if self._keys.size else 0
        # Keys first..first+n-1 in order (what im2rec and insightface write): a key's position is
        # key - first, with no sorted copy to search (saves 2 x 8 bytes per record).
        self._dense = bool(np.array_equal(self._keys, np.arange(self._first_key, self._first_key + self._keys.size)))
        self._order = None if self._dense else np.argsort(self._keys, kind="stable")
        self._sorted_keys = self._keys if self._dense else self._keys[self._order]
        self._check_unique()
        self._fd: int | None = None
        self._pid: int | None = None

    def _check_idx(self) -> None:
        # Compared without adding to the offset: an offset near 2**63 would wrap around.
        bad = np.flatnonzero((self._offsets < 0) | (self._offsets > self._size - _CHUNK_HEAD.size))
        if bad.size:
            i = int(bad[0])
            raise DataError(
                f"{self.idx_path}: line {self._idx_line(i)}: key {int(self._keys[i])} points at byte "
                f"offset {int(self._offsets[i])}, past the end of {self.rec_path.name} ({self._size} bytes); "
                "the .rec is truncated or the .idx belongs to another file"
            )

    def _check_unique(self) -> None:
        dup = np.flatnonzero(np.diff(self._sorted_keys) == 0)
        if dup.size:
            key = int(self._sorted_keys[dup[0]])
            lines = [self._idx_line(int(i)) for i in np.flatnonzero(self._keys == key)[:2]]
            raise DataError(f"{self.idx_path}: key {key} appears twice (lines {lines[0]} and {lines[1]})")

    def _idx_line(self, position: int) -> int:
        """1-based .idx line number of entry ``position`` (blank lines skipped); error path only."""
        text = self.idx_path.read_text(encoding="ascii")
        entry_lines = [n for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
        return entry_lines[position]

    @property
    def keys(self) -> list[int]:
        """Record keys in .idx order (a fresh list; use ``key_array`` for large files)."""
        return self._keys.tolist()

    @property
    def key_array(self) -> np.ndarray:
        """Record keys in .idx order, int64 (read-only view)."""
        view = self._keys.view()
        view.flags.writeable = False
        return view

    def __len__(self) -> int:
        return int(self._keys.size)

    def _positions(self, keys: np.ndarray) -> np.ndarray:
        """Index into the .idx arrays for each key; -1 where the key is absent."""
        keys = np.asarray(keys, dtype=np.int64)
        n = self._keys.size
        if self._dense:
            pos = keys - self._first_key
            return np.where((pos >= 0) & (pos < n), pos, -1)
        if n == 0:
            return np.full(keys.shape, -1, dtype=np.int64)
        at = np.searchsorted(self._sorted_keys, keys).clip(max=n - 1)
        return np.where(self._sorted_keys[at] == keys, self._order[at], -1)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, numbers.Integral) and int(self._positions(np.asarray([key]))[0]) >= 0

    def missing_in_range(self, lo: int, hi: int) -> tuple[int, int]:
        """(first absent key, number of absent keys) of ``lo..hi-1``; costs O(.idx), whatever the range."""
        keys = self._sorted_keys
        present = keys[np.searchsorted(keys, lo) : np.searchsorted(keys, hi)]  # sorted, unique
        count = (hi - lo) - int(present.size)
        gaps = np.flatnonzero(present != np.arange(lo, lo + present.size))
        return lo + (int(gaps[0]) if gaps.size else int(present.size)), count

    def offset(self, key: int) -> int:
        """Byte offset of ``key`` in the .rec; DataError if the .idx has no such key."""
        if self._dense:  # scalar fast path: a read per training image must not pay numpy overheads
            pos = int(key) - self._first_key
            if 0 <= pos < self._keys.size:
                return int(self._offsets[pos])
        else:
            pos = int(self._positions(np.asarray([key]))[0])
            if pos >= 0:
                return int(self._offsets[pos])
        raise DataError(f"{self.idx_path}: has no entry for record key {key}")

    def _fileno(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            if self._fd is not None:
                # Inherited across fork: close our copy, open a private one (own file offset).
                with contextlib.suppress(OSError):
                    os.close(self._fd)
            try:
                self._fd = os.open(self.rec_path, os.O_RDONLY)
            except OSError as err:
                raise DataError(f"{self.rec_path}: cannot open ({err.strerror})") from None
            self._pid = os.getpid()
        return self._fd

    def _pread(self, n: int, pos: int, key: int, offset: int, what: str) -> bytes:
        data = os.pread(self._fileno(), n, pos)
        if len(data) < n:
            raise DataError(
                f"{self.rec_path}: record key {key} at byte offset {offset}: {what} at byte {pos} needs {n} bytes "
                f"but the file ends after {len(data)}; the .rec is truncated"
            )
        return data

    def read(self, key: int) -> bytes:
        """The full payload of record ``key`` (split parts joined, magic re-inserted)."""
        return self._read_at(self.offset(key), key)

    def _read_at(self, offset: int, key: int) -> bytes:
        where = f"{self.rec_path}: record key {key} at byte offset {offset}"
        parts = []
        pos = offset
        while True:
            magic, lrec = _CHUNK_HEAD.unpack(self._pread(_CHUNK_HEAD.size, pos, key, offset, "chunk header"))
            if magic != MAGIC:
                raise DataError(
                    f"{where}: bad magic 0x{magic:08X} at byte {pos} (expected 0x{MAGIC:08X}); "
                    "the .rec is corrupt or the .idx does not match it"
                )
            cflag, length = lrec >> 29, lrec & _LENGTH_MASK
            if cflag not in ((0, 1) if not parts else (2, 3)):
                raise DataError(
                    f"{where}: unexpected chunk flag {cflag} at byte {pos} "
                    f"({'start' if not parts else 'continuation'} of a record); the .rec is corrupt"
                )
            padded = length + (-length % 4)
            parts.append(self._pread(padded, pos + _CHUNK_HEAD.size, key, offset, "record body")[:length])
            pos += _CHUNK_HEAD.size + padded
            if cflag in (0, 3):
                return _MAGIC_BYTES.join(parts)

    def peek(self, keys: np.ndarray, nbytes: int) -> tuple[np.ndarray, np.ndarray]:
        """First ``nbytes`` of the payload of many records at once, without reading the images.

        Returns ``(heads, lengths)``: heads (N, nbytes) uint8 (zero beyond a record's end) and the
        number of valid bytes per record, ``min(nbytes, record length)``. Gathers through a
        memory map so opening a multi-million-image file stays fast; records whose first chunk is
        shorter than ``nbytes`` because they were split fall back to a full ``read``.
        """
        keys = np.asarray(keys, dtype=np.int64)
        pos = self._positions(keys)
        if (pos < 0).any():
            key = int(keys[pos < 0][0])
            raise DataError(f"{self.idx_path}: has no entry for record key {key}")
        offsets = self._offsets[pos]
        width = _CHUNK_HEAD.size + nbytes
        raw = np.zeros((keys.size, width), dtype=np.uint8)  # (N, 8 + nbytes)
        if keys.size:
            mapped = np.memmap(self.rec_path, dtype=np.uint8, mode="r")
            window = np.arange(width)
            for lo in range(0, keys.size, _PEEK_BATCH):
                at = offsets[lo : lo + _PEEK_BATCH, None] + window  # (batch, width) byte positions
                raw[lo : lo + _PEEK_BATCH] = mapped[np.minimum(at, self._size - 1)]
            del mapped
        words = raw[:, :8].copy().view("<u4")  # (N, 2): magic, lrec
        self._check_magic(keys, offsets, words[:, 0])
        cflag, length = words[:, 1] >> 29, (words[:, 1] & _LENGTH_MASK).astype(np.int64)
        self._check_extent(keys, offsets, cflag, length)
        heads = raw[:, _CHUNK_HEAD.size :]
        lengths = np.minimum(length, nbytes)
        heads[np.arange(nbytes)[None, :] >= lengths[:, None]] = 0
        for i in np.flatnonzero((cflag == 1) & (length < nbytes)):
            full = self._read_at(int(offsets[i]), int(keys[i]))[:nbytes]
            heads[i] = 0
            heads[i, : len(full)] = np.frombuffer(full, dtype=np.uint8)
            lengths[i] = len(full)
        return heads, lengths

    def _check_magic(self, keys: np.ndarray, offsets: np.ndarray, magic: np.ndarray) -> None:
        bad = np.flatnonzero(magic != MAGIC)
        if bad.size:
            i = int(bad[0])
            raise DataError(
                f"{self.rec_path}: record key {int(keys[i])} at byte offset {int(offsets[i])}: bad magic "
                f"0x{int(magic[i]):08X} (expected 0x{MAGIC:08X}); the .rec is corrupt or the .idx does not match it"
            )

    def _check_extent(self, keys: np.ndarray, offsets: np.ndarray, cflag: np.ndarray, length: np.ndarray) -> None:
        bad_flag = np.flatnonzero(cflag > 1)
        if bad_flag.size:
            i = int(bad_flag[0])
            raise DataError(
                f"{self.rec_path}: record key {int(keys[i])} at byte offset {int(offsets[i])}: starts with chunk "
                f"flag {int(cflag[i])} (a continuation); the .idx points into the middle of a record"
            )
        end = offsets + _CHUNK_HEAD.size + length + (-length % 4)
        short = np.flatnonzero(end > self._size)
        if short.size:
            i = int(short[0])
            raise DataError(
                f"{self.rec_path}: record key {int(keys[i])} at byte offset {int(offsets[i])}: needs "
                f"{int(end[i] - offsets[i])} bytes but the file ends at {self._size}; the .rec is truncated"
            )

    def close(self) -> None:
        """Close the file descriptor (it is reopened on the next read)."""
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RecordIOReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_fd"] = None
        state["_pid"] = None
        return state

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


class RecordIOWriter:
    """Write a .rec and its .idx; both appear (atomically renamed) only on a successful close.

    Use as a context manager; an exception inside the block leaves any previous files untouched.
    """

    def __init__(self, rec_path: str | Path, idx_path: str | Path) -> None:
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path)
        with contextlib.ExitStack() as stack:
            # Entered first, renamed last: the new .idx never appears before its .rec.
            idx_tmp = stack.enter_context(atomic_path(self.idx_path))
            rec_tmp = stack.enter_context(atomic_path(self.rec_path))
            self._rec = stack.enter_context(open(rec_tmp, "w+b"))
            self._idx = stack.enter_context(open(idx_tmp, "w", encoding="ascii", newline="\n"))
            self._stack = stack.pop_all()
        self._pos = 0

    def write(self, key: int, record: bytes) -> int:
        """Append one record under ``key``; returns its byte offset in the .rec."""
        key = operator.index(key)  # ints and numpy integers; TypeError for anything else
        framed = frame_record(record)
        offset = self._pos
        self._rec.write(framed)
        self._idx.write(f"{key}\t{offset}\n")
        self._pos += len(framed)
        return offset

    def patch(self, offset: int, record: bytes) -> None:
        """Overwrite the whole record at ``offset`` with one that frames to exactly the same size."""
        framed = frame_record(record)
        self._rec.seek(offset)
        magic, lrec = _CHUNK_HEAD.unpack(self._rec.read(_CHUNK_HEAD.size))
        length = lrec & _LENGTH_MASK
        if magic != MAGIC or lrec >> 29 != 0 or _CHUNK_HEAD.size + length + (-length % 4) != len(framed):
            raise ValueError(f"patch at {offset}: the new record does not frame to the old record's size")
        self._rec.seek(offset)
        self._rec.write(framed)
        self._rec.seek(0, os.SEEK_END)

    def close(self) -> None:
        """Flush and move both files into place."""
        self._stack.close()

    def __enter__(self) -> RecordIOWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stack.__exit__(exc_type, exc, tb)
