"""The embedded synthetic face dataset, written in the field's own formats.

:func:`generate` renders procedural faces (:mod:`facekd.data.synthfaces_render`) and writes

- ``<train_dir>/train.rec`` + ``train.idx`` (insightface layout; a ``mask_share`` of images masked),
- ``<eval_dir>/synth_lfw.bin`` (moderate nuisance) and ``synth_cpfp.bin`` (frontal vs. strong yaw),
- ``<eval_dir>/ijb/`` (insightface IJB packaging, protocol ``ijbs``: templates made of media made of
  images, all genuine and sampled impostor template pairs, 1:N galleries G1/G2 and mixed probes),
- ``<eval_dir>/mfr/probes/<identity>/<k>.jpg`` (masked) and ``mfr/gallery/...`` (unmasked).

Every image is seeded by ``(seed, stream, identity, index, ...)``, so the bytes depend on the seed
alone, never on ``workers``. Training and evaluation identities come from different streams and
are checked to differ.
"""
from __future__ import annotations

import itertools
import logging
import multiprocessing
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from enum import IntEnum
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from facekd.config import SyntheticData
from facekd.data.bins import write_bin
from facekd.data.ijb_protocol import write_ijb
from facekd.data.face_rec import write_face_rec
from facekd.data.synthfaces_render import (
    ImageSpec, Shot, identity_fingerprint, init_worker, render_specs, sample_identity,
)
from facekd.errors import DataError
from facekd.fsio import write_bytes

log = logging.getLogger(__name__)


class Stream(IntEnum):
    """Second element of every random key: keeps the draws of different uses apart."""

    TRAIN_IDENTITY = 1
    EVAL_IDENTITY = 2
    TRAIN = 3
    TRAIN_MASK = 4
    LFW = 5
    CPFP = 6
    IJB = 7
    IJB_SESSION = 8
    MFR_GALLERY = 9
    MFR_PROBE = 10
    PLAN = 11  # pair, pose and gallery plans, drawn in the parent process


LFW_NUISANCE = 0.6  # share of the configured nuisance in the LFW-like, cross-pose and MFR sets
PROFILE_YAW = (0.7, 0.9)  # |yaw| (radians) of the profile side of a cross-pose pair
FRONTAL_YAW_SD = 0.05
FOLDS = 10  # verification reads pairs in 10 contiguous folds: each fold is balanced
IJB_NAME = "ijbs"
IJB_IMPOSTOR_RATIO = 40  # impostor template pairs per genuine one, so TAR at FAR=1e-3 is measurable
NON_MATED_SHARE = 0.1  # evaluation identities with no gallery template (open-set probes)
BATCH = 32  # images per pool task

Runner = Callable[[Iterable[list[ImageSpec]]], Iterator[list[Shot]]]


def identity_key(cfg: SyntheticData, stream: Stream, index: int) -> tuple[int, ...]:
    return (cfg.seed, int(stream), int(index))


def identity_fingerprints(cfg: SyntheticData, stream: Stream) -> list[str]:
    """Fingerprints of the training (TRAIN_IDENTITY) or evaluation (EVAL_IDENTITY) identities."""
    count = cfg.train_identities if stream == Stream.TRAIN_IDENTITY else cfg.eval_identities
    return [identity_fingerprint(sample_identity(np.random.default_rng(list(identity_key(cfg, stream, i)))))
            for i in range(count)]


def check_disjoint(train: list[str], evaluation: list[str]) -> None:
    """Raise if an evaluation identity is also a training identity."""
    shared = set(train) & set(evaluation)
    if shared:
        raise DataError(
            f"synthetic data: {len(shared)} evaluation identities equal training identities, so evaluation "
            "would not measure unseen people; change data.synthetic.seed"
        )


