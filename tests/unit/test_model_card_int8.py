"""The model card states the INT8 copy's size, calibration data and cosine to float when it exists."""
from __future__ import annotations

import json

from facekd.export.model_card import build_card, render_markdown

INT8 = {"sha256": "ab" * 32, "file_bytes": 208473, "calibration_data": "data/prepared/train.rec",
        "calibration_images": 256, "kept_float": ["/conv1/conv/Conv"], "ops": {"conv_int8": 48},
        "cosine_to_float": {"min": 0.99267, "median": 0.99944, "images": 64}}


def _card(export_report: dict) -> dict:
    point = {"benchmark": "ijb", "far": 1e-3, "threshold": 0.31, "tar": 0.5, "num_genuine": 150, "num_impostor": 6000}
    return build_card(model="none", meta={"arch": "mfn", "embedding_size": 64, "width": 0.125}, metrics={},
                      export_report=export_report, onnx_sha256="cd" * 32, gate_metric="ijb.tar@far=1e-3",
                      gate_value=0.5, git_commit=None, operating_point=point,
                      eval_data={"source": "synthetic", "path": "data/eval"})


def test_card_states_the_int8_copy():
    card = _card({"checks": {"passed": True}, "int8": INT8})
    assert card["int8"]["file_bytes"] == 208473 and card["int8"]["calibration_images"] == 256
    assert card["int8"]["cosine_to_float"]["min"] == 0.99267
    json.dumps(card)
    text = render_markdown(card)
    assert ("| INT8 ONNX | 208473 bytes, calibrated on 256 images of `data/prepared/train.rec`; embedding "
            "cosine to float min 0.9927, median 0.9994 |") in text


def test_card_without_an_int8_copy_says_so():
    card = _card({"checks": {"passed": True}})
    assert card["int8"] is None
    assert "| INT8 ONNX | not made |" in render_markdown(card)
