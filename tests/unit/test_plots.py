"""ROC figure (log FAR axis, one line per model), atomic PNG, downsampled DVC points."""
from __future__ import annotations

import json

import matplotlib.colors
import numpy as np
import pytest
from sklearn.metrics import roc_curve

from facekd.errors import DataError
from facekd.evaluation.plots import roc_figure, roc_points, save_png


def _curve(seed, n=4000, shift=1.5):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    scores = rng.normal(size=n) + shift * labels
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    return fpr, tpr


def test_figure_has_one_line_per_model_on_log_axis():
    fig = roc_figure({"teacher": _curve(0, shift=3), "student": _curve(1)}, "IJB-C 1:1")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    assert ax.get_xlim() == pytest.approx((1e-6, 1.0))
    assert [line.get_label() for line in ax.get_lines()] == ["teacher", "student"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["teacher", "student"]
    assert ax.get_title() == "IJB-C 1:1"
    # the 4001-point curve is downsampled for drawing, the points kept lie on it
    x = ax.get_lines()[1].get_xdata()
    assert 10 < len(x) <= 1000 and (x > 0).all()


def test_save_png_atomic(tmp_path):
    target = tmp_path / "plots" / "roc.png"
    save_png(roc_figure({"m": _curve(2)}, "roc"), target)
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in target.parent.iterdir()] == ["roc.png"]  # no temp file left


def test_roc_points_are_on_the_curve_and_json():
    fpr, tpr = _curve(3, n=20000)
    points = roc_points(fpr, tpr, n=50)
    assert 10 < len(points) <= 50
    json.dumps(points)
    xs = np.array([p["fpr"] for p in points])
    ys = np.array([p["tpr"] for p in points])
    assert (np.diff(xs) > 0).all() and (np.diff(ys) >= 0).all() and xs[0] > 0
    # each point is the highest curve point at its FPR
    for x, y in zip(xs, ys, strict=True):
        assert y == tpr[fpr <= x].max()
    assert xs[-1] == 1.0


def test_bad_curve():
    with pytest.raises(DataError, match="non-decreasing"):
        roc_points(np.array([0.5, 0.1]), np.array([0.2, 0.3]))
    with pytest.raises(DataError, match="equal-length"):
        roc_points(np.array([0.1]), np.array([0.2, 0.3]))


def test_bands_are_shaded_in_their_models_colour():
    far = np.geomspace(1e-3, 1.0, 5)
    fig = roc_figure({"teacher": _curve(0, shift=3), "student": _curve(1)}, "IJB-C 1:1",
                     bands={"student": (far, far * 0.5, np.minimum(far * 2, 1.0))})
    ax = fig.axes[0]
    (shade,) = ax.collections
    student = ax.get_lines()[1]
    assert tuple(shade.get_facecolor()[0][:3]) == pytest.approx(matplotlib.colors.to_rgb(student.get_color()))
    vertices = shade.get_paths()[0].vertices
    assert vertices[:, 0].min() == pytest.approx(1e-3) and vertices[:, 1].max() == pytest.approx(1.0)