def train_specs(cfg: SyntheticData, identity: int) -> list[ImageSpec]:
    """The images of one training identity; each wears a mask with probability ``mask_share``."""
    n = cfg.images_per_identity
    masked = np.random.default_rng([cfg.seed, int(Stream.TRAIN_MASK), identity]).uniform(size=n) < cfg.mask_share
    who = identity_key(cfg, Stream.TRAIN_IDENTITY, identity)
    return [ImageSpec(who, (cfg.seed, int(Stream.TRAIN), identity, j), cfg.nuisance, bool(masked[j]))
            for j in range(n)]


def pair_labels(n_pairs: int) -> np.ndarray:
    """(n_pairs,) bool: genuine first, then impostor, within each of the 10 contiguous folds (as LFW)."""
    issame = np.zeros(n_pairs, dtype=bool)
    for fold in np.array_split(np.arange(n_pairs), FOLDS):
        if fold.size:
            # floor of the running half keeps the whole list balanced when folds are odd
            issame[fold[: (fold[-1] + 1) // 2 - fold[0] // 2]] = True
    return issame


def pair_identities(rng: np.random.Generator, issame: np.ndarray, n_ids: int) -> np.ndarray:
    """(N, 2) evaluation identities of each pair; genuine pairs cycle through all identities."""
    n = len(issame)
    first = rng.integers(n_ids, size=n)
    ids = np.stack([first, (first + rng.integers(1, n_ids, size=n)) % n_ids], 1)
    genuine = np.flatnonzero(issame)
    cycle = np.concatenate([rng.permutation(n_ids) for _ in range(-(-len(genuine) // n_ids))])
    ids[genuine, 0] = ids[genuine, 1] = cycle[: len(genuine)]
    return ids


def eval_spec(cfg: SyntheticData, stream: Stream, identity: int, index: tuple[int, ...], nuisance: float,
              **settings: Any) -> ImageSpec:
    """An evaluation image, its nuisance seeded by ``(seed, stream, identity, *index)``."""
    identity = int(identity)
    key = (cfg.seed, int(stream), identity, *(int(i) for i in index))
    return ImageSpec(identity_key(cfg, Stream.EVAL_IDENTITY, identity), key, nuisance, **settings)


def _pair_plan(cfg: SyntheticData, stream: Stream) -> tuple[np.random.Generator, np.ndarray, np.ndarray]:
    """(plan generator, (N,) issame, (N, 2) identities) of a verification pair set."""
    issame = pair_labels(cfg.pairs_per_set)
    rng = np.random.default_rng([cfg.seed, int(Stream.PLAN), int(stream)])
    return rng, issame, pair_identities(rng, issame, cfg.eval_identities)


def lfw_specs(cfg: SyntheticData) -> tuple[list[ImageSpec], np.ndarray]:
    """LFW-like pairs: moderate nuisance, fresh images for every pair side."""
    _, issame, ids = _pair_plan(cfg, Stream.LFW)
    k = cfg.nuisance * LFW_NUISANCE
    specs = [eval_spec(cfg, Stream.LFW, ids[i, s], (i, s), k) for i in range(len(issame)) for s in (0, 1)]
    return specs, issame


def cpfp_specs(cfg: SyntheticData) -> tuple[list[ImageSpec], np.ndarray]:
    """Cross-pose pairs: the first image frontal, the second turned by 0.7-0.9 rad to either side."""
    rng, issame, ids = _pair_plan(cfg, Stream.CPFP)
    n = len(issame)
    profile = rng.choice([-1.0, 1.0], n) * rng.uniform(*PROFILE_YAW, n)
    yaws = np.stack([rng.normal(0, FRONTAL_YAW_SD, n), profile], 1)  # (N, 2)
    k = cfg.nuisance * LFW_NUISANCE
    specs = [eval_spec(cfg, Stream.CPFP, ids[i, s], (i, s), k, yaw=float(yaws[i, s]))
             for i in range(n) for s in (0, 1)]
    return specs, issame


def templates_per_identity(cfg: SyntheticData) -> int:
    """At least 2, so every identity has genuine template pairs and a probe besides its gallery."""
    return max(2, cfg.eval_images_per_identity // (cfg.ijb_media_per_template * cfg.ijb_images_per_media))


def ijb_layout(cfg: SyntheticData) -> pd.DataFrame:
    """One row per IJB image: image_name, template_id, media_id, subject_id and its t, m, i indices."""
    n_t, n_m, n_i = templates_per_identity(cfg), cfg.ijb_media_per_template, cfg.ijb_images_per_media
    subject, t, m, i = (a.ravel() for a in np.meshgrid(
        np.arange(cfg.eval_identities), np.arange(n_t), np.arange(n_m), np.arange(n_i), indexing="ij"))
    template = subject * n_t + t
    return pd.DataFrame({
        "image_name": [f"{n}.jpg" for n in range(1, len(subject) + 1)],
        "template_id": template + 1, "media_id": template * n_m + m + 1, "subject_id": subject,
        "t": t, "m": m, "i": i,
    })


def ijb_specs(cfg: SyntheticData, layout: pd.DataFrame) -> list[ImageSpec]:
    """Images of one media share a session (background, light, base pose); nuisance in full."""
    rows = layout[["subject_id", "t", "m", "i"]].to_numpy()
    return [eval_spec(cfg, Stream.IJB, j, (t, m, i), cfg.nuisance,
                      session=(cfg.seed, int(Stream.IJB_SESSION), int(j), int(t), int(m)))
            for j, t, m, i in rows]


def impostor_pairs(rng: np.random.Generator, subjects: np.ndarray, n: int) -> np.ndarray:
    """(n', 2) distinct index pairs i < j of templates of different subjects, n' = min(n, all there are)."""
    count = len(subjects)
    sizes = np.bincount(subjects)
    possible = count * (count - 1) // 2 - int((sizes * (sizes - 1) // 2).sum())
    n = min(n, possible)
    if 2 * n >= possible:  # a large share of all pairs: enumerate them
        i, j = np.triu_indices(count, 1)
        keep = np.flatnonzero(subjects[i] != subjects[j])
        pick = np.sort(rng.choice(keep, n, replace=False))
        return np.stack([i[pick], j[pick]], 1)
    codes = np.empty(0, dtype=np.int64)
    while True:  # rejection sampling; pairs coded as i * count + j, kept in order of first draw
        a, b = rng.integers(count, size=(2, 2 * n))
        ok = subjects[a] != subjects[b]
        codes = np.concatenate([codes, np.minimum(a, b)[ok] * count + np.maximum(a, b)[ok]])
        _, first = np.unique(codes, return_index=True)
        if len(first) >= n:
            chosen = np.sort(codes[np.sort(first)[:n]])
            return np.stack([chosen // count, chosen % count], 1)


def template_pairs(
    rng: np.random.Generator, template_ids: np.ndarray, subjects: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """All genuine template pairs plus IJB_IMPOSTOR_RATIO times as many impostors: ((P, 2) ids, (P,) labels)."""
    genuine = np.array([pair for s in np.unique(subjects)
                        for pair in itertools.combinations(np.flatnonzero(subjects == s), 2)], dtype=np.int64)
    impostor = impostor_pairs(rng, subjects, IJB_IMPOSTOR_RATIO * len(genuine))
    index = np.concatenate([genuine.reshape(-1, 2), impostor])
    labels = np.concatenate([np.ones(len(genuine), np.int64), np.zeros(len(impostor), np.int64)])
    order = np.lexsort((index[:, 1], index[:, 0]))
    return template_ids[index[order]], labels[order]


def one_to_n(
    rng: np.random.Generator, templates: pd.DataFrame,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Galleries G1, G2 (each identity's first template, identities split between them) and probes.

    Probes are every other template; NON_MATED_SHARE of the identities have no gallery template,
    so their probes are non-mated for both galleries.
    """
    subjects = np.unique(templates["subject_id"])
    order = rng.permutation(subjects)
    n_non = max(1, round(len(subjects) * NON_MATED_SHARE))
    g1_subjects, g2_subjects = order[n_non::2], order[n_non + 1::2]
    enrol = templates[templates["t"] == 0]
    g1 = enrol[enrol["subject_id"].isin(g1_subjects)][["template_id", "subject_id"]]
    g2 = enrol[enrol["subject_id"].isin(g2_subjects)][["template_id", "subject_id"]]
    probes = templates[~templates["template_id"].isin(pd.concat([g1, g2])["template_id"])]
    probes = probes[["template_id", "subject_id"]]
    return g1.reset_index(drop=True), g2.reset_index(drop=True), probes.reset_index(drop=True)


def mfr_specs(cfg: SyntheticData) -> list[tuple[str, ImageSpec]]:
    """(relative path, spec): masked probes and unmasked gallery images per evaluation identity."""
    n = mfr_images_per_identity(cfg)
    k = cfg.nuisance * LFW_NUISANCE
    return [(f"{folder}/{j:05d}/{i}.jpg", eval_spec(cfg, stream, j, (i,), k, mask=mask))
            for folder, stream, mask in (("probes", Stream.MFR_PROBE, True), ("gallery", Stream.MFR_GALLERY, False))
            for j in range(cfg.eval_identities) for i in range(n)]


def mfr_images_per_identity(cfg: SyntheticData) -> int:
    """Masked probes (and as many unmasked gallery images) per evaluation identity."""
    return max(2, cfg.eval_images_per_identity // 2)


@contextmanager
def _renderer(workers: int, quality: int, total: int, progress: bool) -> Iterator[Runner]:
    """Yield a function mapping batches of specs to shots, in order, on ``workers`` processes."""
    bar = tqdm(total=total, unit="img", desc="synthetic faces", disable=None if progress else True)
    # spawn: a forked child would inherit the parent's threads and locks (torch, tqdm)
    pool = multiprocessing.get_context("spawn").Pool(workers, initializer=init_worker) if workers > 1 else None

    def run(batches: Iterable[list[ImageSpec]]) -> Iterator[list[Shot]]:
        jobs = ((quality, batch) for batch in batches)
        for shots in (pool.imap(render_specs, jobs) if pool else map(render_specs, jobs)):
            bar.update(len(shots))
            yield shots

    try:
        yield run
    finally:
        if pool is not None:
            pool.terminate()
        bar.close()


def _render_all(run: Runner, specs: list[ImageSpec]) -> list[Shot]:
    batches = [specs[i:i + BATCH] for i in range(0, len(specs), BATCH)]
    return [shot for shots in run(batches) for shot in shots]


def _replace_dir(staging: Path, final: Path) -> None:
    """Swap a fully written folder into place, so no reader sees a half-written tree."""
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    staging.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def _fresh_staging(final: Path) -> Path:
    staging = final.with_name(f".{final.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    return staging


def _write_train(run: Runner, cfg: SyntheticData, train_dir: Path) -> dict:
    """Stream the training identities, in label order, into train.rec/train.idx."""
    batches = [train_specs(cfg, i) for i in range(cfg.train_identities)]
    items = ((label, shot.jpeg) for label, shots in enumerate(run(batches)) for shot in shots)
    info = write_face_rec(train_dir / "train.rec", train_dir / "train.idx", items)
    masked = sum(spec.mask for batch in batches for spec in batch)
    return {"train_identities": info["num_classes"], "train_images": info["num_images"], "train_masked": masked}


def _write_pairs(run: Runner, path: Path, specs: list[ImageSpec], issame: np.ndarray, name: str) -> dict:
    write_bin(path, [shot.jpeg for shot in _render_all(run, specs)], issame.tolist())
    return {f"{name}_pairs": len(issame), f"{name}_genuine": int(issame.sum())}


def _write_ijb(run: Runner, cfg: SyntheticData, root: Path) -> dict:
    """Render the IJB images and write the protocol files and loose crops."""
    layout = ijb_layout(cfg)
    shots = _render_all(run, ijb_specs(cfg, layout))
    templates = layout.drop_duplicates("template_id")
    rng = np.random.default_rng([cfg.seed, int(Stream.PLAN), int(Stream.IJB)])
    pairs, labels = template_pairs(rng, templates["template_id"].to_numpy(), templates["subject_id"].to_numpy())
    g1, g2, probes = one_to_n(rng, templates)
    staging = _fresh_staging(root)
    write_ijb(
        staging, IJB_NAME, images={name: shot.jpeg for name, shot in zip(layout["image_name"], shots, strict=True)},
        face_tid_mid=layout[["image_name", "template_id", "media_id"]],
        landmarks=np.stack([shot.landmarks for shot in shots]), faceness=np.array([shot.faceness for shot in shots]),
        pairs=pairs, labels=labels, gallery_g1=g1, gallery_g2=g2, probes=probes,
    )
    _replace_dir(staging, root)
    galleried = pd.concat([g1, g2])["subject_id"]
    return {
        "ijb_images": len(layout), "ijb_templates": len(templates), "ijb_media": int(layout["media_id"].nunique()),
        "ijb_genuine_pairs": int(labels.sum()), "ijb_impostor_pairs": int((labels == 0).sum()),
        "ijb_gallery_g1": len(g1), "ijb_gallery_g2": len(g2), "ijb_probes": len(probes),
        "ijb_non_mated_probes": int((~probes["subject_id"].isin(galleried)).sum()),
    }


def _write_mfr(run: Runner, cfg: SyntheticData, root: Path) -> dict:
    """Write masked probes and unmasked gallery images as identity folders."""
    planned = mfr_specs(cfg)
    shots = _render_all(run, [spec for _, spec in planned])
    staging = _fresh_staging(root)
    for (rel, _), shot in zip(planned, shots, strict=True):
        write_bytes(staging / rel, shot.jpeg)
    _replace_dir(staging, root)
    n_probes = sum(spec.mask for _, spec in planned)
    return {"mfr_identities": cfg.eval_identities, "mfr_probes": n_probes, "mfr_gallery": len(planned) - n_probes}


def total_images(cfg: SyntheticData) -> int:
    """Number of images :func:`generate` renders."""
    pair_images = 2 * 2 * cfg.pairs_per_set
    ijb = cfg.eval_identities * templates_per_identity(cfg) * cfg.ijb_media_per_template * cfg.ijb_images_per_media
    mfr = 2 * cfg.eval_identities * mfr_images_per_identity(cfg)
    return cfg.train_identities * cfg.images_per_identity + pair_images + ijb + mfr


def generate(cfg: SyntheticData, train_dir: str | Path, eval_dir: str | Path, *, progress: bool = True) -> dict:
    """Generate the whole synthetic dataset; returns counts per output (identical for a given config).

    With ``cfg.workers > 1`` the images are rendered by a pool of spawned processes: a script
    calling this must do so under ``if __name__ == "__main__":``.
    """
    train_dir, eval_dir = Path(train_dir), Path(eval_dir)
    start = time.perf_counter()
    train_ids = identity_fingerprints(cfg, Stream.TRAIN_IDENTITY)
    check_disjoint(train_ids, identity_fingerprints(cfg, Stream.EVAL_IDENTITY))
    total = total_images(cfg)
    summary: dict = {"eval_identities": cfg.eval_identities}
    with _renderer(cfg.workers, cfg.jpeg_quality, total, progress) as run:
        summary |= _write_train(run, cfg, train_dir)
        summary |= _write_pairs(run, eval_dir / "synth_lfw.bin", *lfw_specs(cfg), "lfw")
        summary |= _write_pairs(run, eval_dir / "synth_cpfp.bin", *cpfp_specs(cfg), "cpfp")
        summary |= _write_ijb(run, cfg, eval_dir / "ijb")
        summary |= _write_mfr(run, cfg, eval_dir / "mfr")
    seconds = time.perf_counter() - start
    log.info("synthetic data: %d images in %.1f s (%.0f img/s, %d workers)",
             total, seconds, total / seconds, cfg.workers)
    return summary
