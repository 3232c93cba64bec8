"""Progress by time where no terminal shows the bar (issue 19.9): under DVC, CI or Prefect the
per-epoch line alone is hours apart at full scale."""
from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from tests.integration.test_training_loop import _fit, write_tiny_rec

pytestmark = pytest.mark.usefixtures("run_in_tmp")

PROGRESS = re.compile(r"^t: step (\d+)/4, [\d.]+ img/s, loss [\d.]+, ETA \d+(h\d\dm|m\d\ds|s)$")
EPOCH = re.compile(r"^t: epoch \d/2 done")


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("facekd.training.")]


def test_progress_lines_follow_the_interval_and_epoch_lines_stay(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    data = write_tiny_rec(tmp_path / "data")  # 16 images, batch 8, 2 epochs: 4 steps
    with caplog.at_level(logging.INFO, logger="facekd.training"):
        _fit(tmp_path / "every-step", data, progress_every_s=0.0)
    lines = _lines(caplog)
    steps = [int(m.group(1)) for line in lines if (m := PROGRESS.match(line))]
    assert steps == [1, 2, 3, 4], lines
    assert len([line for line in lines if EPOCH.match(line)]) == 2, lines

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="facekd.training"):
        _fit(tmp_path / "hourly", data, progress_every_s=3600.0)
    lines = _lines(caplog)
    assert not [line for line in lines if PROGRESS.match(line)], lines
    assert len([line for line in lines if EPOCH.match(line)]) == 2, lines
