"""Property 7: promotion never moves `champion` to a model with missing metrics, a worse (or not
better enough, or better only within noise) gate metric, or failed export checks.

A seeded loop of random champion/candidate pairs against one real SQLite MLflow store: each case
registers the versions as `facekd register` tags them, points the aliases, runs the real
`facekd.mlops.model_registry.promote`, and checks the alias against the rule computed independently here.
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from facekd.config import parse_params
from facekd.errors import RegistryError
from tests.faults.conftest import assert_clean_failure, facekd, write_params

pytestmark = pytest.mark.slow

NAME = "facekd-safety"
METRIC = "ijb.tar@far=1e-4"
CASES = 30


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, validated_repo: Path):
    root = tmp_path_factory.mktemp("registry")
    shutil.copy(validated_repo / "mlflow.db", root)  # already migrated: saves seconds
    uri = f"sqlite:///{root}/mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        client.create_registered_model(NAME)
        yield root, client


def _metrics(value: float | None) -> dict:
    """An eval metrics file as the evaluate stage writes it (None: the gate metric is absent)."""
    ijb = {"tar@far=1e-3": 0.9} if value is None else {"tar@far=1e-4": value, "tar@far=1e-3": 0.9}
    return {"model": "x", "params_m": 0.3, "synth_lfw": {"accuracy": 0.8}, "ijb": ijb}


def _version(client, model: str, value: float | None, checks: str | None, low: float | None = None) -> str:
    tags = {"model": model, "eval_metrics": json.dumps(_metrics(value)), "gate_metric": METRIC}
    if checks is not None:
        tags["export_checks_passed"] = checks
    if low is not None:  # registered with the gate metric's 95% interval (facekd register)
        tags["gate_low"] = repr(low)
    return str(client.create_model_version(NAME, source=f"file:///nowhere/{model}", tags=tags).version)


def _alias(client, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(NAME, alias).version)
    except MlflowException:
        return None


def _draw(rng: np.random.Generator) -> dict:
    """One random situation; nearly-equal metrics and exact ties are drawn on purpose."""
    champion = None if rng.random() < 0.2 else float(rng.choice([0.5, 0.7, 0.9]))
    if champion is not None and rng.random() < 0.15:
        champion = math.nan  # champion without the gate metric (e.g. registry.gate_metric changed)
    delta = float(rng.choice([-0.1, -0.005, 0.0, 0.005, 0.02, 0.1]))
    base = 0.7 if champion is None or math.isnan(champion) else champion
    candidate = None if rng.random() < 0.15 else base + delta
    checks = [None, "false", "true", "true", "true"][int(rng.integers(5))]
    low = None
    if candidate is not None and rng.random() < 0.5:  # an interval below the value, narrow or wide
        low = candidate - float(rng.choice([0.0, 0.004, 0.03, 0.2]))
    return {"champion": champion, "candidate": candidate, "checks": checks,
            "tol": float(rng.choice([0.0, 0.01])), "low": low}


def _expected(case: dict) -> bool:
    """The rule, independently: promote only a checked candidate with the metric that beats the
    champion by strictly more than the tolerance (or when there is no champion)."""
    if case["checks"] != "true" or case["candidate"] is None:
        return False
    if case["champion"] is None:
        return True
    if math.isnan(case["champion"]):
        return False
    if case["low"] is not None:  # beyond noise: the interval's low end clears the champion
        return case["low"] - case["champion"] > case["tol"]
    return case["candidate"] - case["champion"] > case["tol"]


def test_promotion_rule_over_random_pairs(store) -> None:
    from facekd.mlops.model_registry import promote

    _, client = store
    rng = np.random.default_rng(20261122)
    outcomes = {"promoted": 0, "kept": 0, "refused": 0}
    for i in range(CASES):
        case = _draw(rng)
        if case["champion"] is None:
            if _alias(client, "champion"):
                client.delete_registered_model_alias(NAME, "champion")
        else:
            champ_value = None if math.isnan(case["champion"]) else case["champion"]
            client.set_registered_model_alias(NAME, "champion", _version(client, f"champ{i}", champ_value, "true"))
        before = _alias(client, "champion")
        cand = _version(client, f"cand{i}", case["candidate"], case["checks"], case["low"])
        client.set_registered_model_alias(NAME, "candidate", cand)
        params = parse_params({"registry": {"model_name": NAME, "gate_metric": METRIC, "min_improvement": case["tol"]}})
        try:
            result = promote(params)
            promoted = result["promoted"]
        except RegistryError as err:
            assert "version" in str(err) and METRIC in str(err) or "export checks" in str(err), str(err)
            promoted = None
        after = _alias(client, "champion")
        should = _expected(case)
        assert (promoted is True) == should, f"case {i} {case}: promote -> {promoted}"
        assert after == (cand if should else before), f"case {i} {case}: champion {before} -> {after}"
        if should:
            tags = client.get_model_version(NAME, cand).tags
            assert tags["previous_champion"] == (before or "none")
        outcomes["refused" if promoted is None else "promoted" if promoted else "kept"] += 1
    assert all(outcomes.values()), f"the random cases did not cover every outcome: {outcomes}"


def test_a_candidate_better_only_within_noise_is_kept_out(store) -> None:
    from facekd.mlops.model_registry import promote

    _, client = store
    client.set_registered_model_alias(NAME, "champion", _version(client, "champ-noise", 0.60, "true"))
    params = parse_params({"registry": {"model_name": NAME, "gate_metric": METRIC, "min_improvement": 0.0}})
    within = _version(client, "cand-within", 0.64, "true", low=0.55)  # +4 points, interval reaches below
    client.set_registered_model_alias(NAME, "candidate", within)
    result = promote(params)
    assert not result["promoted"] and "does not beat" in result["reason"] and "beyond noise" in result["reason"]
    assert "lower bound 0.55" in result["reason"]
    beyond = _version(client, "cand-beyond", 0.70, "true", low=0.63)
    client.set_registered_model_alias(NAME, "candidate", beyond)
    assert promote(params)["promoted"] and _alias(client, "champion") == beyond


def test_cli_refuses_failed_export_and_keeps_champion(store, tmp_path: Path) -> None:
    root, client = store
    champion = _version(client, "good", 0.5, "true")
    client.set_registered_model_alias(NAME, "champion", champion)
    client.set_registered_model_alias(NAME, "candidate", _version(client, "broken", 0.99, "false"))
    write_params(tmp_path, {"registry": {"model_name": NAME, "gate_metric": METRIC},
                            "tracking": {"uri": f"sqlite:///{root}/mlflow.db"}})
    assert_clean_failure(facekd("promote", cwd=tmp_path), "export checks", "champion was not changed")
    assert _alias(client, "champion") == champion
