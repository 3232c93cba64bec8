"""params.yaml -> typed config: defaults valid, unknown/mistyped keys refused with the key path."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from facekd.config import Params, load_params, parse_params, trained_models
from facekd.distill.registry import foreach_methods
from facekd.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]



def flatten(section: BaseModel, prefix: str = "") -> dict[str, Any]:
    """``{"optim.lr": 0.1, ...}``: a section as dotted keys, to compare whole configs."""
    out: dict[str, Any] = {}
    for key, value in section.model_dump(mode="json").items():
        out.update(_dotted(value, f"{prefix}{key}"))
    return out


def _dotted(value: Any, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        return {key: value}
    return {k: v for sub, inner in value.items() for k, v in _dotted(inner, f"{key}.{sub}").items()}


def test_committed_params_are_valid():
    params = load_params(ROOT / "params.yaml")
    assert params.data.source == "synthetic"
    assert set(params.distill.methods) <= set(foreach_methods())


@pytest.mark.parametrize("preset", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_full_scale_presets_are_valid(preset):
    load_params(preset)


@pytest.mark.parametrize(
    ("raw", "fragments"),
    [
        ({"distill": {"qud": {"tua": 0.1}}}, ["distill.qud.tua", "allowed keys here: margin, queue_size, tau"]),
        ({"bogus": 1}, ["unknown key 'bogus'", "distill", "teacher"]),
        ({"teacher": {"optim": {"lr": "fast"}}}, ["teacher.optim.lr"]),
        ({"teacher": {"head": {"type": "sphereface"}}}, ["teacher.head.type", "arcface"]),
        ({"distill": {"methods": ["nonsense"]}}, ["unknown method", "adadistill"]),
        ({"distill": {"methods": ["shkd"]}}, ["distill.head_sharing"]),
        ({"distill": {"head_sharing": ["qud"]}}, ["distill.head_sharing", "shkd"]),
        ({"teacher": {"source": "onnx"}}, ["SH-KD fine-tunes the teacher", "distill.head_sharing: []"]),
        ({"teacher": {"source": "onnx"}, "distill": {"head_sharing": []}, "evaluate": {"models": ["teacher"]},
          "export": {"models": ["teacher"]}},
         ["drop 'teacher' from export.models"]),
        ({"teacher": {"onnx": {"color": "yuv"}}}, ["teacher.onnx.color", "bgr"]),
        ({"distill": {"head_sharing": []}, "evaluate": {"models": ["shkd"]}}, ["evaluate.models", "shkd"]),
        ({"distill": {"qud": {"queue_size": 100}, "optim": {"batch_size": 64}}}, ["queue_size=100", "multiple"]),
        ({"evaluate": {"models": ["teacher", "ghost"]}}, ["evaluate.models", "ghost"]),
        ({"data": {"source": "rec"}}, ["data.path is required"]),
        ({"seed": 2**32 - 2, "distill": {"seeds": 3}}, ["runs past the largest seed", "distill.seeds"]),
        ({"distill": {"seeds": 0}}, ["distill.seeds"]),
    ],
)
def test_bad_params_name_the_key(raw, fragments):
    with pytest.raises(ConfigError) as err:
        parse_params(raw)
    for fragment in fragments:
        assert fragment in str(err.value)


def test_load_params_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_params(missing)
    bad = tmp_path / "bad.yaml"
    bad.write_text("teacher: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_params(listy)


def test_config_is_frozen_and_an_override_changes_only_its_section():
    p = Params()
    with pytest.raises(Exception):
        p.seed = 3  # type: ignore[misc]
    q = parse_params({"distill": {"qud": {"tau": 0.07}}})
    assert q.distill.qud != p.distill.qud and q.distill.qud.tau == 0.07
    assert q.distill.adadistill == p.distill.adadistill


def test_flatten_gives_dotted_keys():
    flat = flatten(Params().distill, "distill.")
    assert flat["distill.qud.tau"] == 0.1
    assert "distill.optim.lr" in flat
    assert trained_models()[0] == "teacher"


@pytest.mark.parametrize("preset", sorted((ROOT / "configs").glob("ms1m*.yaml")), ids=lambda p: p.name)
def test_presets_name_registered_backbones(preset):
    from facekd.models.registry import list_backbones

    params = load_params(preset)
    assert params.teacher.backbone.arch in list_backbones()
    assert params.distill.student.arch in list_backbones()
    assert params.data.source == "rec" and params.registry.gate_metric.startswith("ijbc.")


def test_the_onnx_teacher_preset_is_the_embedded_default_but_for_the_teacher():
    """configs/embedded_onnx_teacher.yaml must follow params.yaml: only the ONNX-teacher keys differ."""
    default = flatten(load_params(ROOT / "params.yaml"))
    preset = flatten(load_params(ROOT / "configs" / "embedded_onnx_teacher.yaml"))
    differ = {k for k in default.keys() | preset.keys() if default.get(k) != preset.get(k)}
    assert differ == {"teacher.source", "teacher.onnx.path", "distill.head_sharing", "evaluate.models", "export.models"}
    assert preset["teacher.source"] == "onnx" and "shkd" not in preset["evaluate.models"]
