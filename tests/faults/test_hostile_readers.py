"""Class 3 (memory bombs) and class 8 (tracebacks instead of errors) of issue 14, through the readers.

Memory bombs run in a child process under RLIMIT_AS = 1.5 GiB (tests/faults/hostile.py): every
forged file must be refused with a DataError naming the file and the record, inside that bound.
The traceback cases run in this process on generated variants (hypothesis) and must end in a
DataError, never another exception.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from facekd.data.bins import decode_bin, load_bin, write_bin
from facekd.data.ijb_protocol import load_ijb
from facekd.data.images import decode_image
from facekd.data.face_rec import FaceRecordFile
from facekd.errors import DataError

from tests.faults.conftest import assert_clean_failure
from tests.faults.hostile import (
    FACEKD,
    FORGERS,
    LIMIT_AS,
    forged_jpeg,
    good_jpeg,
    read_bounded,
    run_bounded,
    write_folder,
    write_pickle,
    write_rec,
)

pytestmark = pytest.mark.slow

FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# Declared sizes: each over max_image_pixels (2**24) or over max_pixels_per_byte for a ~650-byte file.
JPEG_SIZES = [(30000, 30000), (65535, 65535), (65535, 300), (30, 65535), (4096, 4097), (2000, 1500)]
OTHER_SIZES = [(30000, 30000), (100000, 20), (16383, 16383), (3000, 1000)]  # webp: 14-bit sizes
CASES = [(fmt, size) for fmt in FORGERS for size in (JPEG_SIZES if fmt == "jpeg" else OTHER_SIZES)
         if fmt != "webp" or max(size) <= 16383]


def _assert_refused(results: list[dict], *fragments: str) -> None:
    """Refused from the header, before decoding: over a limit, or (a .bin) unlike image 0's size."""
    for result in results:
        assert "error" in result, f"{result['path']}: not refused: {result}"
        for fragment in fragments:
            assert fragment in result["error"], f"{fragment!r} not in: {result['error']}"
        assert "refused before decoding" in result["error"] or "must have the same size" in result["error"], result


def _forged(fmt: str, size: tuple[int, int]) -> bytes:
    return FORGERS[fmt](*size)


def test_forged_headers_are_read_right() -> None:
    """The header parser sees what the forger wrote, in every format (else the rest proves nothing)."""
    from facekd.data.images import image_size

    for fmt, size in CASES:
        assert image_size(_forged(fmt, size)) == size, (fmt, size)
    assert image_size(forged_jpeg(30000, 30000, progressive=True)) == (30000, 30000)


def test_image_bombs_in_a_rec_refused_within_bound(tmp_path: Path) -> None:
    paths = []
    for n, (fmt, size) in enumerate(CASES):
        images = [good_jpeg(i) for i in range(4)]
        images[n % 4] = _forged(fmt, size)  # the bomb at a different record each time
        paths.append(write_rec(tmp_path / f"{n}" / "train.rec", images))
    results, peak = read_bounded("rec", paths)
    _assert_refused(results, "train.rec: record key", "declares")
    for n, result in enumerate(results):
        assert f"record key {n % 4 + 1} " in result["error"], result["error"]
    assert peak < LIMIT_AS / 2**20


def test_image_bombs_in_a_bin_refused_within_bound(tmp_path: Path) -> None:
    paths = []
    for n, (fmt, size) in enumerate(CASES):
        images = [good_jpeg(i) for i in range(4)]
        images[n % 4] = _forged(fmt, size)
        paths.append(tmp_path / f"{n}.bin")
        write_bin(paths[-1], images, [True, False])
    results, _ = read_bounded("bin", paths)
    _assert_refused(results, ".bin: image")
    for n, result in enumerate(results):
        assert f"image {n % 4} (pair {n % 4 // 2})" in result["error"], result["error"]


