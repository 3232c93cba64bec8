"""Property 3: corrupt or hostile inputs through the real CLI.

Each case damages one real file (written by `facekd prepare` or the format writers) and runs the
command a user would run on it. Every one must exit 2 with one error record naming the file and
the record / line, print no traceback, leave no output that looks valid, and run no code from
the file (the hostile files would create a marker file if they were unpickled unsafely; each
test first proves that they would).
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from facekd.data.bins import write_bin
from facekd.data.images import encode_jpeg
from facekd.data.face_rec import write_face_rec
from facekd.data.recordio import IRHeader, RecordIOWriter, pack_record

from tests.faults.conftest import assert_clean_failure, facekd, write_params

pytestmark = pytest.mark.slow


class Exploit:
    """Pickles as ``os.system("touch <marker>")``: unpickling it runs a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _unsafe_load_runs_code(load: Callable[[], object], path: Path, marker: Path) -> None:
    """Prove the hostile file is hostile: loading it unsafely (here) creates the marker."""
    load()
    assert marker.exists(), f"{path} is not hostile after all: an unsafe load did not run its code"
    marker.unlink()


@pytest.fixture(scope="module")
def base(validated_repo: Path) -> Path:
    """Prepared tiny synthetic data in the real formats (read only: cases copy what they damage)."""
    return validated_repo


