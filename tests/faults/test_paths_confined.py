"""Class 5 of issue 14: a reader opens only regular files inside the dataset folder, whatever a
protocol names or a folder holds (``../``, absolute paths, symlinks out, devices, loops), and
class 8's forged log lines: names from data files are escaped in every message.
"""
from __future__ import annotations

import os
import shutil
import types
from pathlib import Path

import pytest

from facekd.data.folder import scan_identity_folders, scan_unlabeled
from facekd.data.ijb_protocol import load_ijb
from facekd.errors import DataError

from tests.faults.conftest import assert_clean_failure, facekd
from tests.faults.hostile import (
    FACEKD,
    LIMIT_AS,
    good_jpeg,
    read_bounded,
    rename_in_protocol,
    run_bounded,
    write_folder,
    write_protocol,
)

pytestmark = pytest.mark.slow


def _outside(tmp_path: Path) -> Path:
    """A real face image outside the dataset: reading it would score someone else's file."""
    secret = tmp_path / "elsewhere" / "secret.jpg"
    secret.parent.mkdir(exist_ok=True)
    secret.write_bytes(good_jpeg(9, 24))
    return secret


def _escapes(root: Path, secret: Path) -> dict[str, str]:
    """Protocol name -> a short label; creates the symlinks the names need in ``loose_crop/``."""
    crops = root / "loose_crop"
    shutil.copy(secret, root / "outside.jpg")
    os.symlink(secret, crops / "link.jpg")
    os.symlink("../outside.jpg", crops / "link-relative.jpg")
    os.symlink("/dev/zero", crops / "zero.jpg")
    os.symlink("/dev/null", crops / "null.jpg")
    os.symlink(secret.parent, crops / "dir.jpg")
    os.symlink(crops / "loop-b.jpg", crops / "loop-a.jpg")
    os.symlink(crops / "loop-a.jpg", crops / "loop-b.jpg")
    os.symlink(secret.parent, crops / "linked-folder")
    (crops / "sub").mkdir()
    return {
        "../outside.jpg": "parent", str(secret): "absolute", "sub/../../outside.jpg": "dotdot-inside",
        "../" * 12 + str(secret).lstrip("/"): "many-parents", "link.jpg": "symlink-absolute",
        "link-relative.jpg": "symlink-relative", "zero.jpg": "dev-zero", "null.jpg": "dev-null",
        "dir.jpg": "directory", "loop-a.jpg": "symlink-loop", "linked-folder/secret.jpg": "folder-symlink",
        "..": "dotdot", "sub": "folder",
    }


def test_ijb_names_leaving_the_crops_are_refused_naming_file_line_and_name(tmp_path: Path) -> None:
    secret = _outside(tmp_path)
    refused = []
    for n, (name, label) in enumerate(_escapes(write_protocol(tmp_path / "proto").parents[1], secret).items()):
        root = tmp_path / f"case-{label}"
        shutil.copytree(tmp_path / "proto", root, symlinks=True)
        row = n % 6
        rename_in_protocol(root, row, name)
        with pytest.raises(DataError) as err:
            load_ijb(root, "ijbc")
        message = str(err.value)
        assert f"ijbc_face_tid_mid.txt line {row + 1}" in message and repr(name) in message, message
        assert "\n" not in message
        refused.append(label)
    assert len(refused) == 13


def test_ijb_crop_swapped_after_loading_is_refused_when_read(tmp_path: Path) -> None:
    """The reader checks again when it opens the crop (evaluation reads crops after the load)."""
    root = write_protocol(tmp_path / "ijb").parents[1]
    secret = _outside(tmp_path)
    protocol = load_ijb(root, "ijbc")
    assert protocol.image_path("2.jpg").read_bytes() == (root / "loose_crop" / "2.jpg").read_bytes()
    for target in (secret, Path("/dev/zero")):
        (root / "loose_crop" / "2.jpg").unlink()
        os.symlink(target, root / "loose_crop" / "2.jpg")
        with pytest.raises(DataError, match=r"loose_crop: image '2\.jpg' \(listed in the ijbc protocol\) resolves to"):
            protocol.image_path("2.jpg")


@pytest.mark.parametrize("name", ["../outside.jpg", "zero.jpg"])
def test_data_info_on_an_escaping_ijb_protocol_exits_2(tmp_path: Path, name: str) -> None:
    root = write_protocol(tmp_path / "ijb").parents[1]
    _escapes(root, _outside(tmp_path))
    rename_in_protocol(root, 2, name)
    assert_clean_failure(facekd("data", "info", str(root), cwd=tmp_path), "ijbc_face_tid_mid.txt line 3", name)


