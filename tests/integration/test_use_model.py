"""Using the promoted model through the real console script: `facekd embed` and `facekd verify`.

A real MLflow SQLite store holds a registered, promoted tiny student (built as in
test_registry.py); the commands run as a user runs them, in a subprocess from the workspace.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from facekd.fsio import write_json
from tests.integration.test_registry import _student

pytestmark = pytest.mark.slow  # a real MLflow store and `facekd` subprocesses

FACEKD = str(Path(sys.executable).parent / "facekd")
MODEL_NAME = "use-model"
THRESHOLD = 0.3125  # what the evaluation recorded at FAR 1e-3 (registry.verify_far's default)


def _faces(root: Path) -> dict[str, Path]:
    """Two synthetic identities as aligned 112x112 JPEGs, a 100x100 crop and a file that is no image."""
    from facekd.data.images import encode_jpeg
    from facekd.data.synthfaces_render import render, sample_identity

    rng = np.random.default_rng(3)
    files = {"alice": render(sample_identity(rng), rng).image, "bob": render(sample_identity(rng), rng).image}
    files["small"] = files["alice"][:100, :100]
    paths = {name: root / "faces" / f"{name}.jpg" for name in [*files, "broken"]}
    paths["alice"].parent.mkdir()
    for name, image in files.items():
        paths[name].write_bytes(encode_jpeg(np.ascontiguousarray(image)))
    paths["broken"].write_text("not an image\n")
    return paths


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from facekd.config import parse_params
    from facekd.mlops.model_registry import register_candidate
    from facekd.stages.promote import promote

    root = tmp_path_factory.mktemp("use_model")
    raw = {"registry": {"model_name": MODEL_NAME}, "export": {"models": ["feature"], "latency_runs": 2}}
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
        _student(root, "feature", 1, 0.70, 0.02, True)
        write_json(root / "metrics/eval/feature.json", {
            "model": "feature", "params_m": 0.02, "gmacs": 0.01,
            "ijb": {"tar@far=1e-4": 0.70, "tar@far=1e-3": 0.75, "threshold@far=1e-3": THRESHOLD,
                    "num_genuine": 150, "num_impostor": 6000},
        })
        register_candidate(parse_params(raw), "feature")
        promote(parse_params(raw))
        yield root, _faces(root)


def facekd(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([FACEKD, *args], cwd=root, env=os.environ.copy(), capture_output=True, text=True,
                          timeout=120)


def test_verify_with_the_champion(workspace):
    root, faces = workspace
    same = facekd(root, "verify", str(faces["alice"]), str(faces["alice"]))
    assert same.returncode == 0, same.stderr
    assert same.stdout.startswith("cosine 1.0000, threshold 0.3125 (FAR 0.001, use-model@champion (version 1))")
    assert same.stdout.strip().endswith(": same person")

    other = facekd(root, "verify", str(faces["alice"]), str(faces["bob"]))
    assert other.returncode == 0, other.stderr
    score = float(other.stdout.split()[1].rstrip(","))
    assert -1.0 <= score < 1.0
    assert other.stdout.strip().endswith("same person" if score > THRESHOLD else "different people")

    # A local ONNX file gives the same score, with the threshold of its metrics/eval/<stem>.json.
    local = facekd(root, "verify", str(faces["alice"]), str(faces["bob"]), "--model", "exports/feature.onnx")
    assert local.returncode == 0, local.stderr
    assert local.stdout.split()[:4] == other.stdout.split()[:4]


def test_inputs_that_are_not_aligned_crops_are_refused(workspace):
    root, faces = workspace
    small = facekd(root, "verify", str(faces["alice"]), str(faces["small"]))
    assert small.returncode == 2
    assert f"{faces['small']}: image is 100x100, not an aligned 112x112 face crop" in small.stderr
    assert "5-point alignment" in small.stderr and "Traceback" not in small.stderr
    broken = facekd(root, "embed", str(faces["alice"]), str(faces["broken"]))
    assert broken.returncode == 2 and f"{faces['broken']}: cannot decode image" in broken.stderr
    missing = facekd(root, "verify", str(faces["alice"]), "faces/nobody.jpg")
    assert missing.returncode == 2 and "faces/nobody.jpg: image file not found" in missing.stderr


def test_embed_writes_unit_vectors_in_argument_order(workspace):
    root, faces = workspace
    done = facekd(root, "embed", str(faces["alice"]), str(faces["bob"]), str(faces["alice"]), "--out", "emb.npy")
    assert done.returncode == 0, done.stderr
    emb = np.load(root / "emb.npy")
    assert emb.shape == (3, 32) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(emb[0], emb[2], atol=1e-6)
    assert "emb.npy: 3 x 32 unit embeddings from use-model@champion (version 1)" in done.stdout


def test_threshold_is_in_the_card_the_tags_and_the_description(workspace):
    from mlflow.tracking import MlflowClient

    root, _ = workspace
    card = (root / "reports/model_card.md").read_text()
    assert "**SYNTHETIC.**" in card and "## Limitations" in card and "## Intended use" in card
    assert "same person when cosine > 0.3125 (FAR 0.001 on the 6000 impostor pairs of 'ijb')" in card
    assert "TAR at this FAR as evaluated: 75.00% of 150 genuine pairs (95% interval 67." in card
    version = MlflowClient().get_model_version(MODEL_NAME, "1")
    assert float(version.tags["verify_threshold"]) == THRESHOLD and float(version.tags["verify_far"]) == 1e-3
    assert "SYNTHETIC evaluation data" in version.description and "cosine > 0.3125" in version.description
    files = MlflowClient().download_artifacts(version.run_id, "model_card/model_card.json", str(root / "dl"))
    assert json.loads(Path(files).read_text())["verification"]["threshold"] == THRESHOLD
