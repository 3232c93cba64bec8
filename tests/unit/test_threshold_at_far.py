"""The decision threshold at a FAR: the impostors it lets through and the genuine pairs it keeps."""
from __future__ import annotations

import math

import numpy as np
import pytest

from facekd.evaluation import metrics

IMPOSTOR = np.arange(10) / 10  # 0.0 .. 0.9
GENUINE = np.array([0.95, 0.85, 0.55, 0.35, 0.05])


def test_golden_thresholds():
    scores = metrics.SortedScores.from_split(GENUINE, IMPOSTOR)
    # FAR 0.1 allows one false accept: "same" above 0.8 lets only 0.9 through.
    got = scores.threshold_at_far([0.1, 0.25, 1.0, 0.05])
    assert got[0.1] == 0.8 and got[0.25] == 0.7
    assert got[1.0] < 0.0  # every pair accepted
    assert math.isnan(got[0.05])  # below one false accept in 10: not measurable
    assert metrics.threshold_report(scores, [0.1]) == {"threshold@far=1e-1": 0.8}


def test_ties_never_exceed_the_target():
    # Three impostors tie at 0.5: one false accept in four is allowed, the tie block is not.
    scores = metrics.SortedScores.from_split(np.array([0.9, 0.5]), np.array([0.5, 0.5, 0.5, 0.1]))
    assert scores.threshold_at_far([0.25])[0.25] == 0.5


@pytest.mark.parametrize("levels", [7, 0])
def test_threshold_keeps_far_and_gives_the_strict_tar(levels):
    rng = np.random.default_rng(levels)
    genuine, impostor = rng.normal(0.6, 0.2, 300), rng.normal(0.0, 0.2, 5000)
    if levels:  # heavy ties
        genuine, impostor = np.round(genuine * levels) / levels, np.round(impostor * levels) / levels
    scores = metrics.SortedScores.from_split(genuine, impostor)
    fars = [1e-3, 1e-2, 0.05, 0.3]
    strict = scores.tar_at_far_strict(fars)
    for far, threshold in scores.threshold_at_far(fars).items():
        assert np.mean(impostor > threshold) <= far
        assert np.mean(genuine > threshold) == pytest.approx(strict[far])


def test_ijb_evaluation_records_the_thresholds(tmp_path):
    """The evaluate stage's IJB result carries the threshold `facekd verify` decides with."""
    from facekd.config import EvaluateParams, SyntheticData
    from facekd.data import synthetic
    from facekd.evaluation.benchmarks import ijb_protocol

    cfg = SyntheticData(train_identities=2, images_per_identity=2, eval_identities=4, eval_images_per_identity=4,
                        pairs_per_set=20, ijb_media_per_template=1, ijb_images_per_media=1, workers=1)
    synthetic.generate(cfg, tmp_path / "train", tmp_path / "eval", progress=False)
    projection = np.random.default_rng(0).normal(size=(112 * 112 * 3, 8)).astype(np.float32)

    def embed(name, images):  # a fixed random projection of the pixels and of their mirror
        flat = [(x.reshape(len(x), -1).astype(np.float32) / 255) @ projection for x in (images, images[:, :, ::-1])]
        return np.concatenate(flat, axis=1)

    result = ijb_protocol(tmp_path / "eval" / "ijb", synthetic.IJB_NAME, embed, EvaluateParams())[0]
    assert result["num_impostor"] >= 10
    assert 0.1 >= 1 / result["num_impostor"] and -1.0 <= result["threshold@far=1e-1"] <= 1.0
    assert math.isnan(result["threshold@far=1e-6"])  # stage output turns NaN into null
