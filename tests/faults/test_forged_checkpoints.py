"""Issue 14, class 8: a forged or foreign checkpoint (right config, wrong contents) is one clear
TrainingError naming the run folder, never a traceback, and the checkpoint is left as it was."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from facekd.config import OptimParams
from facekd.data.dataset import open_training_data
from facekd.errors import TrainingError
from facekd.mlops.tracking import NullTracker
from facekd.models.heads import MarginHead
from facekd.models.registry import create_backbone
from facekd.training.checkpoint import LAST, load_checkpoint
from facekd.training.loop import fit
from facekd.training.sampling import seed_everything
from tests.integration.test_training_loop import write_tiny_rec

pytestmark = pytest.mark.slow
OPTIM = OptimParams(epochs=2, batch_size=8, lr=0.05, checkpoint_every=1, workers=0)  # 4 steps


def _wider(state: dict) -> None:
    key = next(k for k, v in state["model"].items() if v.ndim == 4)
    state["model"][key] = torch.zeros(state["model"][key].shape[0] + 1, *state["model"][key].shape[1:])


def _drop(part: str, key_of: Callable[[dict], str]) -> Callable[[dict], None]:
    return lambda state: state[part].pop(key_of(state[part]))


FORGERIES: dict[str, Callable[[dict], None]] = {
    "conv weight of another shape": _wider,
    "model key missing": _drop("model", lambda m: next(iter(m))),
    "extra model key": lambda s: s["model"].__setitem__("intruder.weight", torch.zeros(3)),
    "head of another class count": lambda s: s["objective"].__setitem__(
        next(iter(s["objective"])), torch.zeros(7, 16)),
    "optimizer state dropped": lambda s: s["optimizer"].pop("state"),
    "scheduler state not a dict": lambda s: s.__setitem__("scheduler", [1, 2]),
    "step 2.5": lambda s: s.__setitem__("step", 2.5),
    "step a string": lambda s: s.__setitem__("step", "2"),
    "step negative": lambda s: s.__setitem__("step", -1),
    "step past the run": lambda s: s.__setitem__("step", 10**18),
    "step True": lambda s: s.__setitem__("step", True),
}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_rec(tmp_path_factory.mktemp("data"))


def _train(run_dir: Path, data: Path, max_steps: int | None) -> dict:
    seed_everything(0)
    backbone = create_backbone("iresnet_tiny", embedding_size=16, width=0.125)
    objective = MarginHead(4, 16, "arcface", 16.0, 0.3)
    from facekd.training.objectives import HeadObjective

    return fit(run_name="t", backbone=backbone, objective=HeadObjective(objective),
               dataset=open_training_data(data, "rec"), optim=OPTIM, run_dir=run_dir,
               config={"optim": OPTIM.model_dump(mode="json")}, seed=3, tracker=NullTracker(), max_steps=max_steps)


@pytest.mark.parametrize("forgery", list(FORGERIES))
def test_a_forged_checkpoint_is_a_clear_error(tmp_path: Path, data: Path, forgery: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    _train(run_dir, data, max_steps=2)
    state = load_checkpoint(run_dir / LAST)
    FORGERIES[forgery](state)
    torch.save(state, run_dir / LAST)
    forged = (run_dir / LAST).read_bytes()
    with pytest.raises(TrainingError) as err:
        _train(run_dir, data, max_steps=None)
    message = str(err.value)
    assert str(run_dir) in message and "start over" in message and "\n" not in message, message
    assert (run_dir / LAST).read_bytes() == forged  # nothing overwritten: the user decides
