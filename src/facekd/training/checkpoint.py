"""Training checkpoints: atomic save, fall back to the previous one, safe load, config guard.

Layout of a run folder (``checkpoints/<run>/``): ``last.pt`` (newest) and ``prev.pt`` (the one
before it); a damaged ``last.pt`` that training resumed past is kept as ``last.pt.damaged-<n>``. A checkpoint is a dict of tensors, numbers, strings, lists and dicts only, so it loads
with ``torch.load(weights_only=True)``: a checkpoint from elsewhere cannot run code. RNG states are
stored in that form too (numpy's and Python's states converted, see :func:`capture_rng`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np

from facekd.errors import TrainingError
from facekd.fsio import atomic_path

log = logging.getLogger(__name__)

LAST = "last.pt"
PREVIOUS = "prev.pt"


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically; the file it replaces is kept as ``prev.pt`` beside it.

    Order: the new file is fully written and fsynced under a temporary name, then the old
    ``last.pt`` becomes ``prev.pt``, then the new file becomes ``last.pt``. A crash at any point
    leaves at least one complete checkpoint.
    """
    from facekd.models.store import save_state_file

    path = Path(path)
    with atomic_path(path) as tmp:
        save_state_file(state, tmp, path)
        if path.exists():
            os.replace(path, path.with_name(PREVIOUS))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load one checkpoint with ``weights_only=True`` onto the CPU.

    Raises :class:`TrainingError` naming the file when it is truncated, corrupt, or holds anything
    but plain data (a pickled object that would run code is refused, not executed).
    """
    import torch

    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for bad files
        from facekd.models.store import load_error_reason

        raise TrainingError(f"{path}: unreadable checkpoint ({load_error_reason(err)})") from None
    if not isinstance(state, dict) or "step" not in state:
        raise TrainingError(f"{path}: not a facekd training checkpoint (no 'step' entry)")
    return state


def load_latest(run_dir: str | Path) -> dict[str, Any] | None:
    """The newest readable checkpoint of ``run_dir`` (``last.pt``, else ``prev.pt``), or None.

    A damaged ``last.pt`` (e.g. a disk filled up mid-copy) is reported with a warning and
    ``prev.pt`` is used; the damaged file is then moved aside (:func:`_quarantine`), so the next
    save cannot rotate it over ``prev.pt``, the only good checkpoint. When every file present is
    damaged this raises :class:`TrainingError` and moves nothing.
    """
    run_dir = Path(run_dir)
    candidates = [run_dir / name for name in (LAST, PREVIOUS) if (run_dir / name).exists()]
    problems = []
    for path in candidates:
        try:
            state = load_checkpoint(path)
        except TrainingError as err:
            log.warning("%s; trying the previous checkpoint", err)
            problems.append(str(err))
            continue
        if problems:
            log.warning("resuming from %s (step %d) instead of the damaged %s", path, state["step"], LAST)
            _quarantine(run_dir / LAST)
        return state
    if problems:
        raise TrainingError(
            "; ".join(problems) + f". No usable checkpoint in {run_dir}/: delete that folder to start over"
        )
    return None


def _quarantine(path: Path) -> None:
    """Rename a damaged checkpoint to ``<name>.damaged-<n>`` (first free n), kept for inspection.

    Every rank resumes through :func:`load_latest`; a rank that finds the file already moved by
    another has nothing left to do.
    """
    n = 1
    while (target := path.with_name(f"{path.name}.damaged-{n}")).exists():
        n += 1
    try:
        os.rename(path, target)
    except FileNotFoundError:
        return
    log.warning("moved the damaged %s aside to %s (delete it once inspected); the next save keeps %s",
                path, target.name, PREVIOUS)


def config_hash(config: dict[str, Any]) -> str:
    """Stable hash of a JSON-like config dict (key order does not matter)."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def flat_items(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim.lr": 0.1, ...}`` from a nested dict."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flat_items(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_diff(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two configs, as ``key: stored -> current`` lines."""
    old, new = flat_items(stored), flat_items(current)
    missing = object()
    lines = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, missing), new.get(key, missing)
        if a != b:
            shown_a = "<absent>" if a is missing else repr(a)
            shown_b = "<absent>" if b is missing else repr(b)
            lines.append(f"{key}: {shown_a} -> {shown_b}")
    return lines


def check_config(state: dict[str, Any], config: dict[str, Any], run_dir: str | Path) -> None:
    """Refuse to resume a checkpoint written under a different config.

    Raises :class:`TrainingError` naming every differing key and the two ways out.
    """
    if state.get("config_hash") == config_hash(config):
        return
    diff = config_diff(state.get("config", {}), config) or ["(hash differs; keys look equal)"]
    raise TrainingError(
        f"{run_dir}/ holds a checkpoint (step {state.get('step')}) trained with a different config:\n  "
        + "\n  ".join(diff)
        + f"\nDelete {run_dir}/ to start this run from scratch, or restore the previous values to resume it."
    )


def capture_rng() -> dict[str, Any]:
    """Torch (CPU and CUDA), numpy and Python RNG states as tensors/ints/lists only."""
    import torch

    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        # MT19937 key: 624 uint32 words, stored as int64 so no numpy dtype is pickled.
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "state": list(py_state), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    import torch

    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
