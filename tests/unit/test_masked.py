"""MFR-style masked verification: all probe x gallery pairs, strict TAR at FAR <= target."""
from __future__ import annotations

import math

import numpy as np
import pytest

from facekd.errors import DataError
from facekd.evaluation.masked import masked_roc, masked_verification
from facekd.evaluation.metrics import tar_at_far_strict


def test_golden_scores():
    # Gallery: one unit vector per identity 0..3. Probe cosines are set by construction.
    gallery = np.eye(4, dtype=np.float32)
    probes = np.array([[1.0, 0.2, 0, 0], [0.1, 1.0, 0.5, 0], [0.9, 0, 0, 0.3]], dtype=np.float32)
    probe_ids = np.array([0, 1, 3])  # probe 2 is identity 3 but closer to identity 0
    got = masked_verification(probes * 3.0, probe_ids, gallery, np.arange(4), far=0.2)
    # 3 genuine, 9 impostor pairs: lowest FAR 1/9; FAR 0.2 allows one false accept (the 0.9 cosine
    # of probe 2 to identity 0), so the threshold sits just above the next impostor (cos 0.446).
    assert got["num_genuine"] == 3 and got["num_impostor"] == 9
    assert got["lowest_supported_far"] == pytest.approx(1 / 9)
    assert got["tar@far<=2e-1"] == pytest.approx(2 / 3)  # probe 2's genuine cos 0.316 is below
    assert got["tar@lowest_supported_far"] == pytest.approx(2 / 3)


def test_matches_strict_reading_on_random_sets():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(30, 16))
    gallery_ids = np.repeat(np.arange(30), 2)
    probe_ids = rng.integers(0, 30, 120)
    gallery = centres[gallery_ids] + rng.normal(scale=0.8, size=(60, 16))
    probes = centres[probe_ids] + rng.normal(scale=1.2, size=(120, 16))
    got = masked_verification(probes, probe_ids, gallery, gallery_ids, far=1e-3)
    g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    p = probes / np.linalg.norm(probes, axis=1, keepdims=True)
    scores = (p @ g.T).ravel()
    labels = (probe_ids[:, None] == gallery_ids[None, :]).ravel().astype(int)
    assert got["tar@far<=1e-3"] == pytest.approx(tar_at_far_strict(scores, labels, [1e-3])[1e-3], abs=1e-12)
    assert 0 < got["tar@far<=1e-3"] < 1
    fpr, tpr = masked_roc(probes, probe_ids, gallery, gallery_ids)
    assert np.trapezoid(tpr, fpr) == pytest.approx(got["auc"], abs=1e-12)
    assert tpr[fpr <= 1e-3].max() == got["tar@far<=1e-3"]


def test_far_below_support_is_nan():
    got = masked_verification(np.eye(3), np.arange(3), np.eye(3), np.arange(3), far=1e-4)
    assert math.isnan(got["tar@far<=1e-4"])
    assert got["lowest_supported_far"] == pytest.approx(1 / 6) and got["tar@lowest_supported_far"] == 1.0


def test_bad_shapes():
    with pytest.raises(DataError, match="ids"):
        masked_verification(np.eye(3), np.arange(2), np.eye(3), np.arange(3))
    with pytest.raises(DataError, match="width"):
        masked_verification(np.eye(3), np.arange(3), np.eye(4), np.arange(4))


def _masked_set(n_ids: int, seed: int = 0, per_id: int = 12):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_ids, 32))
    ids = np.repeat(np.arange(n_ids), per_id)
    gallery = centres[ids] + rng.normal(scale=1.0, size=(ids.size, 32))
    probes = centres[ids] + rng.normal(scale=1.6, size=(ids.size, 32))
    return probes, ids, gallery, ids


def _repeated_reading(probes, probe_ids, gallery, gallery_ids, drawn, far):
    """The resampled TAR the slow way: every pair repeated by its weight, read by SortedScores."""
    from facekd.evaluation.metrics import SortedScores

    p = probes / np.linalg.norm(probes, axis=1, keepdims=True)
    g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    sim = p @ g.T
    same = probe_ids[:, None] == gallery_ids[None, :]
    weight = np.where(same, drawn[probe_ids][:, None], drawn[probe_ids][:, None] * drawn[gallery_ids][None, :])
    return SortedScores.from_split(np.repeat(sim[same], weight[same]),
                                   np.repeat(sim[~same], weight[~same])).tar_at_far_strict([far])[far]


@pytest.mark.parametrize("top", [(4096, 64), (1, 1)], ids=["default", "threshold-beyond-the-top"])
def test_resampled_reading_equals_repeating_every_pair(top, monkeypatch):
    from facekd.evaluation import masked
    from facekd.evaluation.masked import _similarity, _WeightedPairs

    monkeypatch.setattr(masked, "TOP_IMPOSTORS", top[0])
    monkeypatch.setattr(masked, "TOP_PER_FALSE_ACCEPT", top[1])

    probes, pid, gallery, gid = _masked_set(40)
    pairs = _WeightedPairs.of(*_similarity(probes, pid, gallery, gid))
    ones = np.ones(40, dtype=np.int64)
    assert pairs.strict_tar(ones, 1e-4) == masked_verification(probes, pid, gallery, gid)["tar@far<=1e-4"]
    rng = np.random.default_rng(1)
    for far in (1e-4, 1e-3, 0.3):
        for _ in range(4):
            drawn = np.bincount(rng.integers(0, 40, 40), minlength=40)
            assert pairs.strict_tar(drawn, far) == _repeated_reading(probes, pid, gallery, gid, drawn, far)


def test_masked_interval_holds_the_value_and_shrinks_with_identities():
    from facekd.config import BootstrapParams
    from facekd.evaluation.masked import masked_interval

    cfg = BootstrapParams(resamples=200)
    widths = []
    for n_ids in (30, 240):
        probes, pid, gallery, gid = _masked_set(n_ids, per_id=4)
        value = masked_verification(probes, pid, gallery, gid, far=1e-3)["tar@far<=1e-3"]
        low, high = masked_interval(probes, pid, gallery, gid, 1e-3, cfg)
        assert low <= value <= high
        widths.append(high - low)
    assert widths[1] < 0.6 * widths[0]
    assert masked_interval(probes, pid, gallery, gid, 1e-3, cfg) == (low, high)  # the seed repeats it
    off = masked_interval(probes, pid, gallery, gid, 1e-3, BootstrapParams(resamples=0))
    assert all(math.isnan(v) for v in off)
