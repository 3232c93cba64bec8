"""Verification .bin files: round trip, Python 2 files, and refusing pickles that would run code."""
from __future__ import annotations

import os
import pickle
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from facekd.data.bins import decode_bin, load_bin, write_bin
from facekd.data.images import encode_jpeg
from facekd.errors import DataError


def jpeg(seed: int, size: int = 12) -> bytes:
    rng = np.random.default_rng(seed)
    return encode_jpeg(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def py2_pickle(images: list[bytes], issame: list[bool]) -> bytes:
    """What Python 2's pickle.dump((bins, issame), f, protocol=2) produces: str as BINSTRING opcodes."""
    out = b"\x80\x02]("  # PROTO 2, EMPTY_LIST, MARK
    for img in images:
        out += (b"U" + bytes([len(img)]) if len(img) < 256 else b"T" + struct.pack("<I", len(img))) + img
    out += b"e](" + b"".join(b"\x88" if s else b"\x89" for s in issame) + b"e"  # APPENDS; NEWTRUE/NEWFALSE
    return out + b"\x86."  # TUPLE2, STOP


def test_round_trip(tmp_path: Path) -> None:
    images, issame = [jpeg(i) for i in range(6)], [True, False, True]
    path = tmp_path / "lfw.bin"
    write_bin(path, images, issame)
    loaded, same = load_bin(path)
    assert loaded == images and same.dtype == bool and same.tolist() == issame
    pixels, same2 = decode_bin(path)
    assert pixels.shape == (6, 12, 12, 3) and pixels.dtype == np.uint8 and same2.tolist() == issame
    assert pickle.loads(path.read_bytes()) == (images, issame)  # a plain pickle anyone can read


def test_python2_file_loads(tmp_path: Path) -> None:
    images = [b"\xff\xd8" + bytes(range(200)), jpeg(1)]  # short and long BINSTRING forms
    path = tmp_path / "agedb_30.bin"
    path.write_bytes(py2_pickle(images, [True]))
    loaded, same = load_bin(path)
    assert loaded == images and same.tolist() == [True]


def test_numpy_bools_and_text_entries_load(tmp_path: Path) -> None:
    images = [jpeg(0), jpeg(1), jpeg(2), jpeg(3)]
    path = tmp_path / "cfp_fp.bin"
    # numpy bool scalars in the issame list, and images stored as latin1 text instead of bytes.
    payload = ([img.decode("latin1") for img in images[:2]] + images[2:], [np.bool_(True), np.bool_(False)])
    path.write_bytes(pickle.dumps(payload, protocol=2))
    loaded, same = load_bin(path)
    assert loaded == images and same.tolist() == [True, False]
    path.write_bytes(pickle.dumps((images, np.array([False, True])), protocol=4))
    assert load_bin(path)[1].tolist() == [False, True]


class RunsShell:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class RunsSubprocess(RunsShell):
    def __reduce__(self):
        return subprocess.call, (["touch", str(self.marker)],)


class BuildsItself(RunsShell):
    def __reduce__(self):
        return BuildsItself, (self.marker,)


def hostile_pickles(marker: Path) -> dict[str, bytes]:
    return {
        "os.system": f"cos\nsystem\n(S'touch {marker}'\ntR.".encode(),
        "posix.system": pickle.dumps(([RunsShell(marker)], [True]), protocol=2),
        "subprocess.call": pickle.dumps(RunsSubprocess(marker), protocol=4),
        "builtins.eval": f"cbuiltins\neval\n(S'open(\"{marker}\", \"w\")'\ntR.".encode(),
        "builtins.getattr": b"\x80\x02cbuiltins\ngetattr\n.",
        "BuildsItself": pickle.dumps(BuildsItself(marker), protocol=2),
    }


@pytest.mark.parametrize("refused", list(hostile_pickles(Path("x"))))
def test_hostile_pickles_are_refused_without_side_effects(tmp_path: Path, refused: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.bin"
    path.write_bytes(hostile_pickles(marker)[refused])
    with pytest.raises(DataError, match=rf"evil\.bin: refused to load: the pickle references \S*{refused}"):
        load_bin(path)
    assert not marker.exists()


def test_codecs_encode_only_as_latin1(tmp_path: Path) -> None:
    path = tmp_path / "odd.bin"
    path.write_bytes(b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x05\x00\x00\x00rot13\x86R.")
    with pytest.raises(DataError, match=r"odd\.bin: not a readable verification \.bin"):
        load_bin(path)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (([b"a", b"b", b"c"], [True]), r"3 images for 1 pair labels"),
        (([b"a"],), r"expected a pickled \(images, issame\) pair"),
        (([b"a", b"b"], [2]), r"issame entry 0 is 2"),
        (([1, 2], [True]), r"image 0 \(pair 0\) is a int"),
    ],
)
def test_malformed_content(tmp_path: Path, payload, message: str) -> None:
    path = tmp_path / "lfw.bin"
    path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(DataError, match=rf"lfw\.bin: {message}"):
        load_bin(path)


def test_truncated_and_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "lfw.bin"
    write_bin(path, [jpeg(0), jpeg(1)], [True])
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(DataError, match=r"lfw\.bin: not a readable verification \.bin"):
        load_bin(path)
    with pytest.raises(DataError, match=r"calfw\.bin: verification \.bin not found"):
        load_bin(tmp_path / "calfw.bin")


def test_decode_errors_name_the_pair(tmp_path: Path) -> None:
    path = tmp_path / "cplfw.bin"
    write_bin(path, [jpeg(0), jpeg(1), jpeg(2), b"broken"], [True, False])
    with pytest.raises(DataError, match=r"cplfw\.bin: image 3 \(pair 1\)"):
        decode_bin(path)
    write_bin(path, [jpeg(0), jpeg(1, size=16)], [True])
    with pytest.raises(DataError, match=r"cplfw\.bin: image 1 \(pair 0\) is 16x16"):
        decode_bin(path)


def test_write_rejects_mismatched_counts(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="3 images for 1 pairs"):
        write_bin(tmp_path / "x.bin", [b"a", b"b", b"c"], [True])
    assert not (tmp_path / "x.bin").exists()
