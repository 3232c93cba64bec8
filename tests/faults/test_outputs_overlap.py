"""Class 1 of issue 14, "data loss, exit 0": an output folder that `prepare` replaces wholesale may
never be, hold or lie inside an input, the other output or the repository's .git/.dvc, nor be or
hold the repository or the home folder, nor be an existing file or symlink.

Every variant drives the real `facekd prepare` in a scratch workspace (a repository with user data
under data/raw, a dataset outside it behind a symlink, a home folder) and checks exit 2, one error
naming the param key and the path, and that not one byte of the workspace changed.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from facekd.errors import ConfigError
from facekd.fsio import check_output_dir
from tests.faults.conftest import FACEKD, TINY, assert_clean_failure, child_env

pytestmark = pytest.mark.slow

DATA = {"path": "data/raw/train", "eval_path": "data/raw/eval"}


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """``tmp_path/repo`` (cwd of every run) with user data, git/DVC folders and symlinks;
    ``tmp_path/ext/ms1m`` a dataset outside it; ``tmp_path/users/alice`` the home folder."""
    repo = tmp_path / "repo"
    files = {
        "repo/data/raw/train/id0/0.jpg": b"\xff\xd8 user image",
        "repo/data/raw/eval/lfw.bin": b"user pairs",
        "repo/data/raw/eval/property": b"2,3\n",
        "repo/README.md": b"# notes\n",
        "repo/.git/HEAD": b"ref: refs/heads/main\n",
        "repo/.dvc/cache/files/md5/ab/cdef": b"cached data",
        "ext/ms1m/train.rec": b"rec bytes",
        "ext/ms1m/train.idx": b"0\t0\n",
        "users/alice/.bashrc": b"# alice\n",
    }
    for name, blob in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(blob)
    (repo / "link_to_train").symlink_to(repo / "data/raw/train")
    (repo / "data/raw/ms1m").symlink_to(tmp_path / "ext/ms1m")
    return repo


def snapshot(root: Path) -> dict[str, bytes | str]:
    """Every file (bytes), symlink (target) and folder under ``root``."""
    out: dict[str, bytes | str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = f"-> {os.readlink(path)}"
            else:
                out[rel] = path.read_bytes() if path.is_file() else "dir"
    return out


def assert_refused(repo: Path, data: dict[str, str], *names: str) -> None:
    """`facekd prepare` with these ``data`` params ("{tmp}" expanded) exits 2 with one error naming
    every one of ``names``, and changes not one byte under the repository's parent."""
    tmp = str(repo.parent)
    params = {"data": {**DATA, **TINY["data"], **{k: v.format(tmp=tmp) for k, v in data.items()}}}
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    before = snapshot(repo.parent)
    proc = subprocess.run([FACEKD, "prepare"], cwd=repo, env=child_env(HOME=f"{tmp}/users/alice"),
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert_clean_failure(proc, *(name.format(tmp=tmp) for name in names))
    assert snapshot(repo.parent) == before, "the workspace changed"


# (case, output folder, other data params, what the error must name besides the key and the path).
# "{tmp}" is the folder holding the repository, the outside dataset and the home folder.
OVERLAPS = [
    ("parent of both inputs", "data", {}, "data.path"),
    ("grandparent of an input", "data/raw", {}, "data.path"),
    ("equal to data.path", "data/raw/train", {}, "data.path"),
    ("equal, trailing slash", "data/raw/train/", {}, "data.path"),
    ("equal, ./ prefix", "./data/raw/eval", {}, "data.eval_path"),
    ("equal through ..", "data/raw/eval/../train", {}, "data.path"),
    ("equal, absolute", "{tmp}/repo/data/raw/eval", {}, "data.eval_path"),
    ("inside an input", "data/raw/train/prepared", {}, "data.path"),
    ("symlink to an input", "link_to_train", {}, "data.path"),
    ("the symlinked dataset's real folder", "{tmp}/ext/ms1m", {"path": "data/raw/ms1m"}, "data.path"),
    ("parent of the symlinked dataset", "{tmp}/ext", {"path": "data/raw/ms1m"}, "data.path"),
    ("inside the symlinked dataset", "{tmp}/ext/ms1m/out", {"path": "data/raw/ms1m"}, "data.path"),
    ("the repository (.)", ".", {}, "the working directory"),
    ("the repository (empty string)", "", {}, "the working directory"),
    ("the repository's parent (..)", "..", {}, "the working directory"),
    ("the filesystem root", "/", {}, "the working directory"),
    ("the home folder", "{tmp}/users/alice", {}, "the home folder"),
    ("the home folder's parent", "{tmp}/users", {}, "the home folder"),
    ("the git folder", ".git", {}, ".git"),
    ("inside the DVC cache", ".dvc/cache", {}, ".dvc"),
    ("an existing file", "README.md", {}, "not a folder"),
]


@pytest.mark.parametrize(("case", "out", "extra", "named"), OVERLAPS, ids=[c[0] for c in OVERLAPS])
def test_prepare_refuses_an_output_that_would_delete_data(workspace: Path, case: str, out: str, extra: dict,
                                                          named: str) -> None:
    assert_refused(workspace, {"prepared_dir": out, **extra}, "data.prepared_dir", f"'{out}'", named)


OTHER_OUTPUT = [
    ("eval_dir equal to data.path", {"eval_dir": "data/raw/train"}, "data.eval_dir", "data.path"),
    ("eval_dir the repository", {"eval_dir": "."}, "data.eval_dir", "'.'"),
    ("eval_dir inside the symlinked dataset", {"eval_dir": "{tmp}/ext/ms1m/eval", "path": "data/raw/ms1m"},
     "data.eval_dir", "data.path"),
    ("both outputs one folder", {"prepared_dir": "out", "eval_dir": "out"}, "data.prepared_dir", "data.eval_dir"),
    ("eval_dir inside prepared_dir", {"prepared_dir": "out", "eval_dir": "out/eval"}, "data.prepared_dir",
     "data.eval_dir"),
    ("prepared_dir inside eval_dir", {"prepared_dir": "out/train", "eval_dir": "out"}, "data.prepared_dir",
     "data.eval_dir"),
]


@pytest.mark.parametrize(("case", "data", "key", "named"), OTHER_OUTPUT, ids=[c[0] for c in OTHER_OUTPUT])
def test_prepare_refuses_overlapping_eval_dir_or_outputs(workspace: Path, case: str, data: dict, key: str,
                                                         named: str) -> None:
    (workspace / "out").mkdir()
    (workspace / "out/earlier.txt").write_bytes(b"an earlier output")
    assert_refused(workspace, data, key, named)


@pytest.mark.parametrize("key", ["data.prepared_dir", "data.eval_dir"])
@pytest.mark.parametrize(("case", "out", "extra", "named"), OVERLAPS, ids=[c[0] for c in OVERLAPS])
def test_guard_refuses_every_overlap_for_either_key(workspace: Path, monkeypatch: pytest.MonkeyPatch, key: str,
                                                    case: str, out: str, extra: dict, named: str) -> None:
    monkeypatch.chdir(workspace)
    monkeypatch.setenv("HOME", str(workspace.parent / "users" / "alice"))
    inputs = {f"data.{k}": v for k, v in {**DATA, **extra}.items()}
    with pytest.raises(ConfigError) as err:
        check_output_dir(key, out.format(tmp=workspace.parent), inputs)
    assert str(err.value).startswith(key) and named in str(err.value) and "\n" not in str(err.value)


# Near misses: a shared name prefix, a sibling, a folder outside the repository (a real `prepare`
# into two of them: tests/faults/test_file_modes.py).
SAFE = ["data/prepared", "data/raw/train2", "data/raw/trai", "data/raw/eval_prepared", "data/raw/.train",
        "{tmp}/elsewhere/prepared", "{tmp}/users/alice2", "{tmp}/ext/ms1m2", "prepared/"]


@pytest.mark.parametrize("out", SAFE)
def test_guard_allows_folders_of_their_own(workspace: Path, monkeypatch: pytest.MonkeyPatch, out: str) -> None:
    monkeypatch.chdir(workspace)
    monkeypatch.setenv("HOME", str(workspace.parent / "users" / "alice"))
    check_output_dir("data.prepared_dir", out.format(tmp=workspace.parent),
                     {"data.path": "data/raw/ms1m", "data.eval_path": "data/raw/eval", "data.eval_dir": "data/eval"})
