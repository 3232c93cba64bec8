"""Class 2 of issue 14, "silently wrong metrics": every cache is keyed on the content it was built
from, so a benchmark or training folder replaced under the same name (and size) is never served
stale embeddings.

Evaluation: the real ``evaluate`` stage on synthetic benchmarks in the real formats, run once to
fill ``features/eval/<model>/``, then again after one mutation of the benchmark folder; its
metrics must equal those of a run with no cache at all. Teacher features: the key of an
unlabeled training folder changes with any byte of any image, size and mtime kept.
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults.conftest import TINY

pytestmark = pytest.mark.slow

MODEL = "student"


@pytest.fixture(scope="module")
def benchmarks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``data/eval`` of the synthetic generator at TINY size (two .bin sets, IJB, MFR)."""
    from facekd.config import SyntheticData
    from facekd.data.synthetic import generate

    root = tmp_path_factory.mktemp("bench")
    generate(SyntheticData(**TINY["data"]["synthetic"]), root / "prepared", root / "eval", progress=False)
    return root / "eval"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny (untrained, seeded) MobileFaceNet model folder."""
    import torch

    from facekd.models.registry import create_backbone
    from facekd.models.store import save_model_dir

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / MODEL
    save_model_dir(path, create_backbone("mfn", embedding_size=16, width=0.125), {})
    return path


@pytest.fixture(scope="module")
def tracking(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def _swap_pairs(path: Path) -> None:
    """Exchange the first images of pairs 0 and 1 (same images, same size, other pairs)."""
    from facekd.data.bins import load_bin, write_bin

    images, issame = load_bin(path)
    images[0], images[2] = images[2], images[0]
    write_bin(path, images, issame.tolist())


def _reverse_pairs(path: Path) -> None:
    from facekd.data.bins import load_bin, write_bin

    images, issame = load_bin(path)
    pairs = [images[i:i + 2] for i in range(0, len(images), 2)][::-1]
    write_bin(path, [image for pair in pairs for image in pair], issame[::-1].tolist())


def _files(folder: Path, pattern: str = "*.jpg") -> list[Path]:
    return sorted(folder.rglob(pattern))


def _replace_ijb_crop(eval_dir: Path) -> None:
    crops = _files(eval_dir / "ijb")
    shutil.copyfile(crops[-1], crops[0])


def _replace_mfr_probe(eval_dir: Path) -> None:
    shutil.copyfile(_files(eval_dir / "mfr/gallery")[-1], _files(eval_dir / "mfr/probes")[0])


def _replace_lfw(eval_dir: Path) -> None:
    """The issue's example: another set with the same number of pairs under lfw's name."""
    shutil.copyfile(eval_dir / "synth_cpfp.bin", eval_dir / "synth_lfw.bin")


# Rounds of mutations, each touching other benchmarks: (benchmark, mutation, embeddings it changes).
ROUNDS: dict[str, list[tuple[str, Callable[[Path], None], int]]] = {
    "set replaced, IJB crop replaced, MFR probe replaced": [
        ("synth_lfw", _replace_lfw, 1), ("ijb", _replace_ijb_crop, 1), ("mfr", _replace_mfr_probe, 1)],
    "images swapped between pairs, pairs reordered": [
        ("synth_lfw", lambda eval_dir: _swap_pairs(eval_dir / "synth_lfw.bin"), 1),
        ("synth_cpfp", lambda eval_dir: _reverse_pairs(eval_dir / "synth_cpfp.bin"), 1)],
}


def _evaluate(workspace: Path, tracking: str) -> dict:
    """The real ``evaluate`` stage in ``workspace``; returns the metrics file it wrote (what the
    report and the promotion gate read; NaN written as null, so runs compare equal)."""
    from facekd.config import parse_params
    from facekd.stages import evaluate

    params = parse_params({"data": {"eval_dir": str(workspace / "data/eval")}, "tracking": {"uri": tracking},
                           "evaluate": {"batch_size": 32}})
    evaluate.run(params, MODEL)
    return json.loads((workspace / "metrics/eval" / f"{MODEL}.json").read_text())


def _cache_files(workspace: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in (workspace / "features").rglob("*.npy")}


@pytest.mark.parametrize("round_", list(ROUNDS))
def test_evaluate_never_serves_stale_embeddings(benchmarks: Path, model: Path, tracking: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch, round_: str) -> None:
    """After the mutations the cached run's metrics equal a cache-free run's; the changed
    benchmarks are embedded again, the others are read from the cache untouched."""
    shutil.copytree(benchmarks, tmp_path / "data/eval")
    shutil.copytree(model, tmp_path / "models" / MODEL)
    monkeypatch.chdir(tmp_path)
    before = _evaluate(tmp_path, tracking)
    cache = _cache_files(tmp_path)
    assert len(cache) == 5  # two .bin sets, one IJB protocol, MFR probes and gallery
    for _, mutate, _ in ROUNDS[round_]:
        mutate(tmp_path / "data/eval")
    cached = _evaluate(tmp_path, tracking)
    after = _cache_files(tmp_path)
    shutil.rmtree(tmp_path / "features")
    fresh = _evaluate(tmp_path, tracking)
    for bench, _, _ in ROUNDS[round_]:
        assert fresh[bench] != before[bench], f"{bench}: the mutation changed no metric; it tests nothing"
        assert cached[bench] == fresh[bench], f"{bench}: metrics from the cache differ from a fresh evaluation"
    assert cached == fresh
    assert len(after) == len(cache) + sum(n for _, _, n in ROUNDS[round_]), "changed benchmarks not re-embedded"
    assert {p: after[p] for p in cache} == cache, "an unchanged cache entry was rewritten"


def _flip_byte(path: Path, at: float) -> None:
    """Change one byte (at fraction ``at`` of the file), keeping its size and mtime."""
    stat = path.stat()
    blob = bytearray(path.read_bytes())
    blob[int(at * (len(blob) - 1))] ^= 0x5A
    path.write_bytes(bytes(blob))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


@pytest.mark.parametrize("at", [0.0, 0.37, 0.5, 0.99])
@pytest.mark.parametrize("which", [0, 3, -1])
def test_teacher_cache_key_follows_unlabeled_image_content(benchmarks: Path, tmp_path: Path, at: float,
                                                           which: int) -> None:
    """data.source unlabeled: the teacher-feature cache's data_hash changes when any image's bytes
    change, even with its size and mtime kept (rec data is keyed by prepare's sha256 of the files)."""
    from facekd.data.dataset import open_training_data
    from facekd.data.training_set import folder_listing_hash

    folder = tmp_path / "unlabeled"
    folder.mkdir()
    for i, src in enumerate(_files(benchmarks / "mfr/gallery")[:6]):
        shutil.copyfile(src, folder / f"{i}.jpg")

    def key() -> str:
        return folder_listing_hash(open_training_data(folder, "unlabeled", augment=False))

    before = key()
    assert key() == before
    _flip_byte(sorted(folder.iterdir())[which], at)
    assert key() != before
