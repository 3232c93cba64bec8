"""The embedded synthetic dataset: determinism, disjoint identities, masks, and real-format outputs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from facekd.config import SyntheticData
from facekd.data import synthetic
from facekd.data.bins import decode_bin, load_bin
from facekd.data.folder import scan_identity_folders
from facekd.data.ijb_protocol import ARCFACE_TEMPLATE, load_ijb
from facekd.data.images import decode_image
from facekd.data.face_rec import FaceRecordFile
from facekd.data.synthfaces_render import render, render_specs, sample_identity
from facekd.errors import DataError

TINY = SyntheticData(
    train_identities=6, images_per_identity=4, eval_identities=4, eval_images_per_identity=4,
    pairs_per_set=20, ijb_media_per_template=2, ijb_images_per_media=2, workers=1,
)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("synth")
    summary = synthetic.generate(TINY, root / "train", root / "eval", progress=False)
    return root, summary


def test_training_rec_reads_back(tiny: tuple[Path, dict]) -> None:
    root, summary = tiny
    rec = FaceRecordFile(root / "train" / "train.rec")
    assert rec.num_classes == 6 == summary["train_identities"]
    assert np.bincount(rec.labels).tolist() == [4] * 6
    assert decode_image(rec.image_bytes(0), "rec image 0").shape == (112, 112, 3)


@pytest.mark.parametrize("name", ["synth_lfw.bin", "synth_cpfp.bin"])
def test_pair_sets_balanced_and_decodable(tiny: tuple[Path, dict], name: str) -> None:
    root, _ = tiny
    images, issame = decode_bin(root / "eval" / name)
    assert images.shape == (40, 112, 112, 3)
    assert issame.sum() == 10 and len(issame) == 20
    raw, _ = load_bin(root / "eval" / name)
    assert len(set(raw)) == len(raw)  # every pair side is its own render


def test_ijb_protocol_reads_back(tiny: tuple[Path, dict]) -> None:
    root, summary = tiny
    proto = load_ijb(root / "eval" / "ijb", synthetic.IJB_NAME)
    per_template = TINY.ijb_media_per_template * TINY.ijb_images_per_media
    assert len(proto.images) == summary["ijb_images"] == 4 * synthetic.templates_per_identity(TINY) * per_template
    assert proto.images.groupby("template_id")["media_id"].nunique().eq(TINY.ijb_media_per_template).all()
    assert proto.labels.sum() == summary["ijb_genuine_pairs"] == 4  # one pair of 2 templates per identity
    assert (proto.labels == 0).sum() == summary["ijb_impostor_pairs"] == 24  # all 28 pairs of 8 templates but 4
    assert ((proto.images["faceness"] > 0.5) & (proto.images["faceness"] <= 1)).all()
    assert proto.landmarks.shape == (len(proto.images), 5, 2)
    assert np.abs(np.median(proto.landmarks, 0) - ARCFACE_TEMPLATE).max() < 15  # eyes, nose, mouth where expected
    assert proto.gallery is not None and proto.probes is not None
    assert set(proto.gallery["gallery"]) == {"G1", "G2"}
    assert not set(proto.gallery["template_id"]) & set(proto.probes["template_id"])
    assert summary["ijb_non_mated_probes"] > 0


def test_mfr_folders_read_back(tiny: tuple[Path, dict]) -> None:
    root, summary = tiny
    probes, probe_labels, probe_names = scan_identity_folders(root / "eval" / "mfr" / "probes")
    gallery, _, gallery_names = scan_identity_folders(root / "eval" / "mfr" / "gallery")
    assert probe_names == gallery_names and len(probe_names) == 4
    assert len(probes) == summary["mfr_probes"] == 8 and len(gallery) == summary["mfr_gallery"] == 8
    assert decode_image(probes[0].read_bytes(), str(probes[0])).shape == (112, 112, 3)


def test_same_bytes_for_one_or_two_workers(tiny: tuple[Path, dict], tmp_path: Path) -> None:
    root, summary = tiny
    again = synthetic.generate(TINY.model_copy(update={"workers": 2}), tmp_path / "train", tmp_path / "eval",
                               progress=False)
    assert again == summary
    assert _files(tmp_path) == _files(root)


def test_seed_changes_images() -> None:
    cfg = TINY.model_copy(update={"images_per_identity": 2})
    first = render_specs((95, synthetic.train_specs(cfg, 0)))
    other = render_specs((95, synthetic.train_specs(cfg.model_copy(update={"seed": 1}), 0)))
    again = render_specs((95, synthetic.train_specs(cfg, 0)))
    assert [s.jpeg for s in first] == [s.jpeg for s in again]
    assert all(a.jpeg != b.jpeg for a, b in zip(first, other, strict=True))


def test_train_and_eval_identities_disjoint() -> None:
    cfg = TINY.model_copy(update={"train_identities": 300, "eval_identities": 100})
    train = synthetic.identity_fingerprints(cfg, synthetic.Stream.TRAIN_IDENTITY)
    evaluation = synthetic.identity_fingerprints(cfg, synthetic.Stream.EVAL_IDENTITY)
    assert len(set(train)) == 300 and len(set(evaluation)) == 100
    synthetic.check_disjoint(train, evaluation)
    with pytest.raises(DataError, match="evaluation identities equal training identities"):
        synthetic.check_disjoint(train, evaluation + train[:1])


def test_mask_share_follows_config() -> None:
    for share in (0.0, 0.25, 1.0):
        cfg = TINY.model_copy(update={"mask_share": share, "images_per_identity": 20})
        masks = [spec.mask for i in range(100) for spec in synthetic.train_specs(cfg, i)]
        assert abs(np.mean(masks) - share) < 0.03


def test_mask_covers_lower_face_only() -> None:
    identity = sample_identity(np.random.default_rng([0, 1, 5]))
    plain = render(identity, np.random.default_rng(7), mask=False, nuisance=0.0).image.astype(int)
    masked = render(identity, np.random.default_rng(7), mask=True, nuisance=0.0).image.astype(int)
    changed = np.abs(plain - masked).max(axis=2) > 30  # (112, 112)
    assert changed[70:].mean() > 0.2  # mouth and chin hidden
    assert changed[:40].mean() < 0.01  # forehead and hair untouched


def test_pair_labels_balanced_in_every_fold() -> None:
    labels = synthetic.pair_labels(600)
    assert [fold.sum() for fold in np.split(labels, 10)] == [30] * 10
    assert synthetic.pair_labels(25).sum() == 12


def test_cross_pose_pairs_are_frontal_against_profile() -> None:
    specs, issame = synthetic.cpfp_specs(TINY)
    yaws = np.array([spec.yaw for spec in specs]).reshape(-1, 2)
    assert np.abs(yaws[:, 0]).max() < 0.25
    assert (np.abs(yaws[:, 1]) >= synthetic.PROFILE_YAW[0]).all()
    ids = np.array([spec.identity for spec in specs]).reshape(len(issame), 2, -1)
    assert ((ids[:, 0] == ids[:, 1]).all(axis=1) == issame).all()


def test_impostor_pairs_enumerated_or_sampled() -> None:
    rng = np.random.default_rng(0)
    small = np.repeat(np.arange(4), 2)  # 8 templates: 24 impostor pairs exist
    pairs = synthetic.impostor_pairs(rng, small, 100)
    assert len(pairs) == 24
    large = np.repeat(np.arange(300), 3)
    pairs = synthetic.impostor_pairs(rng, large, 5000)
    assert len(pairs) == 5000 == len({tuple(p) for p in pairs.tolist()})
    assert (pairs[:, 0] < pairs[:, 1]).all() and (large[pairs[:, 0]] != large[pairs[:, 1]]).all()


def test_media_share_a_session() -> None:
    specs = synthetic.ijb_specs(TINY, synthetic.ijb_layout(TINY))
    per_media = TINY.ijb_images_per_media
    sessions = [spec.session for spec in specs]
    assert all(len(set(sessions[i:i + per_media])) == 1 for i in range(0, len(specs), per_media))
    assert len(set(sessions)) == len(specs) // per_media


def test_template_pairs_all_genuine_and_many_impostors() -> None:
    subjects = np.repeat(np.arange(50), 3)
    pairs, labels = synthetic.template_pairs(np.random.default_rng(0), np.arange(1, 151), subjects)
    assert labels.sum() == 150  # 3 pairs among 3 templates, 50 subjects
    assert (labels == 0).sum() == synthetic.IJB_IMPOSTOR_RATIO * 150
    same = subjects[pairs[:, 0] - 1] == subjects[pairs[:, 1] - 1]
    assert (same == (labels == 1)).all()


def test_one_to_n_galleries_and_open_set_probes() -> None:
    cfg = TINY.model_copy(update={"eval_identities": 20})
    templates = synthetic.ijb_layout(cfg).drop_duplicates("template_id")
    g1, g2, probes = synthetic.one_to_n(np.random.default_rng(0), templates)
    assert not set(g1["subject_id"]) & set(g2["subject_id"])
    assert len(g1) + len(g2) == 18  # 10% of the identities stay out of both galleries
    assert not set(probes["template_id"]) & set(pd.concat([g1, g2])["template_id"])
    galleried = set(g1["subject_id"]) | set(g2["subject_id"])
    assert galleried <= set(probes["subject_id"])  # every enrolled identity has mated probes
    assert len(set(probes["subject_id"]) - galleried) == 2
