"""The on-disk model directory every stage reads and writes.

```
<dir>/backbone.pt   state_dict of the backbone (CPU tensors)
<dir>/head.pt       optional: state_dict of the margin head, "weight" (C, d) class centres
<dir>/meta.json     arch, embedding_size, width, dropout, fp16, params, gmacs (+ caller's keys)
```

An ONNX-only model (an imported model-zoo teacher) holds ``model.onnx`` instead of ``backbone.pt``
and a ``meta.json`` with ``"format": "onnx"``, its input convention and the source file's sha256;
:func:`load_backbone` returns it as a :class:`~facekd.models.onnx_backbone.OnnxBackbone`.

Each file is written atomically and ``meta.json`` last, so a directory with a ``meta.json`` is
complete. Loading rebuilds the backbone from ``meta.json`` and loads weights strictly.
"""
from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facekd import fsio, layout
from facekd.errors import DataError, FacekdError, TrainingError

if TYPE_CHECKING:
    import torch
    from torch import nn

logger = logging.getLogger(__name__)

BACKBONE_FILE = "backbone.pt"
HEAD_FILE = "head.pt"
META_FILE = "meta.json"
REQUIRED_META = ("arch", "embedding_size", "width", "dropout")
ONNX_FORMAT = "onnx"
REQUIRED_ONNX_META = ("format", "embedding_size", "input")


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP (``.module``) or torch.compile (``._orig_mod``) wrappers."""
    while True:
        inner = getattr(model, "module", None)
        if inner is None:
            inner = getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().cpu() for key, value in module.state_dict().items()}


def _head_state(head: nn.Module | torch.Tensor) -> dict[str, torch.Tensor]:
    """Head state_dict with the full (C, d) ``weight``."""
    import torch

    if isinstance(head, torch.Tensor):
        return {"weight": head.detach().cpu()}
    head = _unwrap(head)
    if getattr(head, "world_size", 1) > 1:
        raise TrainingError(
            "a sharded PartialFC holds only its slice of the class centres: call full_weight() on every "
            "rank and save that (C, d) tensor as the head"
        )
    state = _cpu_state(head)
    if "weight" not in state or state["weight"].dim() != 2:
        raise TrainingError(f"head {type(head).__name__} has no 2-D 'weight' (class centres) to save")
    return state


def save_model_dir(
    path: str | Path,
    backbone: nn.Module,
    meta: dict[str, Any],
    head: nn.Module | torch.Tensor | None = None,
) -> None:
    """Write a model directory (see module docstring).

    ``meta`` is merged over the backbone's ``build_args`` (set by ``create_backbone``) and must end
    up with arch, embedding_size, width and dropout. ``head`` is a margin head module or its
    (C, d) centres (for a multi-rank PartialFC: ``full_weight()``); without it a stale head.pt is
    removed.
    """
    from facekd.models.complexity import describe_model

    path = Path(path)
    backbone = _unwrap(backbone)
    full_meta = {**getattr(backbone, "build_args", {}), **meta}
    missing = [key for key in REQUIRED_META if key not in full_meta]
    if missing:
        raise TrainingError(f"{path / META_FILE}: model metadata lacks {', '.join(missing)}; pass them in meta")
    full_meta.update(describe_model(backbone))
    with fsio.atomic_path(path / BACKBONE_FILE) as tmp:
        save_state_file(_cpu_state(backbone), tmp, path / BACKBONE_FILE)
    if head is None:
        (path / HEAD_FILE).unlink(missing_ok=True)
    else:
        state = _head_state(head)
        full_meta["num_classes"] = int(state["weight"].shape[0])
        with fsio.atomic_path(path / HEAD_FILE) as tmp:
            save_state_file(state, tmp, path / HEAD_FILE)
    fsio.write_json(path / META_FILE, full_meta)
    logger.info(
        "saved %s (%s, %.2fM params, %.3f GMACs)", path, full_meta["arch"], full_meta["params_m"], full_meta["gmacs"]
    )


def read_meta(path: str | Path) -> dict[str, Any]:
    """The ``meta.json`` of a model directory, checked for the keys needed to rebuild it."""
    meta_path = Path(path) / META_FILE
    meta = fsio.read_json_object(
        meta_path, DataError, redo="re-create the model directory",
        missing=f"missing; {path} is not a model directory (expected {META_FILE} and {BACKBONE_FILE})")
    required = REQUIRED_ONNX_META if meta.get("format") == ONNX_FORMAT else REQUIRED_META
    missing = [key for key in required if key not in meta]
    if missing:
        raise DataError(f"{meta_path}: lacks {', '.join(missing)}; re-create the model directory")
    return meta


def require_model(name: str) -> dict[str, Any]:
    """``meta.json`` of the pipeline's trained model ``name``; a missing one says which stage makes it."""
    folder = layout.model_dir(name)
    if not (folder / META_FILE).is_file():
        raise DataError(f"{folder / META_FILE}: missing, no trained '{name}' model here; "
                        f"run `dvc repro {layout.training_stage(name)}` first")
    return read_meta(folder)


def weights_file(path: str | Path) -> Path:
    """The file holding a model directory's weights: ``model.onnx`` for an ONNX model, else ``backbone.pt``."""
    from facekd.models.onnx_backbone import ONNX_FILE

    path = Path(path)
    return path / ONNX_FILE if (path / ONNX_FILE).is_file() else path / BACKBONE_FILE


