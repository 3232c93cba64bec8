"""Atomic file output: write to a temporary sibling, fsync, rename.

A reader (or a crash) never sees a half-written file; on failure the previous
file is left intact and the error names the target path.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from facekd.errors import FacekdError


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success rename it over ``target``."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
    except OSError as err:
        raise FacekdError(f"{target}: cannot write here ({err.strerror}); check the folder exists and is writable") from None
    tmp_path = Path(tmp)
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
