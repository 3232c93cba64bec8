"""Atomic file output: write to a temporary sibling, fsync, rename; folders replaced only when safe.

A reader (or a crash) never sees a half-written file; on failure the previous
file is left intact and the error names the target path. Files get the mode a plain ``open()``
gives under the current umask (a shared DVC cache, a Docker volume or a second user can read
them). A folder is replaced wholesale only after :func:`check_output_dir` found that doing so
deletes nothing but an earlier output.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from facekd.errors import ConfigError, DataError, FacekdError

# Folders inside the working directory that no output may be or hold: the project's history
# (git) and DVC's cache of every data version.
REPO_METADATA = (".git", ".dvc")


def _create_temp(target: Path) -> Path:
    """A new empty file beside ``target``, created the way ``open(..., "w")`` would create it
    (mode 0666 & ~umask; ``tempfile.mkstemp`` would force 0600)."""
    for _ in range(100):
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"no free temporary name beside {target}")


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success rename it over ``target``."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp_path = _create_temp(target)
    except OSError as err:
        raise FacekdError(f"{target}: cannot write here ({err.strerror}); check the folder exists and is writable") from None
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
    except OSError as err:
        tmp_path.unlink(missing_ok=True)
        raise FacekdError(f"{target}: write failed ({err.strerror}); the previous file is left unchanged") from None
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write(target: str | Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write(fh)`` on a binary temp file, then move it into place."""
    with atomic_path(target) as tmp, open(tmp, "wb") as fh:
        write(fh)


def write_bytes(target: str | Path, data: bytes) -> None:
    atomic_write(target, lambda fh: fh.write(data))


def write_text(target: str | Path, text: str) -> None:
    write_bytes(target, text.encode())


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, streamed (a teacher's weights may be hundreds of MB)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    except FileNotFoundError:
        raise DataError(f"{path}: missing") from None
    return h.hexdigest()


def write_json(target: str | Path, obj: Any) -> None:
    write_text(target, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json_object(path: str | Path, error: type[FacekdError], *, missing: str, redo: str) -> dict[str, Any]:
    """The JSON object stored in ``path``.

    Raises ``error`` naming the file: ``missing`` says what its absence means, ``redo`` how to
    re-create it when it is unreadable, not JSON, or not an object.
    """
    try:
        value = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise error(f"{path}: {missing}") from None
    except (OSError, ValueError) as err:
        raise error(f"{path}: unreadable or not JSON ({err}); {redo}") from None
    if not isinstance(value, dict):
        raise error(f"{path}: expected a JSON object, got {type(value).__name__}; {redo}")
    return value


# ---- replacing a whole output folder -------------------------------------------------------------


def _forms(path: str | Path) -> set[Path]:
    """``path`` absolute as written (``..`` and trailing slashes folded) and with symlinks resolved:
    a replace deletes what the written path holds, and the data may sit behind a link."""
    return {Path(os.path.abspath(path)), Path(os.path.realpath(path))}


def _relations(out: str | Path, other: str | Path) -> list[str]:
    """How output folder ``out`` overlaps path ``other``, over every pair of their forms: a subset
    of "is", "contains", "is inside", in that order (empty when they are apart)."""
    pairs = [(a, b) for a in _forms(out) for b in _forms(other)]
    found = {"is": any(a == b for a, b in pairs),
             "contains": any(a != b and b.is_relative_to(a) for a, b in pairs),
             "is inside": any(a != b and a.is_relative_to(b) for a, b in pairs)}
    return [relation for relation, yes in found.items() if yes]


def check_output_dir(key: str, out: str | Path, inputs: Mapping[str, str | Path | None]) -> None:
    """Refuse (:class:`ConfigError` naming ``key`` and both paths) an output folder that a wholesale
    replace would make delete data: one that is, holds or lies inside any of ``inputs`` (param key
    -> path; None is skipped), the working directory or one of its parents (the repository and
    everything above it), the home folder or a parent of it, the repository's .git / .dvc, or an
    existing file or symlink rather than a folder."""
    shown = f"{key} '{out}' ({os.path.abspath(out)})"
    fix = f"set {key} to a folder of its own, apart from every input"
    cwd = Path.cwd()
    protected = {"the working directory (the repository)": cwd}
    home = os.path.expanduser("~")
    if home != "~":  # no home at all (a bare container user) leaves "~" as it is
        protected["the home folder"] = home
    for name, path in protected.items():
        if {"is", "contains"} & set(_relations(out, path)):
            raise ConfigError(f"{shown} is or contains {name} '{path}': replacing it would delete it; {fix}")
    for name, path in [*inputs.items(), *((f"the repository's {d}", cwd / d) for d in REPO_METADATA)]:
        relations = [] if path is None else _relations(out, path)
        if relations:
            raise ConfigError(f"{shown} {relations[0]} {name} '{path}' ({os.path.realpath(path)}): replacing it "
                              f"would delete that data; {fix}")
    if os.path.lexists(out) and (os.path.islink(out) or not os.path.isdir(out)):
        raise ConfigError(f"{shown} exists and is a file or a symlink, not a folder facekd may replace; "
                          f"move it away or {fix}")


@contextlib.contextmanager
def replaced_dir(key: str, target: str | Path, inputs: Mapping[str, str | Path | None]) -> Iterator[Path]:
    """Yield an empty staging folder beside ``target``; on success it replaces ``target`` wholesale.

    Nothing is deleted before :func:`check_output_dir` has passed for ``target`` and for both of
    its hidden siblings (the staging folder and the one the old output is moved to). On failure the
    staging folder is removed and ``target`` is left as it was.
    """
    check_output_dir(key, target, inputs)
    target = Path(os.path.abspath(target))
    # Hidden, and *.tmp (git-ignored): a crash between the renames leaves nothing git would show.
    staging, old = (target.with_name(f".{target.name}.{what}") for what in ("tmp", "old.tmp"))
    for sibling in (staging, old):
        check_output_dir(f"{key} (its staging folder)", sibling, inputs)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)