def _folder_escapes(root: Path, secret: Path) -> dict[str, Path]:
    """Identity-folder datasets, each with one way out (name -> dataset root)."""
    cases = {}
    for label in ("symlink-out", "dev-zero", "dev-null", "folder-out", "relative-out", "loop"):
        case = write_folder(root / label, {"a/0.jpg": good_jpeg(0, 24), "b/1.jpg": good_jpeg(1, 24)})
        bad = case / "b" / "2.jpg"
        if label == "symlink-out":
            os.symlink(secret, bad)
        elif label == "dev-zero":
            os.symlink("/dev/zero", bad)
        elif label == "dev-null":
            os.symlink("/dev/null", bad)
        elif label == "folder-out":
            os.symlink(secret.parent, case / "c")
        elif label == "relative-out":
            os.symlink("../../../elsewhere/secret.jpg", bad)
        else:
            os.symlink(case / "b" / "3.jpg", bad)
            os.symlink(bad, case / "b" / "3.jpg")
        cases[label] = case
    return cases


def test_identity_and_unlabeled_folders_refuse_files_from_outside(tmp_path: Path) -> None:
    secret = _outside(tmp_path)
    for label, root in _folder_escapes(tmp_path / "sets", secret).items():
        for scan in (scan_identity_folders, scan_unlabeled):
            if label == "folder-out" and scan is scan_unlabeled:
                # A recursive scan does not enter symlinked folders: nothing outside is listed.
                assert all(p.resolve().is_relative_to(root) for p in scan(root))
                continue
            with pytest.raises(DataError, match=r"image '[bc]/[23\w.]+' \(found in the image folder\)") as err:
                scan(root)
            assert "\n" not in str(err.value), label
    inside = write_folder(tmp_path / "ok", {"a/0.jpg": good_jpeg(0, 24), "b/1.jpg": good_jpeg(1, 24)})
    os.symlink(inside / "a" / "0.jpg", inside / "b" / "again.jpg")  # a link that stays inside is fine
    assert len(scan_identity_folders(inside)[0]) == 3


def test_validation_eval_folder_with_a_dev_zero_crop_refused_within_bound(tmp_path: Path) -> None:
    """The validation gate hashes every image of data/eval: /dev/zero would be read forever."""
    paths = []
    for target in ("/dev/zero", str(_outside(tmp_path))):
        ev = write_folder(tmp_path / Path(target).name, {"mfr/probes/a/0.jpg": good_jpeg(0, 24)})
        os.symlink(target, ev / "mfr" / "probes" / "a" / "1.jpg")
        paths.append(ev)
    results, peak = read_bounded("eval-folder", paths)
    for result in results:
        assert "error" in result and "image 'mfr/probes/a/1.jpg'" in result["error"], result
    assert peak < LIMIT_AS / 2**20


# ---- class 8: names that would forge log lines ------------------------------------------------------

FORGING = ["\n12:00:00 ERROR facekd: forged", "\r12:00:00 INFO ok", "\x1b[2K\x1b[1Gok", "a\u2028b", "tab\there"]


@pytest.mark.parametrize("where", ["identity-folder", "image-file"])
def test_names_with_control_characters_are_escaped_in_the_one_error_line(tmp_path: Path, where: str) -> None:
    for n, odd in enumerate(FORGING):
        folder = f"0{odd}" if where == "identity-folder" else "0"
        image = f"x{odd}.jpg" if where == "image-file" else "x.jpg"
        root = write_folder(tmp_path / f"{n}", {f"{folder}/{image}": b"\xff\xd8\xff not a jpeg", "1/y.jpg": good_jpeg(1)})
        proc = facekd("data", "info", str(root), cwd=tmp_path)
        message = assert_clean_failure(proc, repr(odd)[1:-1])
        assert odd not in message


def test_ijb_protocol_file_name_with_a_newline_is_refused(tmp_path: Path) -> None:
    root = write_protocol(tmp_path / "ijb").parents[1]
    for path in (root / "meta").iterdir():
        path.rename(path.with_name(path.name.replace("ijbc", "ij\nbc")))
    rc, out, err, _ = run_bounded([FACEKD, "data", "info", str(root)], cwd=tmp_path)
    assert_clean_failure(types.SimpleNamespace(returncode=rc, stdout=out, stderr=err), "unprintable", r"ij\nbc")
