"""insightface verification ``.bin`` files (LFW, CFP-FP, AgeDB-30, ...): a pickle of
``(images, issame)`` with 2N encoded images (pair i is images 2i, 2i+1) and N booleans.

The files come from the internet and pickle can run code, so they are read with an unpickler that
resolves only the handful of globals real files need and refuses everything else before it runs.
A few bytes of pickle can also reference one image thousands of times or call an allowed
constructor with a huge size, so the unpickler charges what it builds against a budget
proportional to the file (``data.limits.max_bin_expansion``) and stops past it.
"""
from __future__ import annotations

import builtins
import functools
import io
import math
import numbers
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from facekd.data.images import decode_image, image_size
from facekd.data.limits import active_limits
from facekd.data.paths import shown
from facekd.errors import DataError
from facekd.fsio import write_bytes


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """Stand-in for ``_codecs.encode``: Python 3 pickles bytes at protocol 2 as encode(str, 'latin1')."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode is only allowed as encode(str, 'latin1'), got {encoding!r}")
    return text.encode("latin1")


@functools.cache
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


class _OverBudget(Exception):
    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


# Every .bin may hold this much beyond max_bin_expansion x its size: small files (tests, tiny
# sets) may repeat one image a few times.
_BUDGET_SLACK = 1 << 20
_POINTER = 8  # bytes per reference in a container


def _footprint(obj: object) -> int:
    """Bytes ``obj`` makes a reader hold (shallow for containers: their items are charged apart)."""
    if isinstance(obj, bytes | bytearray | str):
        return len(obj)
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes)
    if isinstance(obj, list | tuple | set | frozenset | dict):
        return _POINTER * len(obj)
    return 0


def _array_bytes(shape: object, dtype: object) -> int:
    """Bytes ``ndarray(shape, dtype)`` would allocate (0 when the arguments are not a shape)."""
    dims = (shape,) if isinstance(shape, numbers.Integral) else shape
    if not isinstance(dims, tuple) or not all(isinstance(d, numbers.Integral) for d in dims):
        return 0
    try:
        itemsize = np.dtype(dtype).itemsize
    except (TypeError, ValueError):
        itemsize = 8
    return math.prod(max(int(d), 0) for d in dims) * max(itemsize, 1)


def _allocation(func: object, args: tuple) -> int:
    """Bytes a call allocates from its size arguments alone, before it returns."""
    if func in (bytes, bytearray) and args and isinstance(args[0], numbers.Integral):
        return max(int(args[0]), 0)
    if isinstance(func, type) and issubclass(func, np.ndarray) and args:
        return _array_bytes(args[0], args[1] if len(args) > 1 else float)
    if func is _numpy_globals()["_reconstruct"] and len(args) >= 3:
        return _array_bytes(args[1], args[2])
    return 0


class _SafeUnpickler(pickle._Unpickler):  # noqa: SLF001 -- the Python unpickler: every opcode can be hooked
    """Resolves only containers, scalars and numpy arrays; any other global stops the load.

    Charges what the pickle makes the reader hold: each value fetched again from the memo or
    duplicated (a reference to an image counts the image again: the readers copy and decode each
    reference), each call's allocation before it runs and its result after.
    """

    dispatch = dict(pickle._Unpickler.dispatch)  # noqa: SLF001

    def __init__(self, file: io.BytesIO, budget: int) -> None:
        super().__init__(file, encoding="bytes")
        self._left = budget

    def find_class(self, module: str, name: str) -> Any:
        found = _allowed(module, name)
        if found is None:
            raise _RefusedGlobal(f"{module}.{name}")
        return found

    def _charge(self, nbytes: int, what: str) -> None:
        self._left -= nbytes
        if self._left < 0:
            raise _OverBudget(what)

    def _charged_call(self, load: Callable[[Any], None], func: object, args: object) -> None:
        if isinstance(args, tuple):
            self._charge(_allocation(func, args), f"a call of {getattr(func, '__name__', func)} with a size argument")
        load(self)
        self._charge(_footprint(self.stack[-1]), f"what {getattr(func, '__name__', func)} built")

    def _load_reduce(self) -> None:
        self._charged_call(pickle._Unpickler.load_reduce, self.stack[-2], self.stack[-1])  # noqa: SLF001

    def _load_newobj(self) -> None:
        self._charged_call(pickle._Unpickler.load_newobj, self.stack[-2], self.stack[-1])  # noqa: SLF001

    def _load_newobj_ex(self) -> None:
        self._charged_call(pickle._Unpickler.load_newobj_ex, self.stack[-3], self.stack[-2])  # noqa: SLF001

    def _load_build(self) -> None:
        self._charge(_footprint(self.stack[-1]), "object state")
        pickle._Unpickler.load_build(self)  # noqa: SLF001

    def _instantiate(self, klass: Any, args: list) -> None:  # the OBJ and INST opcodes
        self._charged_call(lambda me: pickle._Unpickler._instantiate(me, klass, args), klass, tuple(args))  # noqa: SLF001


def _charging_push(load: Callable[[Any], None]) -> Callable[[_SafeUnpickler], None]:
    """An opcode that pushes an existing value again, charging that value once more."""
    def run(self: _SafeUnpickler) -> None:
        load(self)
        self._charge(_footprint(self.stack[-1]), "repeated references to one value")
    return run


_PYTHON_OPS = pickle._Unpickler.dispatch  # noqa: SLF001
_SafeUnpickler.dispatch.update({
    pickle.REDUCE[0]: _SafeUnpickler._load_reduce,
    pickle.NEWOBJ[0]: _SafeUnpickler._load_newobj,
    pickle.NEWOBJ_EX[0]: _SafeUnpickler._load_newobj_ex,
    pickle.BUILD[0]: _SafeUnpickler._load_build,
    **{op[0]: _charging_push(_PYTHON_OPS[op[0]]) for op in (pickle.GET, pickle.BINGET, pickle.LONG_BINGET, pickle.DUP)},
})


def _as_bytes(entry: object, path: Path, i: int) -> bytes:
    if isinstance(entry, bytes | bytearray):
        return bytes(entry)
    if isinstance(entry, str):  # a Python 2 str loaded as text: latin1 maps code points back to bytes
        return entry.encode("latin1")
    if isinstance(entry, np.ndarray) and entry.dtype == np.uint8:
        return entry.tobytes()
    raise DataError(f"{path}: image {i} (pair {i // 2}) is a {type(entry).__name__}, not encoded image bytes")


def _as_issame(raw: object, path: Path) -> np.ndarray:
    if isinstance(raw, list | tuple):
        # Checked before numpy sees it: nested lists would expand (or fail as a ragged array).
        bad = next((i for i, v in enumerate(raw) if not isinstance(v, numbers.Integral | np.bool_)), None)
        if bad is not None:
            raise DataError(f"{shown(path)}: issame entry {bad} is a {type(raw[bad]).__name__}, not a boolean; "
                            "the issame list must be a flat list of booleans")
    elif not isinstance(raw, np.ndarray):
        raise DataError(f"{shown(path)}: the issame list is a {type(raw).__name__}, not a list of booleans")
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
    expansion = active_limits().max_bin_expansion
    budget = int(expansion * len(raw)) + _BUDGET_SLACK
    stream = io.BytesIO(raw)
    try:
        # encoding='bytes': the published files were pickled by Python 2, whose str is our bytes.
        obj = _SafeUnpickler(stream, budget).load()
    except _RefusedGlobal as refused:
        raise DataError(
            f"{path}: refused to load: the pickle references {refused.qualname}, which a verification .bin never "
            "needs (it may try to run code); do not use this file"
        ) from None
    except _OverBudget as over:
        raise DataError(
            f"{path}: refused to load: near byte {stream.tell()}, {over.what} would make the reader hold more than "
            f"{budget} bytes for a {len(raw)}-byte file (data.limits.max_bin_expansion={expansion}); "
            "the file is forged or damaged"
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
    height, width = first.shape[:2]
    for i, data in enumerate(images):  # from the headers: nothing is decoded or allocated yet
        size = image_size(data)
        if size is not None and size != (width, height):
            raise DataError(
                f"{path}: image {i} (pair {i // 2}) is {size[0]}x{size[1]}, but image 0 is "
                f"{width}x{height}; every image of a .bin must have the same size"
            )
    _check_decoded_total(path, len(images) * first.nbytes)
    out = np.empty((len(images), *first.shape), dtype=np.uint8)  # (2N, H, W, 3)
    out[0] = first
    for i in range(1, len(images)):
        out[i] = decode_image(images[i], f"{path}: image {i} (pair {i // 2})")
    return out, issame


def require_both_kinds(path: Path, issame: np.ndarray) -> None:
    """Verification scores a set only with genuine and impostor pairs (reading its images does not)."""
    if issame.all() or not issame.any():
        raise DataError(f"{path}: all {issame.size} pairs are {'genuine' if issame[0] else 'impostor'}; verification "
                        "needs both genuine and impostor pairs: use the set's full pair list")


def _check_decoded_total(path: Path, nbytes: int) -> None:
    """Refuse a .bin whose decoded images would outweigh the file by more than the limit: each
    image passes its own checks, but a small file can list many references to a forged one."""
    expansion = active_limits().max_decode_expansion
    size = path.stat().st_size
    if nbytes > expansion * size:
        raise DataError(
            f"{path}: its images decode to {nbytes} bytes, more than data.limits.max_decode_expansion={expansion} "
            f"times the {size}-byte file; the file repeats or forges images: refused before decoding"
        )
