"""The model card puts the float model and its INT8 copy side by side: gate metric, drop with its
interval, cosine over the evaluation images, calibration data and file sizes (issue 18)."""
from __future__ import annotations

import json

from facekd.export.model_card import build_card, describe, render_markdown
from tests.unit.test_model_card_int8 import INT8, _card

EVALUATION = {"gate_metric": "ijb.tar@far=1e-3", "float_value": 0.10, "int8_value": 0.0933, "drop": 0.0067,
              "drop_low": -0.0067, "drop_high": 0.02, "cosine": {"min": 0.9943, "median": 0.99951, "images": 4800}}


def _with_evaluation(evaluation):
    card = _card({"checks": {"passed": True, "file_bytes": 149513}, "int8": INT8})
    args = dict(model="none", meta={"arch": "mfn", "embedding_size": 64, "width": 0.125}, metrics={},
                export_report={"checks": {"passed": True, "file_bytes": 149513}, "int8": INT8},
                onnx_sha256="cd" * 32, gate_metric="ijb.tar@far=1e-3", gate_value=0.10, git_commit=None,
                operating_point=card["verification"], eval_data={"source": "synthetic", "path": "data/eval"})
    return build_card(**args, int8_eval=evaluation)


def test_card_states_float_and_int8_numbers():
    card = _with_evaluation(EVALUATION)
    assert card["int8"]["evaluation"] == EVALUATION and card["int8"]["float_file_bytes"] == 149513
    json.dumps(card)
    text = render_markdown(card)
    section = text.split("## INT8\n\n", 1)[1].split("\n## ", 1)[0]
    assert "| gate: ijb.tar@far=1e-3 (%) | 10.00 | 9.33 |" in section
    assert "| ONNX file (bytes) | 149513 | 208473 |" in section
    assert "drop from float (float - INT8): +0.67 points (paired 95% interval -0.67 to +2.00)" in section
    assert "over the 4800 evaluated images (each and its mirror): min 0.9943, median 0.9995" in section
    assert "calibration: 256 training images of `data/prepared/train.rec`; kept in float: /conv1/conv/Conv" in section
    assert "drop from float +0.0067" in describe(card)


def test_card_without_an_int8_evaluation_says_what_is_missing():
    text = render_markdown(_with_evaluation(None))
    assert "not evaluated on the benchmarks" in text and "| gate: ijb" not in text.split("## INT8", 1)[1]
    assert "No INT8 copy was made" in render_markdown(_card({"checks": {"passed": True}}))