def test_image_bombs_in_identity_folders_refused_within_bound(tmp_path: Path) -> None:
    paths = []
    for n, (fmt, size) in enumerate(CASES):
        ext = {"jpeg": "jpg"}.get(fmt, fmt)
        paths.append(write_folder(tmp_path / f"{n}", {"a/0.jpg": good_jpeg(0), f"b/bomb.{ext}": _forged(fmt, size)}))
    results, _ = read_bounded("folder", paths)
    _assert_refused(results, "bomb.", "declares")


@pytest.mark.parametrize("container", ["rec", "bin", "folder"])
def test_data_info_on_a_629_byte_30000x30000_jpeg_exits_2_within_bound(tmp_path: Path, container: str) -> None:
    """The issue's example end to end: `facekd data info` at 5.4 GB RSS before."""
    bomb = forged_jpeg(30000, 30000)
    if container == "rec":
        target = write_rec(tmp_path / "d" / "train.rec", [bomb, good_jpeg(1)])
    elif container == "bin":
        target = tmp_path / "lfw.bin"
        write_bin(target, [bomb, good_jpeg(1)], [True])
    else:
        target = write_folder(tmp_path / "faces", {"a/bomb.jpg": bomb, "b/1.jpg": good_jpeg(1)})
    rc, out, err, peak = run_bounded([FACEKD, "data", "info", str(target)])
    proc = type("Proc", (), {"returncode": rc, "stdout": out, "stderr": err})
    assert_clean_failure(proc, target.name if container != "folder" else "bomb.jpg", "30000x30000")
    assert peak < LIMIT_AS / 2**20


@pytest.mark.parametrize("claimed", [4e8, 3.9e9, 1e12, 2.5e14])
def test_rec_header_claiming_huge_identity_counts_refused(tmp_path: Path, claimed: float) -> None:
    """Record 0's [a, b): b - a identities (or a - 1 images) claimed by a 2-KB file."""
    headers = [(3, claimed), (1000, claimed), (claimed, claimed + 5), (claimed / 2, claimed)]
    paths = [write_rec(tmp_path / f"{n}" / "train.rec", [good_jpeg(0, 8), good_jpeg(1, 8)], header=header)
             for n, header in enumerate(headers)]
    results, peak = read_bounded("rec", paths)
    for result in results:
        assert "error" in result and "has no record key" in result["error"], result
        assert "header" in result["error"]
    assert peak < 1024, f"{peak:.0f} MiB to refuse a 2-KB file"


# ---- .bin pickle bombs ---------------------------------------------------------------------------

