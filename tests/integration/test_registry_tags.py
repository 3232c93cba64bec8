"""Registered versions carry readable tags, one number each, not a JSON blob (issue 19, item 8).

Against a real MLflow SQLite store: the tags a person reads in the MLflow UI, the promotion gate
reading its metric from them, and a version registered by an older facekd (one ``eval_metrics``
JSON tag) still gated correctly.
"""
from __future__ import annotations

import json

import pytest
from mlflow.entities.model_registry import ModelVersion, ModelVersionTag

from facekd.errors import RegistryError
from facekd.mlops.model_registry import EVAL_TAG, LEGACY_EVAL_TAG, promote, register_candidate, version_metric
from tests.integration.test_registry import client, params, workspace  # noqa: F401 - the module's store

pytestmark = pytest.mark.slow


def test_version_tags_are_flat_numbers_and_the_gate_reads_them(workspace) -> None:  # noqa: F811
    p = params("tags-flat")  # gate ijb.tar@far=1e-4 (facekd's default)
    version = register_candidate(p, "feature")["version"]
    tags = client().get_model_version("tags-flat", version).tags
    assert LEGACY_EVAL_TAG not in tags
    assert not [k for k, v in tags.items() if v.lstrip().startswith(("{", "["))], "a tag holds a JSON blob"
    assert tags[f"{EVAL_TAG}ijb.tar_at_far_1e-4"] == "0.7" and tags[f"{EVAL_TAG}synth_lfw.accuracy"] == "0.8"
    assert all(len(v) < 100 for k, v in tags.items() if k.startswith(EVAL_TAG))
    decision = promote(p)  # the gate reads eval.ijb.tar_at_far_1e-4
    assert decision["promoted"] and "0.7" in decision["reason"]


def _version(tags: dict[str, str]) -> ModelVersion:
    return ModelVersion("m", "3", 0, tags=[ModelVersionTag(k, v) for k, v in tags.items()])


def test_gate_reads_flat_tags_and_the_older_json_tag() -> None:
    flat = _version({"model": "qud", f"{EVAL_TAG}ijb.tar_at_far_1e-3": "0.08"})
    assert version_metric(flat, "ijb.tar@far=1e-3", role="candidate") == pytest.approx(0.08)
    legacy = _version({"model": "qud", LEGACY_EVAL_TAG: json.dumps({"ijb": {"tar@far=1e-3": 0.05}})})
    assert version_metric(legacy, "ijb.tar@far=1e-3", role="champion") == pytest.approx(0.05)
    with pytest.raises(RegistryError, match=r"no tag eval\.ijb\.tar_at_far_1e-4 .*eval\.ijb\.tar_at_far_1e-3"):
        version_metric(flat, "ijb.tar@far=1e-4", role="candidate")
    with pytest.raises(RegistryError, match="not a number"):
        version_metric(_version({f"{EVAL_TAG}ijb.tar_at_far_1e-3": "n/a"}), "ijb.tar@far=1e-3", role="candidate")
