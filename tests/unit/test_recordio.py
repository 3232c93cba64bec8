"""RecordIO (.rec/.idx) and the insightface layout, checked against an independent spec-level codec
written here with struct (the format as FORMATS.md states it), not against our own code."""
from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from facekd.data.images import encode_jpeg
from facekd.data.face_rec import FaceRecordFile, write_face_rec
from facekd.data.recordio import IRHeader, RecordIOReader, RecordIOWriter, pack_record, unpack_record
from facekd.errors import DataError

MAGIC_BYTES = struct.pack("<I", 0xCED7230A)


# ---------- an independent codec, straight from the format description ----------

def spec_frame(payload: bytes) -> bytes:
    """dmlc WriteRecord: split where the magic sits at 4-aligned offsets, pad the end to 4."""
    out, start, cuts = b"", 0, []
    for i in range(0, len(payload) - 3, 4):
        if payload[i : i + 4] == MAGIC_BYTES:
            cuts.append(i)
    for n, cut in enumerate(cuts):
        body = payload[start:cut]
        out += struct.pack("<II", 0xCED7230A, ((1 if n == 0 else 2) << 29) | len(body)) + body
        start = cut + 4
    body = payload[start:]
    out += struct.pack("<II", 0xCED7230A, ((3 if cuts else 0) << 29) | len(body)) + body
    return out + b"\0" * (-len(body) % 4)


def spec_payload(label, image: bytes, rec_id: int = 0) -> bytes:
    """IRHeader '<IfQQ' (+ float32 labels when flag > 0) + image."""
    if isinstance(label, (list, tuple)):
        return struct.pack("<IfQQ", len(label), 0.0, rec_id, 0) + struct.pack(f"<{len(label)}f", *label) + image
    return struct.pack("<IfQQ", 0, float(label), rec_id, 0) + image


def spec_write(rec: Path, idx: Path, records: list[tuple[int, bytes]]) -> None:
    data, lines = b"", ""
    for key, payload in records:
        lines += f"{key}\t{len(data)}\n"
        data += spec_frame(payload)
    rec.write_bytes(data)
    idx.write_text(lines)


def spec_read_all(rec: Path) -> list[tuple[int, bytes]]:
    """Walk a .rec from the start: (offset, joined payload) per record."""
    data, pos, out = rec.read_bytes(), 0, []
    while pos < len(data):
        start, parts = pos, []
        while True:
            magic, lrec = struct.unpack_from("<II", data, pos)
            assert magic == 0xCED7230A
            cflag, length = lrec >> 29, lrec & ((1 << 29) - 1)
            parts.append(data[pos + 8 : pos + 8 + length])
            pos += 8 + length + (-length % 4)
            if cflag in (0, 3):
                break
        out.append((start, MAGIC_BYTES.join(parts)))
    return out


def spec_unpack(payload: bytes):
    flag, label, rec_id, _ = struct.unpack_from("<IfQQ", payload)
    if flag:
        return list(struct.unpack_from(f"<{flag}f", payload, 24)), payload[24 + 4 * flag :]
    return label, payload[24:]


# ---------- fixtures ----------

def tiny_jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return encode_jpeg(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))


MAGIC_IMAGE = b"\xff\xd8" + b"\0\0" + MAGIC_BYTES * 2 + b"xyz" + MAGIC_BYTES + b"q"  # aligned after the 24-byte header


def insightface_records(labels: list[int], images: list[bytes], ranges: list[tuple[int, int]] | None = None):
    """Spec-level insightface layout: header [a, b], images 1..a-1, identity records."""
    a = len(images) + 1
    classes = sorted(set(labels))
    if ranges is None:
        ranges = [(1 + labels.index(c), 1 + len(labels) - labels[::-1].index(c)) for c in classes]
    records = [(0, spec_payload([float(a), float(a + len(ranges))], b""))]
    records += [(k + 1, spec_payload(float(lab), img, k + 1)) for k, (lab, img) in enumerate(zip(labels, images))]
    records += [(a + c, spec_payload([float(s), float(e)], b"", a + c)) for c, (s, e) in enumerate(ranges)]
    return records


