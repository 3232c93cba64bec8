"""The INT8 copy as an evaluated model: its names, the float-vs-INT8 cosine, the paired drop, and the
promotion rule on it (issue 18)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from mlflow.entities.model_registry import ModelVersion, ModelVersionTag

from facekd import layout
from facekd.errors import DataError, RegistryError
from facekd.evaluation.int8 import AgreementEmbedder, row_cosines
from facekd.evaluation.uncertainty import paired_study
from facekd.mlops.evidence import int8_verdict
from facekd.mlops.model_registry import decide

METRIC = "ijb.tar@far=1e-3"
TAG = "eval.ijb.tar_at_far_1e-3"  # facekd.mlops.tracking.metric_name(METRIC)


def test_the_int8_copy_is_named_beside_its_float_parent():
    assert layout.int8_name("qud") == "qud.int8"
    assert (layout.onnx_path("qud").name, layout.int8_path("qud").name) == ("qud.onnx", "qud.int8.onnx")


def test_agreement_embedder_returns_int8_features_and_measures_each_input():
    rng = np.random.default_rng(0)
    int8_feats = rng.normal(size=(5, 8)).astype(np.float32)  # (N, 2d): 5 images, d = 4, [image, mirror]
    float_feats = int8_feats[:, :4].copy()  # (N, d): the images alone
    float_feats[2] = -float_feats[2]  # image 2's float embedding points the other way: cosine -1
    int8_feats[3, 4:] = 0.0  # a mirror's embedding is not compared
    embed = AgreementEmbedder(lambda name, images: int8_feats, lambda name, images: float_feats)
    assert embed("synth_lfw", np.zeros((5, 112, 112, 3), np.uint8)) is int8_feats
    summary = embed.summary("exports/x.onnx")
    assert summary["images"] == 5 and summary["min"] == pytest.approx(-1.0) and summary["median"] == pytest.approx(1.0)
    assert summary["per_benchmark"]["synth_lfw"]["images"] == 5 and summary["reference"] == "exports/x.onnx"
    other = AgreementEmbedder(lambda n, i: int8_feats[:, :6], lambda n, i: float_feats[:, :3])
    for wrong in (float_feats[:4], int8_feats):  # other images; [image, mirror] where the images alone belong
        with pytest.raises(DataError, match="INT8 features"):
            AgreementEmbedder(lambda n, i: int8_feats, lambda n, i, w=wrong: w)("ijb", None)
    assert other("a", None).shape == (5, 6)
    with pytest.raises(DataError, match="no images were embedded"):
        AgreementEmbedder(lambda n, i: int8_feats, lambda n, i: float_feats).summary("x")
    assert row_cosines(np.zeros((1, 3)), np.ones((1, 3)))[0] == 0.0


def _pairs(n_ids: int = 80, seed: int = 0):
    rng = np.random.default_rng(seed)
    genuine = np.stack([np.repeat(np.arange(n_ids), 3)] * 2, axis=1)
    impostor = rng.integers(0, n_ids, (30 * n_ids, 2))
    impostor = impostor[impostor[:, 0] != impostor[:, 1]]
    subjects = np.concatenate([genuine, impostor])
    labels = np.r_[np.ones(len(genuine)), np.zeros(len(impostor))].astype(np.int8)
    base = labels * 2.0 + rng.normal(size=len(labels))
    return subjects, labels, base, rng


def test_contrasts_ride_on_the_same_resamples():
    """Adding an INT8 copy and its contrast leaves every other interval as it was; the contrast is
    the paired difference (its interval narrower than the two models' own)."""
    subjects, labels, base, rng = _pairs()
    scores = {"none": base, "good": base + labels * 0.5, "teacher": base + labels}
    quantized = scores["good"] + 0.02 * rng.normal(size=len(labels))
    metric = lambda s: s.tar_at_far([1e-2])[1e-2]  # noqa: E731
    kw = {"baseline": "none", "teacher": "teacher", "n_resamples": 200, "seed": 3}
    alone = paired_study(subjects, labels, scores, metric, **kw)
    both = paired_study(subjects, labels, {**scores, "good.int8": quantized}, metric,
                        contrasts={"good": ("good.int8", "good")}, **kw)
    for name in scores:
        assert both.models[name] == alone.models[name] and both.vs_baseline[name] == alone.vs_baseline[name]
    drop = both.contrasts["good"]
    assert drop.value == pytest.approx(both.models["good.int8"].value - both.models["good"].value)
    assert drop.low <= drop.value <= drop.high
    assert drop.high - drop.low < both.models["good"].high - both.models["good"].low
    with pytest.raises(DataError, match="contrasts name models without scores"):
        paired_study(subjects, labels, scores, metric, contrasts={"x": ("x.int8", "good")}, **kw)


def test_verdict_refuses_beyond_and_accepts_within():
    refused, why = int8_verdict(0.03, 0.02)
    assert refused is False and "more than registry.max_int8_drop 0.02" in why
    assert int8_verdict(0.02, 0.02)[0] is True and int8_verdict(-0.01, 0.0)[0] is True
    assert int8_verdict(0.5, None)[0] is None


def _version(number: int, value: float, int8_value: float | None, *, int8_tag: bool = True) -> ModelVersion:
    """A registered version as `facekd register` tags it (a real MLflow entity, no store)."""
    tags = {"model": f"m{number}", TAG: repr(value), "export_checks_passed": "true"}
    if int8_value is not None:
        tags |= {"int8_onnx_sha256": "ab" * 32, **({"int8." + TAG: repr(int8_value)} if int8_tag else {})}
    return ModelVersion("facekd", str(number), 0, tags=[ModelVersionTag(k, v) for k, v in tags.items()])


def test_int8_gate_over_random_metric_pairs():
    """The rule, independently: with a limit set, promote only when float - INT8 <= limit (and the
    float gate would promote); a candidate without an INT8 copy is refused outright."""
    rng = np.random.default_rng(20261203)
    seen = {"promoted": 0, "int8 refused": 0, "float kept": 0, "no int8": 0}
    for i in range(400):
        value = float(rng.choice([0.3, 0.5, 0.7]))
        int8_value = None if rng.random() < 0.1 else value - float(rng.choice([-0.01, 0.0, 0.005, 0.01, 0.02, 0.1]))
        limit = [None, 0.0, 0.01, 0.02][int(rng.integers(4))]
        champion = None if rng.random() < 0.5 else _version(10_000 + i, float(rng.choice([0.2, 0.6])), None)
        candidate = _version(i, value, int8_value)
        try:
            decision = decide(candidate, champion, METRIC, 0.0, limit)
        except RegistryError as err:
            assert limit is not None and int8_value is None, str(err)
            assert "without an INT8 copy" in str(err) and "max_int8_drop: null" in str(err)
            seen["no int8"] += 1
            continue
        beats = champion is None or value > float(champion.tags[TAG])
        within = limit is None or value - int8_value <= limit
        assert decision.promote == (beats and within), (i, value, int8_value, limit, decision)
        if limit is not None:
            assert decision.int8_drop == pytest.approx(value - int8_value)
            assert ("refused" in decision.reason) == (not within)
        seen["promoted" if decision.promote else "int8 refused" if not within else "float kept"] += 1
    assert all(seen.values()), seen


def test_gate_needs_the_int8_reading_of_the_gate_metric():
    version = _version(1, 0.5, 0.5, int8_tag=False)
    with pytest.raises(RegistryError, match=r"no number in tag int8\.eval\.ijb\.tar_at_far_1e-3"):
        decide(version, None, METRIC, 0.0, 0.01)
    assert decide(version, None, METRIC, 0.0, None).promote  # gate off: float-only release
    assert json.dumps(int8_verdict(math.inf, 0.01))