def _memo_bomb(kind: str, repeats: int, size: int) -> tuple[list, list]:
    """One value referenced ``repeats`` times: pickled once, then fetched from the memo."""
    value = {"bytes": bytes(size), "bytearray": bytearray(size), "str": "x" * size,
             "ndarray": np.zeros(size, np.uint8)}[kind]
    return [value] * repeats, [True, False] * (repeats // 2)


def _reduce_bomb(func: bytes, arg: bytes) -> bytes:
    """(images, issame) where images = [func(arg)] * 3000, each call rebuilt from memoised func and arg."""
    body = b"\x80\x02(" + func + b"q\x01" + arg + b"q\x02"  # memo 1: the callable, memo 2: its argument
    call = b"h\x01h\x02\x85R"  # BINGET func, BINGET arg, TUPLE1, REDUCE
    return body + b"0" * 2 + b"](" + call * 3000 + b"e]\x86."  # POP the two, list of calls, empty issame


def _bin_bombs(tmp_path: Path) -> list[Path]:
    paths = []
    for kind in ("bytes", "bytearray", "str", "ndarray"):
        for protocol in (2, 4, 5):
            for repeats, size in ((20000, 50_000), (400_000, 4_000)):
                paths.append(write_pickle(tmp_path / f"memo-{kind}-{protocol}-{repeats}.bin",
                                          _memo_bomb(kind, repeats, size), protocol))
    big = b"X" + struct.pack("<I", 1_000_000) + b"\0" * 1_000_000  # BINUNICODE of 1 MB
    for name, func, arg in [
        ("bytes-of-str", b"c_codecs\nencode\n", big),  # encode(str) needs 2 args: the TypeError is caught
        ("bytearray-int", b"c__builtin__\nbytearray\n", b"J\x00\x00\x00\x40"),  # bytearray(2**30)
        ("bytes-int", b"c__builtin__\nbytes\n", b"J\x00\x00\x00\x40"),
        ("list-of-str", b"c__builtin__\nlist\n", big),  # list("x" * 1e6): 8 MB a call
        ("bytearray-of-bytes", b"c__builtin__\nbytearray\n", b"B" + struct.pack("<I", 1_000_000) + bytes(1_000_000)),
    ]:
        paths.append(tmp_path / f"reduce-{name}.bin")
        paths[-1].write_bytes(_reduce_bomb(func, arg))
    reconstruct = b"cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\n(J\x00\x00\x01\x00J\x00\x00\x01\x00tC\x01bt"
    paths.append(tmp_path / "reconstruct-64GB.bin")  # ndarray of shape (65536, 65536): 4 GB per call
    paths[-1].write_bytes(b"\x80\x02" + reconstruct + b"R](" + b"e\x86.")
    return paths


def _real_bins(tmp_path: Path) -> list[Path]:
    """Files a real tool writes (Python 3 protocols 2-5, a few repeated images): they must load."""
    images = [good_jpeg(i) for i in range(6)] + [good_jpeg(0)] * 2
    return [write_pickle(tmp_path / f"real-p{protocol}.bin", (images, [True, False, True, False]), protocol)
            for protocol in (2, 3, 4, 5)]


def test_bin_pickle_bombs_refused_within_bound(tmp_path: Path) -> None:
    real = _real_bins(tmp_path)
    results, peak = read_bounded("bin-load", [*real, *_bin_bombs(tmp_path)])
    assert all(r.get("ok") for r in results[: len(real)]), results[: len(real)]
    for result in results[len(real):]:
        assert "error" in result, f"{Path(result['path']).name}: not refused: {result}"
        name = Path(result["path"]).name
        if not name.startswith("reduce-bytes-of-str"):  # its call fails on its own (wrong arguments)
            assert "max_bin_expansion" in result["error"] and name in result["error"], result["error"]
    assert peak < LIMIT_AS / 2**20


def test_bin_repeating_a_forged_image_refused_before_decoding(tmp_path: Path) -> None:
    """Each reference passes the per-image limits; together they would decode to gigabytes."""
    paths = []
    for width, height, repeats in ((1000, 1000, 1200), (1200, 1000, 600), (700, 700, 1300)):
        image = forged_jpeg(width, height)
        paths.append(tmp_path / f"{width}x{height}x{repeats}.bin")
        write_bin(paths[-1], [image] * repeats, [True, False] * (repeats // 4))
    results, peak = read_bounded("bin", paths)
    for result in results:
        assert "error" in result and "max_decode_expansion" in result["error"], result
    assert peak < LIMIT_AS / 2**20


# ---- class 8: errors, not tracebacks (in process, generated variants) -----------------------------

@pytest.fixture(scope="module")
def small_rec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_rec(tmp_path_factory.mktemp("rec") / "train.rec", [good_jpeg(i, 16) for i in range(4)])


def _with_idx_line(small_rec: Path, tmp: Path, line: int, key: int, offset: int) -> Path:
    rec = tmp / "train.rec"
    rec.write_bytes(small_rec.read_bytes())
    lines = small_rec.with_suffix(".idx").read_text().splitlines()
    lines[line] = f"{key}\t{offset}"
    rec.with_suffix(".idx").write_text("\n".join(lines) + "\n")
    return rec


_INT = st.one_of(st.none(), st.integers(-2**64, 2**64), st.integers(2**63 - 64, 2**63 + 8), st.integers(-8, 4096))


@FUZZ
@given(line=st.integers(0, 6), key=_INT, offset=_INT)
@example(line=1, key=None, offset=2**63 - 1)
@example(line=0, key=None, offset=2**63 - 5)
@example(line=3, key=2**63, offset=None)
def test_idx_lines_anywhere_give_a_data_error(small_rec: Path, tmp_path_factory, line: int, key: int | None,
                                              offset: int | None) -> None:
    """Any key and byte offset on any .idx line (None: left as written): read, or a DataError."""
    old_key, old_offset = map(int, small_rec.with_suffix(".idx").read_text().splitlines()[line].split())
    rec = _with_idx_line(small_rec, tmp_path_factory.mktemp("idx"), line,
                         old_key if key is None else key, old_offset if offset is None else offset)
    _read_all_or_data_error(rec)


def _read_all_or_data_error(rec: Path) -> None:
    try:
        faces = FaceRecordFile(rec)
        for i in range(faces.num_images):
            faces.image(i)
    except DataError as err:
        assert "train.idx" in str(err) or "train.rec" in str(err)


_SCALAR = st.one_of(st.booleans(), st.integers(-3, 3), st.floats(allow_nan=True), st.text(max_size=3), st.none())
_ISSAME = st.recursive(_SCALAR, lambda inner: st.lists(inner, max_size=4), max_leaves=12)


@FUZZ
@given(issame=st.lists(_ISSAME, min_size=1, max_size=6))
@example(issame=[[True], [True, False]])
@example(issame=[True, [False]])
def test_bin_with_any_issame_list_gives_a_data_error(tmp_path_factory, issame: list) -> None:
    path = tmp_path_factory.mktemp("bin") / "lfw.bin"
    write_pickle(path, ([good_jpeg(0, 8)] * (2 * len(issame)), issame))
    flat = all(isinstance(v, bool) or (isinstance(v, int) and v in (0, 1)) for v in issame)
    if flat:
        assert load_bin(path)[1].size == len(issame)
    else:
        with pytest.raises(DataError, match=r"lfw\.bin: .*issame"):
            load_bin(path)


@pytest.mark.parametrize("issame", [[True] * 12, [False] * 12, [1] * 30])
def test_verifying_an_all_genuine_or_all_impostor_bin_names_the_file(tmp_path: Path, issame: list) -> None:
    """Reading its images is fine (export's parity check does); scoring it is refused."""
    from facekd.data.bins import require_both_kinds

    path = tmp_path / "agedb_30.bin"
    write_pickle(path, ([good_jpeg(i) for i in range(2 * len(issame))], issame))
    _, labels = decode_bin(path)
    with pytest.raises(DataError, match=r"agedb_30\.bin: all \d+ pairs are (genuine|impostor)"):
        require_both_kinds(path, labels)


@FUZZ
@given(width=st.integers(0, 8192), height=st.integers(0, 8192))  # at most 200 MB if a limit is missed
@example(width=8192, height=8192)
def test_any_declared_jpeg_size_is_decoded_or_refused_with_the_source_named(width: int, height: int) -> None:
    """Sizes within the limits are decoded (or refused as corrupt); none past them reaches OpenCV."""
    from facekd.config import DataLimits

    data, limits = forged_jpeg(width, height), DataLimits()
    pixels = width * height
    if pixels > limits.max_image_pixels or pixels > limits.max_pixels_per_byte * len(data):
        with pytest.raises(DataError, match=r"lfw\.bin: image 3: image header declares"):
            decode_image(data, "lfw.bin: image 3")
        return
    try:
        decode_image(data, "lfw.bin: image 3")
    except DataError as err:
        assert "lfw.bin: image 3" in str(err)


# ---- IJB: landmarks that cannot align, pair lists that cannot be scored ----------------------------

def _set_landmarks(root: Path, row: int, values: list[str]) -> None:
    path = root / "meta" / "ijbc_name_5pts_score.txt"
    lines = path.read_text().splitlines()
    lines[row] = " ".join([lines[row].split(" ")[0], *values])
    path.write_text("\n".join(lines) + "\n")


@FUZZ
@given(row=st.integers(0, 5), x=st.floats(-1e6, 1e6), y=st.floats(-1e6, 1e6),
       huge=st.sampled_from(["", "1e39", "-1e39", "3.5e38", "nan", "inf"]), column=st.integers(0, 10))
@example(row=0, x=50.0, y=50.0, huge="", column=0)
def test_ijb_landmarks_that_cannot_align_are_refused_naming_file_and_line(tmp_path_factory, row: int, x: float,
                                                                         y: float, huge: str, column: int) -> None:
    """All five points on one spot (any spot), or a value past float32: the load names the line."""
    from tests.faults.hostile import write_protocol

    root = write_protocol(tmp_path_factory.mktemp("ijb") / "ijb").parents[1]
    values = [f"{x!r}", f"{y!r}"] * 5 + ["0.9"]
    if huge:
        values[column] = huge
    _set_landmarks(root, row, values)
    with pytest.raises(DataError, match=rf"ijbc_name_5pts_score\.txt: line {row + 1}"):
        load_ijb(root, "ijbc")


@pytest.mark.parametrize("labels", [[1, 1, 1], [0, 0, 0], [1]])
def test_ijb_pair_list_of_one_kind_is_refused_naming_the_file(tmp_path: Path, labels: list[int]) -> None:
    from tests.faults.hostile import write_protocol

    root = write_protocol(tmp_path / "ijb").parents[1]
    pairs = root / "meta" / "ijbc_template_pair_label.txt"
    rows = [line.split(" ")[:2] for line in pairs.read_text().splitlines()]
    pairs.write_text("".join(f"{a} {b} {label}\n" for (a, b), label in zip(rows, labels)))
    with pytest.raises(DataError, match=r"ijbc_template_pair_label\.txt: all \d+ pairs are (genuine|impostor)"):
        load_ijb(root, "ijbc")


def test_limits_come_from_the_params(tmp_path: Path) -> None:
    """`data.limits` set for the process (as the CLI does from params.yaml) is what readers apply."""
    from facekd.config import load_params
    from facekd.data.limits import active_limits, set_limits

    params = tmp_path / "params.yaml"
    params.write_text("data:\n  limits: {max_image_pixels: 10000}\n")
    before = active_limits()
    set_limits(load_params(params).data.limits)
    try:
        with pytest.raises(DataError, match=r"112x112 pixels, more than data\.limits\.max_image_pixels=10000"):
            decode_image(good_jpeg(0), "lfw.bin: image 0")
        decode_image(good_jpeg(0, 100), "lfw.bin: image 1")
    finally:
        set_limits(before)


@pytest.mark.parametrize("meta", [
    "[]", '"text"', "null", '{"num_classes": "many"}', '{"num_images": 1e999}', '{"num_classes": -3}',
    '{"num_images": 1e30}', '{"num_classes": true}', '{"num_images": [1, 2]}', '{"num_classes": 2.5}',
    '{"data_hash": {"a": 1}}', '{"data_hash": 12}', '{"num_images": 99999999999999999999999}',
])
def test_prepared_meta_with_absurd_values_names_the_file(tmp_path: Path, meta: str) -> None:
    """`data/prepared/meta.json` as the training stages read it: a DataError, not a later traceback."""
    from facekd.data.training_set import read_prepared_meta

    write_rec(tmp_path / "train.rec", [good_jpeg(0, 8), good_jpeg(1, 8)])
    (tmp_path / "meta.json").write_text(meta)
    with pytest.raises(DataError, match=r"meta\.json: "):
        read_prepared_meta(tmp_path)
