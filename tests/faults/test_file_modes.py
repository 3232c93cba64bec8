"""Class 7 of issue 14: files and folders facekd writes get the mode a plain ``open()`` / ``mkdir``
gives under the current umask (0666 / 0777 & ~umask), not mkstemp's 0600, so a shared DVC cache,
a Docker volume or a second user can read them.

Every writer that goes through the atomic-write helper is run under umasks from fully open to
private, in-process (the umask restored after each) and once through the real `facekd prepare`.
"""
from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from facekd import fsio
from facekd.training.checkpoint import save_checkpoint
from tests.faults.conftest import FACEKD, TINY, child_env

pytestmark = pytest.mark.slow

# Umasks that leave the owner read/write (one without owner write makes even a plain open() +
# reopen fail): open, group-shared, team-private, the common default, and fully private.
UMASKS = [0o000, 0o002, 0o007, 0o022, 0o027, 0o037, 0o070, 0o077]


def _write_npy(target: Path) -> None:
    fsio.atomic_write(target, lambda fh: np.save(fh, np.arange(4.0)))


def _atomic_path_copy(target: Path) -> None:
    """The teacher-feature cache's way: something else opens the temporary path by name."""
    with fsio.atomic_path(target) as tmp:
        np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(2, 3)).flush()


WRITERS: dict[str, Callable[[Path], None]] = {
    "write_bytes": lambda target: fsio.write_bytes(target, b"x"),
    "write_text": lambda target: fsio.write_text(target, "x"),
    "write_json": lambda target: fsio.write_json(target, {"a": 1}),
    "atomic_write (np.save)": _write_npy,
    "atomic_path (memmap)": _atomic_path_copy,
    "save_checkpoint": lambda target: save_checkpoint(target, {"step": 1, "w": torch.ones(2)}),
}


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("writer", list(WRITERS))
@pytest.mark.parametrize("existing", [False, True], ids=["new", "replacing"])
def test_atomic_files_get_the_umask_mode(tmp_path: Path, writer: str, existing: bool) -> None:
    for mask in UMASKS:
        root = tmp_path / f"umask-{mask:03o}"
        target = root / "new/folder/out.bin"  # parents created by the helper
        with umask(mask):
            root.mkdir()
            with open(root / "plain.bin", "w"):
                pass
            if existing:
                WRITERS[writer](target)
            WRITERS[writer](target)
        assert _mode(target) == 0o666 & ~mask == _mode(root / "plain.bin"), \
            f"{writer}, umask {mask:03o}: mode {_mode(target):o}"
        assert _mode(target.parent) == _mode(target.parent.parent) == 0o777 & ~mask, f"umask {mask:03o}"
        assert not list(target.parent.glob("*.tmp")), "a temporary file was left behind"


def test_replaced_folder_gets_the_umask_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for mask in UMASKS:
        out = f"out-{mask:03o}"
        with umask(mask):
            for _ in range(2):  # created, then replaced
                with fsio.replaced_dir("out_dir", out, {}) as staging:
                    fsio.write_bytes(staging / "sub/file", b"x")
        folders = {_mode(tmp_path / out), _mode(tmp_path / out / "sub")}
        assert folders == {0o777 & ~mask}, f"umask {mask:03o}: {sorted(f'{m:o}' for m in folders)}"
        assert _mode(tmp_path / out / "sub/file") == 0o666 & ~mask, f"umask {mask:03o}"


def test_prepare_outputs_get_the_umask_mode(tmp_path: Path) -> None:
    """The real CLI, run under a private umask and then again under a group-writable one: every
    file and folder of both outputs follows the umask of the run that wrote it. The outputs are
    near misses of the inputs (a shared name prefix), which the overlap guard must allow; the
    second run replaces the first run's outputs and leaves the inputs as they were."""
    (tmp_path / "data/raw/train").mkdir(parents=True)
    (tmp_path / "data/raw/eval").mkdir(parents=True)
    (tmp_path / "data/raw/eval/lfw.bin").write_bytes(b"user pairs")
    outs = {"prepared_dir": "data/raw/train2", "eval_dir": "data/raw/eval_prepared"}
    params = {"data": {**TINY["data"], "path": "data/raw/train", "eval_path": "data/raw/eval", **outs}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    for mask in (0o077, 0o002):
        proc = subprocess.run([FACEKD, "prepare"], cwd=tmp_path, env=child_env(), capture_output=True, text=True,
                              timeout=120, stdin=subprocess.DEVNULL, preexec_fn=lambda mask=mask: os.umask(mask))
        assert proc.returncode == 0, proc.stderr[-3000:]
        outputs = [p for d in outs.values() for p in [tmp_path / d, *(tmp_path / d).rglob("*")]]
        modes = {(p.is_dir(), _mode(p)) for p in outputs}
        assert modes == {(True, 0o777 & ~mask), (False, 0o666 & ~mask)}, f"umask {mask:03o}: {modes}"
    assert sorted(p.name for p in (tmp_path / "data/raw").iterdir()) == ["eval", "eval_prepared", "train", "train2"]
    assert [p.name for p in (tmp_path / "data/raw/eval").iterdir()] == ["lfw.bin"]
    assert (tmp_path / "data/raw/eval/lfw.bin").read_bytes() == b"user pairs"
    assert json.loads((tmp_path / "data/raw/train2/meta.json").read_text())["num_images"] == 32
