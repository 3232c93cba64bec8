"""Property 7b: with `registry.max_int8_drop` set, promotion never moves `champion` to a model whose
INT8 copy loses more than that on the gate metric, or that has no INT8 copy; within it, the float
rule alone decides (issue 18).

A seeded loop of random float / INT8 metric pairs against one real SQLite MLflow store, as
test_registry_safety does: each case registers the versions as `facekd register` tags them, runs
the real `facekd.mlops.model_registry.promote`, and checks the alias and the recorded reason against the rule
computed independently here.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from facekd.config import parse_params
from facekd.errors import RegistryError

pytestmark = pytest.mark.slow

NAME = "facekd-int8-safety"
METRIC = "ijb.tar@far=1e-4"
TAG = "eval.ijb.tar_at_far_1e-4"
CASES = 24


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, validated_repo: Path):
    root = tmp_path_factory.mktemp("int8-registry")
    shutil.copy(validated_repo / "mlflow.db", root)  # already migrated: saves seconds
    uri = f"sqlite:///{root}/mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        from mlflow.tracking import MlflowClient

        store = MlflowClient(tracking_uri=uri, registry_uri=uri)
        store.create_registered_model(NAME)
        yield store


def _version(client, model: str, value: float, int8_value: float | None) -> str:
    tags = {"model": model, "gate_metric": METRIC, TAG: repr(value), "export_checks_passed": "true"}
    if int8_value is not None:  # registered with its INT8 copy
        tags |= {"int8_onnx_sha256": "ab" * 32, "int8." + TAG: repr(int8_value)}
    return str(client.create_model_version(NAME, source=f"file:///nowhere/{model}", tags=tags).version)


def _champion(client) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(NAME, "champion").version)
    except MlflowException:
        return None


def test_int8_gate_over_random_metric_pairs(client) -> None:
    from facekd.mlops.model_registry import promote

    rng = np.random.default_rng(20261203)
    outcomes = {"promoted": 0, "refused for INT8": 0, "no INT8 copy": 0, "kept by the float rule": 0}
    for i in range(CASES):
        champion_value = float(rng.choice([0.4, 0.8]))  # below or above every candidate's 0.6
        client.set_registered_model_alias(NAME, "champion", _version(client, f"champ{i}", champion_value, None))
        drop = float(rng.choice([-0.01, 0.0, 0.004, 0.01, 0.03, 0.2]))
        int8_value = None if rng.random() < 0.15 else 0.6 - drop
        limit = float(rng.choice([0.0, 0.005, 0.02]))
        before = _champion(client)
        cand = _version(client, f"cand{i}", 0.6, int8_value)
        client.set_registered_model_alias(NAME, "candidate", cand)
        params = parse_params({"registry": {"model_name": NAME, "gate_metric": METRIC, "max_int8_drop": limit}})
        try:
            result = promote(params)
        except RegistryError as err:
            assert int8_value is None and "without an INT8 copy" in str(err), f"case {i}: {err}"
            assert _champion(client) == before
            outcomes["no INT8 copy"] += 1
            continue
        assert int8_value is not None, f"case {i}: a candidate without an INT8 copy was judged: {result}"
        within = drop <= limit
        should = within and 0.6 > champion_value
        assert result["promoted"] is should and _champion(client) == (cand if should else before), f"case {i}"
        tags = client.get_model_version(NAME, cand).tags
        assert tags["int8_gate"].split(": ", 1)[1].startswith("passed" if within else "refused"), f"case {i}"
        assert result["int8_drop"] == pytest.approx(drop)
        if not within:
            assert "registry.max_int8_drop" in tags["last_gate_decision"]
        outcomes["promoted" if should else "kept by the float rule" if within else "refused for INT8"] += 1
    assert all(outcomes.values()), f"the random cases did not cover every outcome: {outcomes}"


def test_gate_off_judges_the_float_model_only(client) -> None:
    from facekd.mlops.model_registry import promote

    client.set_registered_model_alias(NAME, "champion", _version(client, "champ-off", 0.4, None))
    cand = _version(client, "cand-off", 0.6, None)  # no INT8 copy at all
    client.set_registered_model_alias(NAME, "candidate", cand)
    result = promote(parse_params({"registry": {"model_name": NAME, "gate_metric": METRIC}}))
    assert result["promoted"] and result["int8_drop"] is None
    assert "int8_gate" not in client.get_model_version(NAME, cand).tags