@pytest.fixture()
def paths(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "train.rec", tmp_path / "train.idx"


# ---------- round trips ----------

def test_write_face_rec_round_trip(paths) -> None:
    rec, idx = paths
    labels = [0, 0, 1, 2, 2, 2]
    images = [tiny_jpeg(i) for i in range(5)] + [MAGIC_IMAGE]
    assert write_face_rec(rec, idx, iter(zip(labels, images))) == {"num_images": 6, "num_classes": 3}
    faces = FaceRecordFile(rec)
    assert (faces.num_images, faces.num_classes, len(faces)) == (6, 3, 6)
    assert faces.labels.dtype == np.int64 and faces.labels.tolist() == labels
    assert [faces.image_bytes(i) for i in range(6)] == images
    assert faces.image(0).shape == (8, 8, 3)
    assert faces.identity_ranges.tolist() == [[1, 3], [3, 4], [4, 7]]


def test_our_writer_bytes_parse_by_hand(paths) -> None:
    rec, idx = paths
    labels, images = [0, 1, 1], [tiny_jpeg(1), MAGIC_IMAGE, tiny_jpeg(2)]
    write_face_rec(rec, idx, zip(labels, images))
    records = spec_read_all(rec)
    idx_rows = [tuple(map(int, line.split("\t"))) for line in idx.read_text().splitlines()]
    assert idx_rows == [(key, off) for key, (off, _) in enumerate(records)]  # keys 0..6, offsets match
    assert spec_unpack(records[0][1]) == ([4.0, 6.0], b"")  # images 1..3, identities 4..5
    assert [spec_unpack(p) for _, p in records[1:4]] == list(zip([0.0, 1.0, 1.0], images))
    assert [spec_unpack(p)[0] for _, p in records[4:]] == [[1.0, 2.0], [2.0, 4.0]]
    # The magic inside image 2 forced a split record: first/middle/last chunk flags are present.
    raw = rec.read_bytes()
    flags = {struct.unpack_from("<I", raw, off + 4)[0] >> 29 for off, _ in records}
    assert flags == {0, 1}
    assert MAGIC_BYTES + struct.pack("<I", 2 << 29) in raw  # the empty middle part


def test_spec_written_file_reads_correctly(paths) -> None:
    rec, idx = paths
    labels = [0, 0, 1, 1, 1, 2]
    images = [tiny_jpeg(i) for i in range(5)] + [MAGIC_IMAGE]
    spec_write(rec, idx, insightface_records(labels, images))
    faces = FaceRecordFile(rec, idx)
    assert faces.labels.tolist() == labels and faces.num_classes == 3
    assert [faces.image_bytes(i) for i in range(6)] == images


def test_label_arrays_use_first_element(paths) -> None:
    rec, idx = paths
    images = [tiny_jpeg(i) for i in range(3)]
    records = insightface_records([0, 1, 1], images)
    # flag > 0 image records: [class, extra attributes...] as some insightface tools write them.
    records[1:4] = [(k, spec_payload([float(lab), 0.25, 7.0], img, k)) for k, lab, img in zip((1, 2, 3), (0, 1, 1), images)]
    spec_write(rec, idx, records)
    faces = FaceRecordFile(rec)
    assert faces.labels.tolist() == [0, 1, 1]
    assert faces.image_bytes(2) == images[2]


def test_flag0_header_means_every_key_is_an_image(paths) -> None:
    rec, idx = paths
    images = [tiny_jpeg(i) for i in range(4)]
    spec_write(rec, idx, [(k, spec_payload(float(lab), img, k)) for k, (lab, img) in enumerate(zip([2, 0, 1, 2], images))])
    faces = FaceRecordFile(rec)
    assert faces.num_images == 4 and faces.num_classes == 3
    assert faces.labels.tolist() == [2, 0, 1, 2] and faces.identity_ranges is None
    assert faces.image_bytes(0) == images[0]


def test_generic_reader_writer_with_arrays_and_split_records(paths) -> None:
    rec, idx = paths
    payloads = {5: MAGIC_BYTES * 3, 9: b"abc", 2: b"", 7: b"\0\0" + MAGIC_BYTES + MAGIC_BYTES}
    with RecordIOWriter(rec, idx) as writer:
        for key, data in payloads.items():
            writer.write(key, data)
    assert [p for _, p in spec_read_all(rec)] == list(payloads.values())
    reader = RecordIOReader(rec, idx)
    assert reader.keys == [5, 9, 2, 7]
    assert {k: reader.read(k) for k in payloads} == payloads
    with pytest.raises(DataError, match=r"train\.idx: has no entry for record key 3"):
        reader.read(3)


def test_pack_unpack_header_matches_spec() -> None:
    packed = pack_record(IRHeader(0, np.array([3.0, 1.5], np.float32), 11, 4), b"img")
    assert packed == struct.pack("<IfQQ2f", 2, 0.0, 11, 4, 3.0, 1.5) + b"img"
    header, payload = unpack_record(packed, "x")
    assert header.flag == 2 and header.label.tolist() == [3.0, 1.5] and (header.id, header.id2) == (11, 4)
    assert payload == b"img"
    assert unpack_record(pack_record(IRHeader(9, 4.0, 1, 0), b"z"), "x") == (IRHeader(0, 4.0, 1, 0), b"z")


def test_reader_survives_fork_and_pickle(paths) -> None:
    rec, idx = paths
    write_face_rec(rec, idx, [(0, tiny_jpeg(0)), (0, tiny_jpeg(1))])
    faces = FaceRecordFile(rec)
    expected = faces.image_bytes(1)  # opens the fd in the parent
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: must reopen its own fd and read the same bytes
        os.write(write_fd, b"1" if faces.image_bytes(1) == expected else b"0")
        os._exit(0)
    os.close(write_fd)
    os.waitpid(pid, 0)
    assert os.read(read_fd, 1) == b"1"
    assert pickle.loads(pickle.dumps(faces)).image_bytes(1) == expected


# ---------- bad input ----------

def _three_records(paths) -> RecordIOReader:
    rec, idx = paths
    with RecordIOWriter(rec, idx) as writer:
        for key in range(3):
            writer.write(key, spec_payload(0.0, b"x" * 40))
    return RecordIOReader(rec, idx)


def test_truncated_rec(paths) -> None:
    rec, idx = paths
    offset = _three_records(paths).offset(2)
    rec.write_bytes(rec.read_bytes()[:-10])
    with pytest.raises(DataError, match=rf"train\.rec: record key 2 at byte offset {offset}.*truncated"):
        RecordIOReader(rec, idx).read(2)


def test_truncated_image_caught_at_open(paths) -> None:
    rec, idx = paths
    spec_write(rec, idx, [(k, spec_payload(0.0, tiny_jpeg(k))) for k in range(3)])
    rec.write_bytes(rec.read_bytes()[:-12])
    with pytest.raises(DataError, match=r"train\.rec: record key 2 at byte offset \d+.*truncated"):
        FaceRecordFile(rec)


def test_wrong_magic(paths) -> None:
    rec, idx = paths
    offset = _three_records(paths).offset(1)
    raw = bytearray(rec.read_bytes())
    raw[offset : offset + 4] = b"JUNK"
    rec.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=rf"train\.rec: record key 1 at byte offset {offset}: bad magic"):
        RecordIOReader(rec, idx).read(1)
    with pytest.raises(DataError, match=rf"train\.rec: record key 1 at byte offset {offset}: bad magic"):
        FaceRecordFile(rec)


