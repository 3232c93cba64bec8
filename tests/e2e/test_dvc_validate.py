"""Real `dvc repro validate` in a temporary git+dvc copy: data built, gate passed, second run a no-op."""
from __future__ import annotations

import json

import pytest
import yaml

from .conftest import dvc

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_repro_validate_then_nothing_to_do(tiny_repo):
    dvc("repro", "validate", cwd=tiny_repo)
    report = json.loads((tiny_repo / "reports/validation.json").read_text())
    assert report["success"] is True
    meta = json.loads((tiny_repo / "data/prepared/meta.json").read_text())
    assert meta["num_classes"] == 8 and meta["num_images"] == 32
    assert (tiny_repo / "data/eval/synth_lfw.bin").is_file()

    again = dvc("repro", "validate", cwd=tiny_repo)
    assert "didn't change, skipping" in again.stdout
    status = dvc("status", "validate", "--json", cwd=tiny_repo)
    assert json.loads(status.stdout) == {}

    params = yaml.safe_load((tiny_repo / "params.yaml").read_text())
    params["data"]["validation"]["min_images_per_identity"] = 3
    (tiny_repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = json.loads(dvc("status", "--json", cwd=tiny_repo).stdout)
    assert "validate" in changed and "prepare" not in changed
