"""What a training run tells its user while it runs: progress lines and MLflow loss points."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

# Seconds between progress lines where no terminal shows the bar (dvc repro, CI, Prefect logs): at
# full scale an epoch takes hours, so the per-epoch line alone leaves those logs silent for hours.
PROGRESS_EVERY_S = 30.0
# MLflow loss points per run: about LOG_POINTS whatever the run's length (a fixed "every 10 steps" left
# the embedded students' 74-step runs with 8 points), and at least one every LOG_EVERY_MAX steps.
LOG_POINTS = 100
LOG_EVERY_MAX = 100


def log_interval(total_steps: int) -> int:
    """Steps between MLflow metric points: every step for runs up to 2 * LOG_POINTS steps, then
    ``total_steps // LOG_POINTS`` (>= LOG_POINTS points), never more than LOG_EVERY_MAX."""
    return max(1, min(LOG_EVERY_MAX, total_steps // LOG_POINTS))


def _duration(seconds: float) -> str:
    """``3h05m``, ``4m10s``, ``12s``."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class ProgressLine:
    """A progress line every ``every_s`` seconds (step, throughput, loss, ETA) when enabled."""

    def __init__(self, run_name: str, start_step: int, total_steps: int, every_s: float, enabled: bool) -> None:
        self.run_name, self.start_step, self.total_steps = run_name, start_step, total_steps
        self.every_s, self.enabled = every_s, enabled
        self.started = self.last = time.perf_counter()
        self.images = 0

    def update(self, step: int, images: int, loss: float) -> None:
        self.images += images
        now = time.perf_counter()
        if not self.enabled or now - self.last < self.every_s:
            return
        self.last = now
        elapsed = max(now - self.started, 1e-9)  # this process's steps: a resumed run's rate is its own
        eta = (self.total_steps - step) * elapsed / max(step - self.start_step, 1)
        log.info("%s: step %d/%d, %.1f img/s, loss %.4f, ETA %s", self.run_name, step, self.total_steps,
                 self.images / elapsed, loss, _duration(eta))


@dataclass
class LogWindow:
    """Running sums between two log points."""

    sums: dict[str, float]
    steps: int = 0
    images: int = 0
    started: float = 0.0

    @classmethod
    def open(cls) -> "LogWindow":
        return cls(sums={}, started=time.perf_counter())

    def add(self, parts: dict[str, float], images: int) -> None:
        for k, v in parts.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.steps += 1
        self.images += images

    def means(self) -> dict[str, float]:
        return {k: v / max(self.steps, 1) for k, v in self.sums.items()}

    def state(self) -> dict[str, Any]:
        """The loss sums so far (checkpointed: a resumed run logs the same window means)."""
        return {"sums": dict(self.sums), "steps": self.steps}

    @classmethod
    def resume(cls, state: dict[str, Any] | None) -> "LogWindow":
        """A window continuing ``state``; images and clock restart (they measure this process)."""
        window = cls.open()
        if state:
            window.sums, window.steps = dict(state["sums"]), int(state["steps"])
        return window