def test_idx_offset_past_end(paths) -> None:
    rec, idx = paths
    _three_records(paths)
    idx.write_text(idx.read_text().replace("\n2\t", "\n2\t9") + "")
    with pytest.raises(DataError, match=r"train\.idx: line 3: key 2 points at byte offset 9\d+, past the end"):
        RecordIOReader(rec, idx)


@pytest.mark.parametrize("bad", ["1\tabc", "1", "1\t2\t3", "x\t40"])
def test_bad_idx_line(paths, bad: str) -> None:
    rec, idx = paths
    _three_records(paths)
    lines = idx.read_text().splitlines()
    lines[1] = bad
    idx.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"train\.idx: line 2"):
        RecordIOReader(rec, idx)


def test_duplicate_idx_key(paths) -> None:
    rec, idx = paths
    _three_records(paths)
    idx.write_text(idx.read_text().replace("\n2\t", "\n1\t"))
    with pytest.raises(DataError, match=r"train\.idx: key 1 appears twice \(lines 2 and 3\)"):
        RecordIOReader(rec, idx)


def test_missing_files(paths) -> None:
    rec, idx = paths
    _three_records(paths)
    idx.unlink()
    with pytest.raises(DataError, match=r"train\.idx: RecordIO index not found"):
        FaceRecordFile(rec)
    with pytest.raises(DataError, match=r"other\.rec: RecordIO data file not found"):
        FaceRecordFile(rec.with_name("other.rec"))


