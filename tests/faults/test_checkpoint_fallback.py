"""Class 6 of issue 14: resuming from ``prev.pt`` past a damaged ``last.pt`` must never let the next
save rotate the damaged file over ``prev.pt``, the only good checkpoint.

Every kind of damage (empty, truncated anywhere, overwritten, not a checkpoint, code-carrying,
a folder) is applied, resumed past and saved over twice: the second damage must still find a good
``prev.pt``. Once through the library, once through the real training loop.
"""
from __future__ import annotations

import logging
import pickle
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from facekd.config import OptimParams
from facekd.data.dataset import open_training_data
from facekd.mlops.tracking import NullTracker
from facekd.models.heads import MarginHead
from facekd.models.registry import create_backbone
from facekd.training.checkpoint import LAST, PREVIOUS, load_checkpoint, load_latest, save_checkpoint
from facekd.training.loop import fit
from facekd.training.sampling import seed_everything
from facekd.training.objectives import HeadObjective
from tests.integration.test_training_loop import write_tiny_rec

pytestmark = pytest.mark.slow


def _truncate(fraction: float) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        blob = path.read_bytes()
        path.write_bytes(blob[: int(len(blob) * fraction)])
    return damage


def _overwrite(fill: Callable[[int], bytes]) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(fill(path.stat().st_size))


def _replace_with(obj: object) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        with open(path, "wb") as fh:
            torch.save(obj, fh, pickle_module=pickle)
    return damage


def _folder(path: Path) -> None:
    path.unlink()
    path.mkdir()
    (path / "junk").write_bytes(b"x")


DAMAGES: dict[str, Callable[[Path], None]] = {
    "empty": _truncate(0.0),
    "one byte left": lambda path: path.write_bytes(path.read_bytes()[:1]),
    "truncated at 10%": _truncate(0.1),
    "truncated at 50%": _truncate(0.5),
    "truncated at 99%": _truncate(0.99),
    "zeros, same size": _overwrite(lambda n: bytes(n)),
    "garbage, same size": _overwrite(lambda n: bytes(range(256)) * (n // 256) + bytes(n % 256)),
    "no step entry": _replace_with({"model": {"w": torch.ones(3)}}),
    "not a dict": _replace_with([1, 2, 3]),
    "an object that is not plain data": _replace_with({"step": 5, "payload": Fraction(1, 3)}),
    "a folder": _folder,
}


def _state(step: int) -> dict:
    return {"step": step, "model": {"w": torch.full((3,), float(step))}}


def _step(path: Path) -> int:
    return int(load_checkpoint(path)["step"])


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_fallback_keeps_the_good_checkpoint(tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture) -> None:
    save_checkpoint(tmp_path / LAST, _state(1))
    save_checkpoint(tmp_path / LAST, _state(2))
    for incident in (1, 2):
        DAMAGES[damage](tmp_path / LAST)
        with caplog.at_level(logging.WARNING):
            resumed = load_latest(tmp_path)
        assert resumed["step"] == 1, f"incident {incident}: resumed from step {resumed['step']}"
        save_checkpoint(tmp_path / LAST, _state(2))  # what the loop does after its next step
        assert (_step(tmp_path / PREVIOUS), _step(tmp_path / LAST)) == (1, 2), f"incident {incident}"
        assert (tmp_path / f"{LAST}.damaged-{incident}").exists(), "the damaged file was not kept for inspection"
        assert f"{LAST}.damaged-{incident}" in caplog.text


def test_training_loop_survives_two_damaged_checkpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """The real loop: train 2 steps, damage last.pt, resume for one step (one save), damage the new
    last.pt, resume to the end. Before the fix the second resume found the first damaged file in
    prev.pt and refused ("No usable checkpoint")."""
    monkeypatch.chdir(tmp_path)
    data = write_tiny_rec(tmp_path / "data")  # 16 images
    optim = OptimParams(epochs=2, batch_size=8, lr=0.05, checkpoint_every=1, workers=0)  # 4 steps
    run_dir = tmp_path / "run"

    def train(max_steps: int | None) -> dict:
        seed_everything(0)
        backbone = create_backbone("iresnet_tiny", embedding_size=16, width=0.125)
        objective = HeadObjective(MarginHead(4, 16, "arcface", 16.0, 0.3))
        return fit(run_name="t", backbone=backbone, objective=objective, dataset=open_training_data(data, "rec"),
                   optim=optim, run_dir=run_dir, config={"optim": optim.model_dump(mode="json")}, seed=3,
                   tracker=NullTracker(), max_steps=max_steps)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _damage_twice(run_dir, train, caplog)
    finally:
        torch.set_num_threads(threads)


def _damage_twice(run_dir: Path, train: Callable[[int | None], dict], caplog: pytest.LogCaptureFixture) -> None:
    train(2)
    DAMAGES["truncated at 50%"](run_dir / LAST)
    with caplog.at_level(logging.WARNING):
        assert train(2)["step"] == 2  # resumed from step 1, saved once
    assert _step(run_dir / PREVIOUS) == 1
    DAMAGES["garbage, same size"](run_dir / LAST)
    with caplog.at_level(logging.WARNING):
        assert train(None)["step"] == 4
    assert sorted(p.name for p in run_dir.iterdir()) == [LAST, f"{LAST}.damaged-1", f"{LAST}.damaged-2", PREVIOUS]
    assert caplog.text.count(f"resuming from {run_dir / PREVIOUS} (step 1)") == 2
