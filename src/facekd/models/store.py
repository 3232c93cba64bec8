"""The on-disk model directory every stage reads and writes.

```
<dir>/backbone.pt   state_dict of the backbone (CPU tensors)
<dir>/head.pt       optional: state_dict of the margin head, "weight" (C, d) class centres
<dir>/meta.json     arch, embedding_size, width, dropout, fp16, params, gmacs (+ caller's keys)
```

Each file is written atomically and ``meta.json`` last, so a directory with a ``meta.json`` is
complete. Loading rebuilds the backbone from ``meta.json`` and loads weights strictly.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facekd import fsio
from facekd.errors import DataError, FacekdError, TrainingError

if TYPE_CHECKING:
    import torch
    from torch import nn

logger = logging.getLogger(__name__)

BACKBONE_FILE = "backbone.pt"
HEAD_FILE = "head.pt"
META_FILE = "meta.json"
REQUIRED_META = ("arch", "embedding_size", "width", "dropout")



def model_dir(name: str) -> Path:
    """The folder of a trained model: ``models/teacher``, ``models/teacher_shkd``, ``models/<method>``."""
    return Path("models") / name

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
    import torch

    from facekd.models.complexity import describe_model

    path = Path(path)
    backbone = _unwrap(backbone)
    full_meta = {**getattr(backbone, "build_args", {}), **meta}
    missing = [key for key in REQUIRED_META if key not in full_meta]
    if missing:
        raise TrainingError(f"{path / META_FILE}: model metadata lacks {', '.join(missing)}; pass them in meta")
    full_meta.update(describe_model(backbone))
    fsio.atomic_write(path / BACKBONE_FILE, lambda fh: torch.save(_cpu_state(backbone), fh))
    if head is None:
        (path / HEAD_FILE).unlink(missing_ok=True)
    else:
        state = _head_state(head)
        full_meta["num_classes"] = int(state["weight"].shape[0])
        fsio.atomic_write(path / HEAD_FILE, lambda fh: torch.save(state, fh))
    fsio.write_json(path / META_FILE, full_meta)
    logger.info(
        "saved %s (%s, %.2fM params, %.3f GMACs)", path, full_meta["arch"], full_meta["params_m"], full_meta["gmacs"]
    )


def read_meta(path: str | Path) -> dict[str, Any]:
    """The ``meta.json`` of a model directory, checked for the keys needed to rebuild it."""
    meta_path = Path(path) / META_FILE
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise DataError(
            f"{meta_path}: missing; {path} is not a model directory (expected {META_FILE} and {BACKBONE_FILE})"
        ) from None
    except (OSError, ValueError) as err:
        raise DataError(f"{meta_path}: unreadable or not JSON ({err}); re-create the model directory") from None
    if not isinstance(meta, dict):
        raise DataError(f"{meta_path}: expected a JSON object, got {type(meta).__name__}")
    missing = [key for key in REQUIRED_META if key not in meta]
    if missing:
        raise DataError(f"{meta_path}: lacks {', '.join(missing)}; re-create the model directory")
    return meta


def load_state_file(path: Path, map_location: Any = "cpu") -> Any:
    """``torch.load(weights_only=True)`` with a :class:`DataError` naming the file on failure."""
    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise DataError(f"{path}: missing") from None
    except Exception as err:  # torch raises many types for truncated / foreign / unsafe pickles
        raise DataError(f"{path}: cannot be loaded as a weights file ({type(err).__name__}: {err})") from None


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
    import torch

    from facekd.models.registry import create_backbone

    path = Path(path)
    meta = read_meta(path)
    try:
        # Built on the meta device: the weights come from the file, so no time goes to init.
        with torch.device("meta"):
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


def load_head_weight(path: str | Path, *, map_location: Any = "cpu") -> torch.Tensor:
    """(C, d) class centres from ``head.pt`` of a model directory."""
    import torch

    head_path = Path(path) / HEAD_FILE
    state = load_state_file(head_path, map_location)
    weight = state.get("weight") if isinstance(state, dict) else None
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise DataError(f"{head_path}: expected a state_dict with a 2-D 'weight' (class centres)")
    return weight
