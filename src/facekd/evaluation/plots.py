"""ROC figures (PNG for MLflow) and downsampled ROC points (JSON for DVC plots).

Figures are built on ``matplotlib.figure.Figure`` with an Agg canvas, never through pyplot, so no
global figure state leaks between calls or threads.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from facekd.errors import DataError
from facekd.fsio import atomic_path

FAR_RANGE = (1e-6, 1.0)
_PLOT_POINTS = 1000  # a 15M-point IJB-C curve is downsampled to this before drawing


def _curve(fpr: np.ndarray, tpr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    fpr, tpr = np.asarray(fpr, dtype=np.float64), np.asarray(tpr, dtype=np.float64)
    if fpr.ndim != 1 or fpr.shape != tpr.shape or fpr.size == 0:
        raise DataError(f"a ROC curve needs equal-length 1-D fpr and tpr; got {fpr.shape} and {tpr.shape}")
    if (np.diff(fpr) < 0).any():
        raise DataError("ROC fpr must be non-decreasing (as sklearn's roc_curve returns it)")
    return fpr, tpr


def _downsample(fpr: np.ndarray, tpr: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """At most ~n points with fpr > 0, log-spaced in fpr; each is the highest point at or below its FAR."""
    positive = fpr > 0
    if not positive.any():
        return fpr[:0], tpr[:0]
    targets = np.logspace(np.log10(fpr[positive][0]), np.log10(fpr[-1]), n)
    # Last curve point with fpr <= target: the highest TPR reached by then (TPR is non-decreasing).
    idx = np.unique(np.searchsorted(fpr, targets * (1 + 1e-12), side="right") - 1)
    idx = idx[fpr[idx] > 0]
    return fpr[idx], tpr[idx]


def roc_points(fpr: np.ndarray, tpr: np.ndarray, n: int = 200) -> list[dict[str, float]]:
    """Downsampled ROC ``[{"fpr": ..., "tpr": ...}, ...]``, log-spaced over fpr > 0, for DVC plots."""
    fpr, tpr = _downsample(*_curve(fpr, tpr), n)
    return [{"fpr": float(f), "tpr": float(t)} for f, t in zip(fpr, tpr, strict=True)]


def roc_figure(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], title: str,
               bands: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None):
    """One ROC line per model on a log FAR axis (1e-6 .. 1); returns a ``matplotlib.figure.Figure``.

    bands: model -> (far (F,), low (F,), high (F,)) TAR interval, shaded in the model's colour.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, (fpr, tpr) in curves.items():
        x, y = _curve(fpr, tpr)
        x, y = (x[x > 0], y[x > 0]) if x.size <= _PLOT_POINTS else _downsample(x, y, _PLOT_POINTS)
        (line,) = ax.plot(x, y, lw=1.2, label=name)
        if bands and name in bands:
            far, low, high = bands[name]
            ax.fill_between(far, low, high, color=line.get_color(), alpha=0.2, lw=0)
    ax.set_xscale("log")
    ax.set_xlim(*FAR_RANGE)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("False accept rate (FAR)")
    ax.set_ylabel("True accept rate (TAR)")
    ax.set_title(title)
    ax.grid(True, which="major", linestyle="--", linewidth=0.6)
    if curves:
        ax.legend(loc="lower right")
    return fig


def save_png(fig, path: str | Path, *, dpi: int = 150) -> None:
    """Write ``fig`` as PNG atomically (no half-written file on failure)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
