"""IJB 1:1 / 1:N scoring against loops written after insightface's eval_ijbc.py and IJB_evals.py."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_curve
from sklearn.preprocessing import normalize

from facekd.errors import DataError
from facekd.evaluation import ijb
from facekd.evaluation.metrics import rate_key, tar_at_far, tar_at_far_strict


def _reference_templates(img_feats, templates, medias):
    """Loop over templates, then medias: mean per media, sum per template, L2-normalise."""
    unique_templates = np.unique(templates)
    out = np.zeros((len(unique_templates), img_feats.shape[1]))
    for i, t in enumerate(unique_templates):
        (ind_t,) = np.where(templates == t)
        feats, face_medias = img_feats[ind_t], medias[ind_t]
        per_media = [feats[face_medias == m].mean(axis=0) for m in np.unique(face_medias)]
        out[i] = np.sum(per_media, axis=0)
    return normalize(out), unique_templates


def _reference_scores(template_feats, unique_templates, p1, p2, batch=100_000):
    """template id -> row table, cosine in batches of 100k pairs."""
    table = np.zeros(max(unique_templates) + 1, dtype=int)
    table[unique_templates] = np.arange(len(unique_templates))
    score = np.zeros(len(p1))
    for s in range(0, len(p1), batch):
        f1 = template_feats[table[p1[s : s + batch]]]
        f2 = template_feats[table[p2[s : s + batch]]]
        score[s : s + batch] = np.sum(f1 * f2, -1)
    return score


def _reference_image_feats(img_feats, faceness, flip, norm, detector):
    d = img_feats.shape[1] // 2
    feats = img_feats[:, :d] + img_feats[:, d:] if flip else img_feats[:, :d]
    if norm:
        feats = feats / np.sqrt(np.sum(feats**2, -1, keepdims=True))
    if detector:
        feats = feats * faceness[:, None]
    return feats


def _protocol(rng, n_images, n_gallery, n_probe, n_pairs, d, subjects=None):
    """Random IJB-like protocol: gallery x probe pairs (template ids sparse, like IJB's)."""
    n_templates = n_gallery + n_probe
    ids = np.sort(rng.choice(np.arange(1, 10 * n_templates), n_templates, replace=False))
    templates = ids[np.concatenate([np.arange(n_templates), rng.integers(0, n_templates, n_images - n_templates)])]
    medias = rng.integers(0, max(2, n_images // 6), n_images)  # repeated medias -> real averaging
    subjects = rng.integers(0, n_gallery, n_templates) if subjects is None else subjects
    subjects[:n_gallery] = np.arange(n_gallery)
    centres = rng.normal(size=(n_gallery, d))
    img_feats = np.concatenate(
        [centres[subjects[np.searchsorted(ids, templates)]] + rng.normal(scale=2.0, size=(n_images, d))
         for _ in range(2)], axis=1).astype(np.float32)  # (N, 2d) [img, flip]
    faceness = rng.uniform(0.1, 1.0, n_images).astype(np.float32)
    cells = rng.choice(n_gallery * n_probe, n_pairs, replace=False)
    pairs = np.stack([ids[cells // n_probe], ids[n_gallery + cells % n_probe]], axis=1)
    labels = (subjects[np.searchsorted(ids, pairs[:, 0])] == subjects[np.searchsorted(ids, pairs[:, 1])]).astype(int)
    return img_feats, templates, medias, faceness, pairs, labels, ids, subjects


@pytest.fixture(scope="module")
def small():
    return _protocol(np.random.default_rng(0), n_images=900, n_gallery=20, n_probe=130, n_pairs=2000, d=16)


def test_template_features_equal_reference_loops(small):
    img_feats, templates, medias, faceness, *_ = small
    feats = ijb.image_features(img_feats) * faceness[:, None]
    ids, got = ijb.template_features(ijb.image_features(img_feats), templates, medias, faceness)
    ref, ref_ids = _reference_templates(feats, templates, medias)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(got, ref, atol=1e-6)


@pytest.mark.parametrize(("flip", "norm", "detector"), list(itertools.product([True, False], repeat=3)))
def test_every_mode_equals_reference(small, flip, norm, detector):
    img_feats, templates, medias, faceness, pairs, labels, *_ = small
    ref_tf, ref_ids = _reference_templates(
        _reference_image_feats(img_feats, faceness, flip, norm, detector), templates, medias)
    ref = _reference_scores(ref_tf, ref_ids, pairs[:, 0], pairs[:, 1])
    got = ijb.ijb_scores(img_feats, templates, medias, faceness, pairs,
                         use_flip_feats=flip, norm=norm, detector=detector)
    np.testing.assert_allclose(got, ref, atol=1e-6)


@pytest.mark.parametrize(("flip", "norm", "detector"), list(itertools.product([True, False], repeat=3)))
def test_image_features_path_equals_fused_pooling(small, flip, norm, detector):
    img_feats, templates, medias, faceness, *_ = small
    modes = {"use_flip_feats": flip, "norm": norm, "detector": detector}
    feats = ijb.image_features(img_feats, faceness, **modes)
    np.testing.assert_allclose(feats, _reference_image_feats(img_feats, faceness, flip, norm, detector), rtol=1e-6)
    ids, via_images = ijb.template_features(feats, templates, medias)
    fused_ids, fused = ijb.ijb_template_features(img_feats, templates, medias, faceness, **modes)
    np.testing.assert_array_equal(ids, fused_ids)
    np.testing.assert_allclose(via_images, fused, atol=1e-6)


def test_ijb_roc_corners(small):
    img_feats, templates, medias, faceness, pairs, labels, *_ = small
    fpr, tpr = ijb.ijb_roc(img_feats, templates, medias, faceness, pairs, labels)
    report = ijb.ijb_1to1(img_feats, templates, medias, faceness, pairs, labels)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1
    assert np.trapezoid(tpr, fpr) == pytest.approx(report["auc"], abs=1e-12)
    assert len(fpr) <= 2 * labels.sum() + 2


@pytest.mark.parametrize("method", ["gemm", "gather", "auto"])
def test_pair_scoring_paths_agree(small, method, monkeypatch):
    img_feats, templates, medias, faceness, pairs, *_ = small
    ids, tf = ijb.template_features(ijb.image_features(img_feats), templates, medias, faceness)
    ref = _reference_scores(tf.astype(np.float64), ids, pairs[:, 0], pairs[:, 1])
    monkeypatch.setattr(ijb, "_GEMM_CELLS", 64)  # force many GEMM blocks
    np.testing.assert_allclose(ijb.pair_scores(ids, tf, pairs, method=method), ref, atol=1e-6)


def test_ijb_1to1_report(small):
    img_feats, templates, medias, faceness, pairs, labels, *_ = small
    report = ijb.ijb_1to1(img_feats, templates, medias, faceness, pairs, labels, fars=(1e-3, 1e-1))
    scores = ijb.ijb_scores(img_feats, templates, medias, faceness, pairs)
    assert report["tar@far=1e-1"] == tar_at_far(scores, labels, [1e-1])[1e-1]
    assert 0.5 < report["auc"] <= 1.0
    assert report["num_genuine"] == labels.sum() and report["num_impostor"] == (labels == 0).sum()
    assert report["modes"] == {"use_flip_feats": True, "norm": False, "detector": True}


def test_golden_tar_from_built_templates():
    # Hand-set unit template features (one image each): every cosine is known exactly.
    e = np.eye(3, dtype=np.float32)
    feats = np.stack([e[0], e[0], 0.6 * e[0] + 0.8 * e[1], e[1], 0.8 * e[0] + 0.6 * e[1], e[2], -e[0]])
    template_ids = np.array([10, 20, 30, 40, 50, 60, 70])
    pairs = np.array([[10, 20], [10, 30], [10, 70], [20, 50], [10, 40], [40, 60]])
    labels = np.array([1, 1, 1, 0, 0, 0])
    kwargs = {"use_flip_feats": False, "feats_have_flip": False, "detector": False}
    scores = ijb.ijb_scores(feats, template_ids, np.arange(7), None, pairs, **kwargs)
    np.testing.assert_allclose(scores, [1.0, 0.6, -1.0, 0.8, 0.0, 0.0], atol=1e-7)
    # Genuine 1, 0.6, -1; impostors 0.8, 0, 0: reachable FARs 0, 1/3, 1 with TAR 1/3, 2/3, 1.
    report = ijb.ijb_1to1(feats, template_ids, np.arange(7), None, pairs, labels, fars=(0.3, 0.35, 0.9), **kwargs)
    assert math.isnan(report["tar@far=3e-1"])  # below one false accept in three
    assert (report["tar@far=3.5e-1"], report["tar@far=9e-1"]) == (2 / 3, 1.0)  # nearest 1/3, nearest 1
    assert tar_at_far_strict(scores, labels, [0.35, 0.9]) == {0.35: 2 / 3, 0.9: 2 / 3}


def test_unknown_template_in_pairs_names_the_row(small):
    img_feats, templates, medias, faceness, pairs, *_ = small
    ids, tf = ijb.template_features(ijb.image_features(img_feats), templates, medias, faceness)
    bad = pairs.copy()
    bad[7, 1] = -5
    with pytest.raises(DataError, match=r"\(7, 1\): template -5"):
        ijb.pair_scores(ids, tf, bad)


def test_mode_errors(small):
    img_feats, templates, medias, faceness, pairs, *_ = small
    with pytest.raises(DataError, match="faceness"):
        ijb.ijb_scores(img_feats, templates, medias, None, pairs)
    with pytest.raises(DataError, match="flip half"):
        ijb.image_features(img_feats, feats_have_flip=False)
    with pytest.raises(DataError, match="same N images"):
        ijb.template_features(img_feats, templates[:-1], medias)


def test_fiftieth_of_ijbc_scale():
    """~1/50 of IJB-C: 9,388 images, 462 templates, 313k pairs; scores and TAR as the reference."""
    rng = np.random.default_rng(50)
    img_feats, templates, medias, faceness, pairs, labels, *_ = _protocol(
        rng, n_images=9388, n_gallery=70, n_probe=392, n_pairs=313_170 // 12, d=64)
    pairs = np.tile(pairs, (12, 1))  # 313k pairs (repeats are legal and keep the reference cheap)
    labels = np.tile(labels, 12)
    ref_tf, ref_ids = _reference_templates(
        _reference_image_feats(img_feats, faceness, True, False, True), templates, medias)
    ref = _reference_scores(ref_tf, ref_ids, pairs[:, 0], pairs[:, 1])
    got = ijb.ijb_scores(img_feats, templates, medias, faceness, pairs)
    np.testing.assert_allclose(got, ref, atol=1e-6)
    fars = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
    report = ijb.ijb_1to1(img_feats, templates, medias, faceness, pairs, labels, fars)
    fpr, tpr, _ = roc_curve(labels, ref, drop_intermediate=False)
    fpr, tpr = fpr[::-1], tpr[::-1]
    for f in fars:
        expected = tpr[np.argmin(np.abs(fpr - f))]
        # float32 GEMM vs float64 reference may swap near-equal scores: allow one tiled group (12).
        assert report[rate_key("tar@far", f)] == pytest.approx(expected, abs=12.5 / labels.sum())


# ---------------------------------------------------------------- 1:N


def _reference_1n(sim, probe_ids, gallery_ids, fpirs):
    """insightface evaluation_1N loop (one gallery entry per subject)."""
    top1, pos, neg, non = 0, [], [], []
    for i, q in enumerate(probe_ids):
        if q in gallery_ids:
            top1 += np.argwhere(gallery_ids == q)[0, 0] == np.argsort(sim[i])[::-1][0]
            pos.append(sim[i][gallery_ids == q][0])
            neg.append(sim[i][gallery_ids != q])
        else:
            non.append(sim[i])
    pos, neg = np.array(pos), np.array(neg)
    top_non = np.sort(np.array(non).max(1))[::-1]
    tpir = [np.sum((pos > neg.max(1)) & (pos > top_non[int(np.ceil(len(top_non) * f)) - 1])) / len(pos)
            for f in fpirs]
    return top1, len(pos), tpir


def test_1toN_two_galleries_like_insightface():
    rng = np.random.default_rng(7)
    n_sub, d = 40, 16
    centres = rng.normal(size=(n_sub, d))
    g_ids = np.arange(n_sub)  # template id == subject for the gallery
    p_sub = rng.integers(0, n_sub, 150)
    p_ids = 1000 + np.arange(150)
    ids = np.concatenate([g_ids, p_ids])
    probe_feats = centres[p_sub] + rng.normal(scale=1.2, size=(150, d))
    feats = normalize(np.concatenate([centres, probe_feats])).astype(np.float32)
    gallery = pd.DataFrame({"template_id": g_ids, "subject_id": g_ids, "gallery": np.where(g_ids < 20, "G1", "G2")})
    probes = pd.DataFrame({"TEMPLATE_ID": np.repeat(p_ids, 2), "SUBJECT_ID": np.repeat(p_sub, 2)})  # CSV-like rows
    fpirs = (0.05, 0.3)
    got = ijb.ijb_1toN(ids, feats, gallery, probes, fpirs=fpirs, ks=(1, 5))
    hits, mated, tpirs = 0, 0, []
    for part in ("G1", "G2"):
        g = g_ids[(g_ids < 20) == (part == "G1")]
        top1, n, tpir = _reference_1n(feats[n_sub:] @ feats[g].T, p_sub, g, fpirs)
        hits, mated = hits + top1, mated + n
        tpirs.append(tpir)
        assert got["galleries"][part]["rank1"] == top1 / n
        assert got["galleries"][part]["tpir@fpir=5e-2"] == tpir[0]
    assert got["rank1"] == hits / mated
    assert got["tpir@fpir=3e-1"] == pytest.approx(np.mean([t[1] for t in tpirs]), abs=1e-15)
    assert got["galleries"]["G1"]["num_mated"] + got["galleries"]["G2"]["num_mated"] == 150
    assert 0 < got["rank1"] < got["rank5"] <= 1
    assert "rank1_ci_low" not in got
    from facekd.config import BootstrapParams

    bounded = ijb.ijb_1toN(ids, feats, gallery, probes, fpirs=fpirs, ks=(1, 5), bootstrap=BootstrapParams(resamples=200))
    assert bounded["rank1_ci_low"] < got["rank1"] < bounded["rank1_ci_high"]


def test_1toN_rejects_a_template_with_two_subjects():
    ids = np.array([1, 2, 3])
    feats = np.eye(3, dtype=np.float32)
    gallery = pd.DataFrame({"template_id": [1, 1], "subject_id": [5, 6]})
    probes = pd.DataFrame({"template_id": [3], "subject_id": [5]})
    with pytest.raises(DataError, match="two subjects"):
        ijb.ijb_1toN(ids, feats, gallery, probes)
    assert math.isnan(ijb.ijb_1toN(ids, feats, gallery.iloc[:1], probes)["tpir@fpir=1e-2"])