def _images(n: int, seed: int = 0, size: int = 112) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [encode_jpeg(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def _rec_copy(base: Path, dest: Path) -> Path:
    dest.mkdir(parents=True)
    for name in ("train.rec", "train.idx"):
        shutil.copy(base / "data/prepared" / name, dest / name)
    return dest / "train.rec"


def _offsets(idx: Path) -> dict[int, int]:
    return {int(k): int(v) for k, v in (line.split("\t") for line in idx.read_text().splitlines())}


def _idx_lines(idx: Path) -> list[str]:
    return idx.read_text().splitlines()


# ---- `facekd data info` on damaged RecordIO ------------------------------------------------------


def test_truncated_rec(base: Path, tmp_path: Path) -> None:
    rec = _rec_copy(base, tmp_path / "ds")
    offsets = _offsets(rec.with_suffix(".idx"))
    # Cut inside the body of image key 5 (its header and the index entries before it stay valid).
    with open(rec, "r+b") as fh:
        fh.truncate(offsets[5] + 40)
    proc = facekd("data", "info", str(rec), cwd=tmp_path)
    msg = assert_clean_failure(proc, "train.")
    assert "truncated" in msg and ("line" in msg or "record key" in msg), msg


def test_garbled_rec_record(base: Path, tmp_path: Path) -> None:
    rec = _rec_copy(base, tmp_path / "ds")
    offset = _offsets(rec.with_suffix(".idx"))[3]
    with open(rec, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\xde\xad\xbe\xef" * 4)  # the chunk header (magic, length) of record key 3
    msg = assert_clean_failure(facekd("data", "info", str(rec), cwd=tmp_path), "train.rec", "record key 3")
    assert "bad magic" in msg


@pytest.mark.parametrize("edit, expected", [
    (lambda key, off: f"{key}\t{off + 4}", "record key 3"),        # points inside the record
    (lambda key, off: f"{key}\t{off + 10**9}", "line 4"),         # past the end of the .rec
    (lambda key, off: f"{key}\t12x", "line 4"),                   # not an integer
], ids=["misaligned", "past-end", "not-a-number"])
def test_bad_idx_offset(base: Path, tmp_path: Path, edit, expected: str) -> None:
    rec = _rec_copy(base, tmp_path / "ds")
    idx = rec.with_suffix(".idx")
    lines = _idx_lines(idx)
    key, off = (int(v) for v in lines[3].split("\t"))
    assert key == 3
    lines[3] = edit(key, off)
    idx.write_text("\n".join(lines) + "\n")
    assert_clean_failure(facekd("data", "info", str(rec), cwd=tmp_path), "train.", expected)


def test_undecodable_first_image(tmp_path: Path) -> None:
    images = _images(4)
    images[0] = b"\xff\xd8\xff\xe0" + b"not a jpeg" * 20
    ds = tmp_path / "ds"
    ds.mkdir()
    write_face_rec(ds / "train.rec", ds / "train.idx", zip([0, 0, 1, 1], images, strict=True))
    msg = assert_clean_failure(facekd("data", "info", str(ds / "train.rec"), cwd=tmp_path),
                               "train.rec", "record key 1")
    assert "cannot decode" in msg


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert_clean_failure(facekd("data", "info", str(tmp_path / "empty"), cwd=tmp_path), "empty")


# ---- verification .bin --------------------------------------------------------------------------


def test_hostile_bin_runs_no_code(base: Path, tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    path = tmp_path / "lfw.bin"
    path.write_bytes(pickle.dumps(([b"x", Exploit(marker)], [True]), protocol=2))
    _unsafe_load_runs_code(lambda: pickle.loads(path.read_bytes(), encoding="bytes"), path, marker)

    msg = assert_clean_failure(facekd("data", "info", str(path), cwd=tmp_path), "lfw.bin")
    assert "refused" in msg and "system" in msg
    assert not marker.exists()


def test_truncated_bin(base: Path, tmp_path: Path) -> None:
    path = tmp_path / "synth_lfw.bin"
    blob = (base / "data/eval/synth_lfw.bin").read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    msg = assert_clean_failure(facekd("data", "info", str(path), cwd=tmp_path), "synth_lfw.bin")
    assert "not a readable verification .bin" in msg


# ---- IJB protocol files -------------------------------------------------------------------------


def test_malformed_ijb_pairs(base: Path, tmp_path: Path) -> None:
    root = tmp_path / "ijb"
    shutil.copytree(base / "data/eval/ijb", root)
    pairs = next((root / "meta").glob("*_template_pair_label.txt"))
    lines = pairs.read_text().splitlines()
    lines[2] = lines[2].split()[0] + " two 1"
    pairs.write_text("\n".join(lines) + "\n")
    assert_clean_failure(facekd("data", "info", str(root), cwd=tmp_path), pairs.name, "line 3")


def test_ijb_missing_crop(base: Path, tmp_path: Path) -> None:
    root = tmp_path / "ijb"
    shutil.copytree(base / "data/eval/ijb", root)
    first = (root / "meta").glob("*_face_tid_mid.txt").__next__().read_text().split()[0]
    (root / "loose_crop" / first).unlink()
    assert_clean_failure(facekd("data", "info", str(root), cwd=tmp_path), first)


# ---- `facekd prepare`: nothing half-written -----------------------------------------------------


def _assert_nothing_prepared(ws: Path) -> None:
    leftovers = sorted(p.name for p in (ws / "data").iterdir()) if (ws / "data").exists() else []
    assert leftovers == [], f"prepare left {leftovers} behind after failing"


def test_prepare_rec_truncated(base: Path, tmp_path: Path) -> None:
    rec = _rec_copy(base, tmp_path / "src")
    with open(rec, "r+b") as fh:
        fh.truncate(rec.stat().st_size - 30)  # inside the identity records at the end
    ws = tmp_path / "ws"
    ws.mkdir()
    write_params(ws, {"data": {"source": "rec", "path": str(rec), "eval_path": str(base / "data/eval")}})
    assert_clean_failure(facekd("prepare", cwd=ws), "train.")
    _assert_nothing_prepared(ws)


def test_prepare_folder_empty_and_undecodable(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    empty = tmp_path / "faces"
    empty.mkdir()
    write_params(ws, {"data": {"source": "folder", "path": str(empty), "eval_path": None}})
    assert_clean_failure(facekd("prepare", cwd=ws), "faces")
    _assert_nothing_prepared(ws)

    for name, blobs in {"alice": _images(3, 1), "bob": _images(3, 2)}.items():
        (empty / name).mkdir()
        for i, blob in enumerate(blobs):
            (empty / name / f"{i}.jpg").write_bytes(blob)
    (empty / "bob" / "1.jpg").write_bytes(b"\xff\xd8 broken")
    assert_clean_failure(facekd("prepare", cwd=ws), str(Path("bob") / "1.jpg"))
    _assert_nothing_prepared(ws)


def test_validate_names_bad_records(tmp_path: Path) -> None:
    """Damage past record 1 (decode, size, label gap) passes `prepare` (it links the .rec) and is
    stopped by the `validate` gate, which names the file and every bad record."""
    src = tmp_path / "src"
    src.mkdir()
    images = _images(8)
    images[5] = b"\xff\xd8\xff\xe0" + b"garbage" * 30  # image index 5: undecodable
    images[6] = _images(1, 3, size=100)[0]  # image index 6: 100x100
    labels = [0, 0, 1, 1, 1, 3, 3, 3]  # identity 2 has no image: a label gap
    # The layout without identity records (im2rec lists): record 0 is an image too.
    with RecordIOWriter(src / "train.rec", src / "train.idx") as writer:
        for key, (label, blob) in enumerate(zip(labels, images, strict=True)):
            writer.write(key, pack_record(IRHeader(0, float(label), key, 0), blob))
    ws = tmp_path / "ws"
    ws.mkdir()
    write_params(ws, {"data": {"source": "rec", "path": str(src / "train.rec"), "eval_path": None}})
    facekd("prepare", cwd=ws, check=True)
    msg = assert_clean_failure(facekd("validate", cwd=ws), "train.rec", "index=5", "index=6", "identities")
    assert json.loads((ws / "reports/validation.json").read_text())["success"] is False, msg


# ---- hostile weights and checkpoints ------------------------------------------------------------


def _hostile_torch_file(path: Path, marker: Path) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"step": 3, "model": Exploit(marker)}, path)
    _unsafe_load_runs_code(lambda: torch.load(path, weights_only=False), path, marker)


def test_hostile_checkpoint_runs_no_code(base: Path, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    shutil.copytree(base / "data", ws / "data")
    write_params(ws)
    marker = tmp_path / "PWNED"
    _hostile_torch_file(ws / "checkpoints/teacher/last.pt", marker)
    assert_clean_failure(facekd("train-teacher", cwd=ws), "last.pt")
    assert not marker.exists()
    assert not (ws / "models").exists() and not (ws / "metrics").exists()


def _eval_workspace(base: Path, ws: Path) -> None:
    """data/eval and a (random-weight) models/teacher, as the stages leave them."""
    import torch

    from facekd.models.registry import create_backbone
    from facekd.models.store import save_model_dir

    (ws / "data/eval").mkdir(parents=True)
    shutil.copy(base / "data/eval/synth_lfw.bin", ws / "data/eval")  # one set: the one the cases damage
    write_params(ws)
    torch.manual_seed(0)
    save_model_dir(ws / "models/teacher", create_backbone("iresnet_tiny", embedding_size=16, width=0.125), {})


def test_hostile_weights_run_no_code(base: Path, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    _eval_workspace(base, ws)
    marker = tmp_path / "PWNED"
    _hostile_torch_file(ws / "models/teacher/backbone.pt", marker)
    assert_clean_failure(facekd("evaluate", "teacher", cwd=ws), "backbone.pt")
    assert not marker.exists()
    assert not (ws / "metrics").exists()


@pytest.mark.parametrize("damage", ["undecodable", "wrong-size"])
def test_evaluate_bad_bin(base: Path, tmp_path: Path, damage: str) -> None:
    """The evaluate stage reads the same loader as `data info` (hostile and truncated files are
    covered above); here the damage only evaluation can notice."""
    ws = tmp_path / "ws"
    _eval_workspace(base, ws)
    images = _images(40, size=112 if damage == "undecodable" else 100)
    if damage == "undecodable":
        images[5] = b"\x89PNG junk"
    write_bin(ws / "data/eval/synth_lfw.bin", images, [True, False] * 10)
    assert_clean_failure(facekd("evaluate", "teacher", cwd=ws), "synth_lfw.bin",
                         "image 5" if damage == "undecodable" else "112x112")
    assert not (ws / "metrics").exists() and not (ws / "plots").exists()
