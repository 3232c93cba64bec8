"""Checkpoints: atomic save with a previous copy, fallback on damage, config guard, safe load."""
from __future__ import annotations

import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from facekd.errors import TrainingError
from facekd.training.checkpoint import (capture_rng, check_config, config_diff, config_hash, load_checkpoint,
                                        load_latest, restore_rng, save_checkpoint)


def _state(step: int) -> dict:
    return {"step": step, "model": {"w": torch.full((3,), float(step))}, "config": {}, "rng": capture_rng()}


def test_save_keeps_previous_and_leaves_no_temp(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "last.pt", _state(1))
    save_checkpoint(tmp_path / "last.pt", _state(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "prev.pt"]
    assert load_checkpoint(tmp_path / "prev.pt")["step"] == 1
    assert load_latest(tmp_path)["step"] == 2


def test_truncated_last_falls_back_to_prev(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    save_checkpoint(tmp_path / "last.pt", _state(1))
    save_checkpoint(tmp_path / "last.pt", _state(2))
    data = (tmp_path / "last.pt").read_bytes()
    (tmp_path / "last.pt").write_bytes(data[: len(data) // 2])
    state = load_latest(tmp_path)
    assert state["step"] == 1
    assert torch.equal(state["model"]["w"], torch.ones(3))
    assert "last.pt" in caplog.text


def test_every_file_damaged_is_an_error_naming_the_folder(tmp_path: Path) -> None:
    (tmp_path / "last.pt").write_bytes(b"garbage")
    with pytest.raises(TrainingError, match=r"last\.pt.*delete that folder"):
        load_latest(tmp_path)


def test_empty_run_dir_has_no_checkpoint(tmp_path: Path) -> None:
    assert load_latest(tmp_path / "missing") is None


def test_config_diff_names_dotted_keys(tmp_path: Path) -> None:
    old = {"optim": {"lr": 0.1, "epochs": 2}, "head": {"margin": 0.5}}
    new = {"optim": {"lr": 0.2, "epochs": 2}, "head": {"margin": 0.5, "scale": 64}}
    assert config_diff(old, new) == ["head.scale: <absent> -> 64", "optim.lr: 0.1 -> 0.2"]
    state = {"step": 7, "config": old, "config_hash": config_hash(old)}
    check_config(state, {"head": {"margin": 0.5}, "optim": {"epochs": 2, "lr": 0.1}}, tmp_path)  # order-free
    with pytest.raises(TrainingError, match=r"(?s)optim\.lr: 0\.1 -> 0\.2.*Delete .*restore"):
        check_config(state, new, tmp_path)


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_code_is_refused_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "last.pt"
    with open(path, "wb") as fh:
        torch.save({"step": 1, "payload": _Exploit(marker)}, fh, pickle_module=pickle)
    with pytest.raises(TrainingError, match="unreadable checkpoint"):
        load_checkpoint(path)
    with pytest.raises(TrainingError):
        load_latest(tmp_path)
    assert not marker.exists()


def test_rng_round_trip_through_a_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    np.random.standard_normal()  # leaves a cached gaussian in numpy's state
    save_checkpoint(tmp_path / "last.pt", {"step": 0, "rng": capture_rng()})
    expected = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)])
    restore_rng(load_latest(tmp_path)["rng"])
    got = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)])
    assert torch.equal(expected[0], got[0])
    assert np.array_equal(expected[1], got[1])
    assert expected[2] == got[2]