def test_undecodable_image_names_record(paths) -> None:
    rec, idx = paths
    write_face_rec(rec, idx, [(0, tiny_jpeg(0)), (1, b"\xff\xd8garbage"), (1, tiny_jpeg(2))])
    faces = FaceRecordFile(rec)
    with pytest.raises(DataError, match=r"train\.rec: record key 2 \(image 1\)"):
        faces.image(1)


@pytest.mark.parametrize("label", [1.5, -1.0, float("nan")])
def test_non_integer_label(paths, label: float) -> None:
    rec, idx = paths
    spec_write(rec, idx, [(k, spec_payload(lab, tiny_jpeg(k))) for k, lab in enumerate([0.0, label, 1.0])])
    with pytest.raises(DataError, match=r"train\.rec: record key 1: label .* is not a non-negative integer"):
        FaceRecordFile(rec)


def test_label_out_of_identity_range(paths) -> None:
    rec, idx = paths
    records = insightface_records([0, 1, 1], [tiny_jpeg(i) for i in range(3)])
    records[2] = (2, spec_payload(5.0, tiny_jpeg(1), 2))  # only identities 0..1 exist
    spec_write(rec, idx, records)
    with pytest.raises(DataError, match=r"train\.rec: record key 2: label 5 is out of range"):
        FaceRecordFile(rec)


def test_label_disagreeing_with_identity_record(paths) -> None:
    rec, idx = paths
    records = insightface_records([0, 1, 1], [tiny_jpeg(i) for i in range(3)], ranges=[(1, 3), (3, 4)])
    spec_write(rec, idx, records)
    with pytest.raises(DataError, match=r"train\.rec: record key 2: label 1 but identity record 4"):
        FaceRecordFile(rec)


def test_identity_records_not_tiling_images(paths) -> None:
    rec, idx = paths
    records = insightface_records([0, 1, 1], [tiny_jpeg(i) for i in range(3)], ranges=[(1, 2), (3, 4)])
    spec_write(rec, idx, records)
    with pytest.raises(DataError, match=r"train\.rec: record key 5: identity records are inconsistent"):
        FaceRecordFile(rec)


def test_header_pointing_past_idx(paths) -> None:
    rec, idx = paths
    records = insightface_records([0, 1], [tiny_jpeg(0), tiny_jpeg(1)])
    spec_write(rec, idx, records[:-1])  # last identity record missing
    with pytest.raises(DataError, match=r"train\.idx: has no record key 4"):
        FaceRecordFile(rec)


@pytest.mark.parametrize(("labels", "bad_item"), [([0, 2], 1), ([1], 0), ([0, 1, 0], 2), ([0, True], 1)])
def test_writer_rejects_ungrouped_labels_and_leaves_no_files(paths, labels, bad_item) -> None:
    rec, idx = paths
    with pytest.raises(DataError, match=rf"item {bad_item}"):
        write_face_rec(rec, idx, [(lab, tiny_jpeg(0)) for lab in labels])
    assert list(rec.parent.iterdir()) == []


def test_writer_rejects_empty_input(paths) -> None:
    rec, idx = paths
    with pytest.raises(DataError, match="no images"):
        write_face_rec(rec, idx, [])
    assert not rec.exists() and not idx.exists()


def test_failed_write_keeps_previous_files(paths) -> None:
    rec, idx = paths
    write_face_rec(rec, idx, [(0, tiny_jpeg(0))])
    before = rec.read_bytes(), idx.read_bytes()
    with pytest.raises(RuntimeError):
        with RecordIOWriter(rec, idx) as writer:
            writer.write(0, b"new")
            raise RuntimeError("interrupted")
    assert (rec.read_bytes(), idx.read_bytes()) == before
    assert sorted(p.name for p in rec.parent.iterdir()) == ["train.idx", "train.rec"]