def save_onnx_dir(path: str | Path, source: Path, meta: dict[str, Any]) -> None:
    """An ONNX model directory: ``source`` copied to ``model.onnx`` (atomically), ``meta.json`` last.

    A stale ``backbone.pt`` / ``head.pt`` (a teacher trained here before) is removed first, so the
    folder never holds two models.
    """
    from facekd.models.onnx_backbone import ONNX_FILE

    path = Path(path)
    (path / META_FILE).unlink(missing_ok=True)
    for stale in (BACKBONE_FILE, HEAD_FILE):
        (path / stale).unlink(missing_ok=True)
    with fsio.atomic_path(path / ONNX_FILE) as tmp:
        shutil.copyfile(source, tmp)
    fsio.write_json(path / META_FILE, {**meta, "format": ONNX_FORMAT})
    logger.info("imported %s -> %s (%s-d ONNX embedder)", source, path, meta.get("embedding_size"))


# torch's weights_only refusal names the global the pickle asked for ("GLOBAL posix.system").
_REFUSED_GLOBAL = re.compile(r"(?:unsupported|Unsupported global:) GLOBAL ([\w.]+)")


def load_error_reason(err: Exception) -> str:
    """One line saying why ``torch.load(weights_only=True)`` failed.

    A refused global means the pickle asks for an object plain weights never contain (it may try
    to run code): say so, rather than relay torch's advice to retry with ``weights_only=False``.
    """
    text = str(err).strip()
    refused = _REFUSED_GLOBAL.search(text)
    if refused:
        return (f"refused: the file references {refused.group(1)}, which plain weights never need "
                "(it may try to run code); do not use this file")
    return f"{type(err).__name__}: {text.splitlines()[0] if text else 'no detail'}"


def save_state_file(obj: Any, tmp: Path, target: Path) -> None:
    """``torch.save(obj, tmp)``, where ``tmp`` is the temporary file of ``target`` (see
    :func:`facekd.fsio.atomic_path`). A failed write becomes a :class:`FacekdError` naming
    ``target``: torch reports a full disk only as "enforce fail ... unexpected pos"."""
    import torch

    try:
        # Through a file object: torch names the archive inside after a path's (random) temporary
        # name, but "archive" for a file object, so equal states give byte-identical files.
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
    except RuntimeError as err:
        free = shutil.disk_usage(tmp.parent).free
        raise FacekdError(
            f"{target}: write failed ({free} bytes free on that disk: is it full? torch: "
            f"{str(err).strip().splitlines()[0]}); the previous file is left unchanged") from None


def load_state_file(path: Path, map_location: Any = "cpu") -> Any:
    """``torch.load(weights_only=True)`` with a :class:`DataError` naming the file on failure."""
    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise DataError(f"{path}: missing") from None
    except Exception as err:  # torch raises many types for truncated / foreign / unsafe pickles
        raise DataError(f"{path}: cannot be loaded as a weights file ({load_error_reason(err)})") from None


def load_strict(model: nn.Module, state: Any, source: Path) -> None:
    """``load_state_dict(strict=True)`` with a :class:`DataError` listing what does not match."""
    if not isinstance(state, dict):
        raise DataError(
            f"{source}: expected a state_dict (a mapping of names to tensors), got {type(state).__name__}"
        )
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:
        first_lines = "; ".join(str(err).splitlines()[:6])
        raise DataError(f"{source}: weights do not fit the model ({first_lines})") from None
    model.float()  # a half-precision file still gives a float32 model (fp16 is autocast, not storage)


def load_backbone(path: str | Path, *, map_location: Any = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the backbone of a model directory in eval mode; returns (model, meta)."""
    from facekd.models.registry import create_backbone

    path = Path(path)
    meta = read_meta(path)
    if meta.get("format") == ONNX_FORMAT:
        return _load_onnx(path, meta), meta
    try:
        # Built on the CPU, not the meta device: meta-device init routes normal_ through torch._refs,
        # which imports torch._dynamo (~2.2 CPU-s per process); CPU init of iresnet100 costs ~1 s.
        model = create_backbone(
            meta["arch"],
            embedding_size=int(meta["embedding_size"]),
            width=float(meta["width"]),
            dropout=float(meta["dropout"]),
            fp16=bool(meta.get("fp16", False)),
        )
    except FacekdError as err:
        raise DataError(f"{path / META_FILE}: {err}") from None
    load_strict(model, load_state_file(path / BACKBONE_FILE, map_location), path / BACKBONE_FILE)
    return model.eval(), meta


def _load_onnx(path: Path, meta: dict[str, Any]) -> nn.Module:
    from facekd.models.onnx_backbone import ONNX_FILE, InputConvention, OnnxBackbone

    try:
        convention = InputConvention(**meta["input"])
    except TypeError as err:
        raise DataError(f"{path / META_FILE}: 'input' is not an input convention ({err}); re-import the model") from None
    return OnnxBackbone(path / ONNX_FILE, convention, threads=int(meta.get("threads", 0)))


def load_head_weight(path: str | Path, *, map_location: Any = "cpu") -> torch.Tensor:
    """(C, d) class centres from ``head.pt`` of a model directory."""
    import torch

    head_path = Path(path) / HEAD_FILE
    state = load_state_file(head_path, map_location)
    weight = state.get("weight") if isinstance(state, dict) else None
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise DataError(f"{head_path}: expected a state_dict with a 2-D 'weight' (class centres)")
    return weight
