"""insightface verification ``.bin`` files (LFW, CFP-FP, AgeDB-30, ...): a pickle of
``(images, issame)`` with 2N encoded images (pair i is images 2i, 2i+1) and N booleans.

The files come from the internet and pickle can run code, so they are read with an unpickler that
resolves only the handful of globals real files need and refuses everything else before it runs.
"""
from __future__ import annotations

import builtins
import io
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from facekd.data.images import decode_image
from facekd.errors import DataError
from facekd.fsio import write_bytes


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """Stand-in for ``_codecs.encode``: Python 3 pickles bytes at protocol 2 as encode(str, 'latin1')."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode is only allowed as encode(str, 'latin1'), got {encoding!r}")
    return text.encode("latin1")


def _numpy_globals() -> dict[str, Callable[..., Any]]:
    # Taken from numpy's own reduce tuples so the names resolve on numpy 1 and 2 alike.
    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]
    scalar = np.float32(0).__reduce__()[0]
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]
    found = {"_reconstruct": reconstruct, "scalar": scalar, "_frombuffer": frombuffer}
    found.update(ndarray=np.ndarray, dtype=np.dtype)
    return found


_BUILTIN_NAMES = ("list", "tuple", "dict", "set", "frozenset", "bytes", "bytearray", "bool", "int", "float", "str")


def _allowed(module: str, name: str) -> Callable[..., Any] | None:
    """The object a real .bin may reference as ``module.name``, or None."""
    if module in ("builtins", "__builtin__"):
        return getattr(builtins, name) if name in _BUILTIN_NAMES else None
    if module in ("_codecs", "codecs") and name == "encode":
        return _latin1_encode
    numpy_modules = ("numpy", "numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric",
                     "numpy._core.numeric")
    if module in numpy_modules:
        return _numpy_globals().get(name)
    return None


class _RefusedGlobal(Exception):
    def __init__(self, qualname: str) -> None:
        super().__init__(qualname)
        self.qualname = qualname


class _SafeUnpickler(pickle.Unpickler):
    """Resolves only containers, scalars and numpy arrays; any other global stops the load."""

    def find_class(self, module: str, name: str) -> Any:
        found = _allowed(module, name)
        if found is None:
            raise _RefusedGlobal(f"{module}.{name}")
        return found


def _as_bytes(entry: object, path: Path, i: int) -> bytes:
    if isinstance(entry, bytes | bytearray):
        return bytes(entry)
    if isinstance(entry, str):  # a Python 2 str loaded as text: latin1 maps code points back to bytes
        return entry.encode("latin1")
    if isinstance(entry, np.ndarray) and entry.dtype == np.uint8:
        return entry.tobytes()
    raise DataError(f"{path}: image {i} (pair {i // 2}) is a {type(entry).__name__}, not encoded image bytes")


def _as_issame(raw: object, path: Path) -> np.ndarray:
    values = np.asarray(raw)
    if values.size == 0 and values.ndim == 1:
        return np.zeros(0, dtype=bool)
    if values.ndim != 1 or not (values.dtype == bool or np.issubdtype(values.dtype, np.integer)):
        raise DataError(f"{path}: the issame list must be a flat list of booleans, got {values.dtype} {values.shape}")
    if not np.isin(values, (0, 1)).all():
        bad = int(np.flatnonzero(~np.isin(values, (0, 1)))[0])
        raise DataError(f"{path}: issame entry {bad} is {values[bad].item()!r}, not a boolean")
    return values.astype(bool)


def load_bin(path: str | Path) -> tuple[list[bytes], np.ndarray]:
    """Read a verification .bin: (2N encoded images, (N,) bool issame). Never runs code from the file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: verification .bin not found") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror})") from None
    try:
        # encoding='bytes': the published files were pickled by Python 2, whose str is our bytes.
        obj = _SafeUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except _RefusedGlobal as refused:
        raise DataError(
            f"{path}: refused to load: the pickle references {refused.qualname}, which a verification .bin never "
            "needs (it may try to run code); do not use this file"
        ) from None
    except Exception as err:  # noqa: BLE001 -- any unpickling failure means a corrupt file
        raise DataError(f"{path}: not a readable verification .bin ({type(err).__name__}: {err})") from None
    if not isinstance(obj, tuple | list) or len(obj) != 2:
        raise DataError(f"{path}: expected a pickled (images, issame) pair, got {type(obj).__name__}")
    images_raw, issame_raw = obj
    if not isinstance(images_raw, list | tuple | np.ndarray):
        raise DataError(f"{path}: images must be a list of encoded images, got {type(images_raw).__name__}")
    issame = _as_issame(issame_raw, path)
    images = [_as_bytes(entry, path, i) for i, entry in enumerate(images_raw)]
    if len(images) != 2 * len(issame):
        raise DataError(
            f"{path}: {len(images)} images for {len(issame)} pair labels; a .bin holds exactly 2 images per pair"
        )
    return images, issame


def write_bin(path: str | Path, images: Sequence[bytes], issame: Sequence[bool]) -> None:
    """Write a verification .bin (pickle protocol 2, as insightface's files) atomically."""
    if len(images) != 2 * len(issame):
        raise DataError(f"write_bin: {path}: {len(images)} images for {len(issame)} pairs; need 2 per pair")
    payload = ([bytes(img) for img in images], [bool(same) for same in issame])
    write_bytes(path, pickle.dumps(payload, protocol=2))


def decode_bin(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Load and decode a .bin: ((2N, H, W, 3) uint8 RGB, (N,) bool issame)."""
    path = Path(path)
    images, issame = load_bin(path)
    if not images:
        raise DataError(f"{path}: contains no pairs")
    first = decode_image(images[0], f"{path}: image 0 (pair 0)")
    out = np.empty((len(images), *first.shape), dtype=np.uint8)  # (2N, H, W, 3)
    out[0] = first
    for i in range(1, len(images)):
        img = decode_image(images[i], f"{path}: image {i} (pair {i // 2})")
        if img.shape != first.shape:
            raise DataError(
                f"{path}: image {i} (pair {i // 2}) is {img.shape[1]}x{img.shape[0]}, but image 0 is "
                f"{first.shape[1]}x{first.shape[0]}; every image of a .bin must have the same size"
            )
        out[i] = img
    return out, issame
