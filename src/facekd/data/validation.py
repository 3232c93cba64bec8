"""Data gate: pandas manifests of the prepared data checked by a Great Expectations suite.

Three tables are validated:
- ``images``: one row per training image (label, decoded shape, decodes, content hash);
- ``identities``: one row per training identity (image count);
- ``eval``: one row per evaluation image (which set, content hash, whether it also occurs in
  training) and ``pair_sets``: one row per verification set (pairs, genuine share).

``great_expectations`` is imported inside :func:`run_suite` only: importing it takes seconds.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from facekd.config import ValidationParams
from facekd.errors import DataError, FacekdError

log = logging.getLogger(__name__)

IMAGE_SHAPE = (112, 112, 3)


@dataclass(frozen=True)
class Manifests:
    images: pd.DataFrame
    identities: pd.DataFrame
    eval_images: pd.DataFrame
    pair_sets: pd.DataFrame
    num_classes: int


def _digest(blob: bytes) -> str:
    return hashlib.sha1(blob).hexdigest()


def _shape_of(blob: bytes) -> tuple[int, int, int, bool]:
    """(height, width, channels, decodes) without raising: the suite reports failures (an image
    over ``data.limits`` counts as one that does not decode)."""
    from facekd.data.images import decode_stored

    try:
        arr = decode_stored(blob, "validate")
    except DataError:
        return 0, 0, 0, False
    channels = 1 if arr.ndim == 2 else arr.shape[2]
    return arr.shape[0], arr.shape[1], channels, True


def training_manifest(train_dir: Path, every_image: bool, sample: int = 10000) -> tuple[pd.DataFrame, int]:
    from facekd.data.face_rec import FaceRecordFile

    rec = FaceRecordFile(train_dir / "train.rec", train_dir / "train.idx")
    n = rec.num_images
    # Decoding every image of a multi-million dataset is slow: a seeded sample when asked.
    idx = np.arange(n) if every_image or n <= sample else np.sort(np.random.default_rng(0).choice(n, sample, False))
    rows = []
    for i in tqdm(idx, desc="validate: decode", unit="img", disable=None, mininterval=1.0):
        blob = rec.image_bytes(int(i))
        h, w, c, ok = _shape_of(blob)
        rows.append((int(i), int(rec.labels[i]), h, w, c, ok, _digest(blob)))
    images = pd.DataFrame(rows, columns=["index", "label", "height", "width", "channels", "decodes", "sha1"])
    return images, int(rec.num_classes)


def eval_manifest(eval_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Evaluation images (from .bin sets and any image files) and per-set pair balance."""
    from facekd.data.bins import load_bin
    from facekd.data.paths import Confined

    images, sets = [], []
    for path in sorted(eval_dir.glob("*.bin")):
        blobs, issame = load_bin(path)
        sets.append({"set": path.stem, "pairs": len(issame), "genuine_share": float(np.mean(issame)) if len(issame) else 0.0})
        images += [{"set": path.stem, "sha1": _digest(b)} for b in blobs]
    confined = Confined(eval_dir)
    for path in sorted(p for p in eval_dir.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"}):
        name = path.relative_to(eval_dir)
        blob = confined.file(name, "found in the evaluation folder").read_bytes()
        images.append({"set": name.parts[0], "sha1": _digest(blob)})
    return pd.DataFrame(images, columns=["set", "sha1"]), pd.DataFrame(sets, columns=["set", "pairs", "genuine_share"])


def build_manifests(train_dir: Path, eval_dir: Path, cfg: ValidationParams) -> Manifests:
    images, num_classes = training_manifest(train_dir, cfg.check_every_image)
    identities = images.groupby("label").size().rename("images").reset_index()
    eval_images, pair_sets = eval_manifest(eval_dir) if eval_dir.is_dir() else (pd.DataFrame(columns=["set", "sha1"]), pd.DataFrame(columns=["set", "pairs", "genuine_share"]))
    eval_images["in_training"] = eval_images["sha1"].isin(set(images["sha1"]))
    return Manifests(images, identities, eval_images, pair_sets, num_classes)


# Column that identifies a failing row in each table's report (record index, label, set name).
ROW_ID = {"images": "index", "identities": "label", "eval": "set", "pair_sets": "set"}


def _suites(m: Manifests, cfg: ValidationParams) -> dict[str, tuple[pd.DataFrame, list]]:
    import great_expectations.expectations as E

    h, w, c = IMAGE_SHAPE
    tol = cfg.pair_balance_tolerance
    return {
        "images": (m.images, [
            E.ExpectColumnValuesToBeOfType(column="label", type_="int64"),
            E.ExpectColumnValuesToBeBetween(column="label", min_value=0, max_value=m.num_classes - 1),
            E.ExpectColumnValuesToBeInSet(column="decodes", value_set=[True]),
            E.ExpectColumnValuesToBeInSet(column="height", value_set=[h]),
            E.ExpectColumnValuesToBeInSet(column="width", value_set=[w]),
            E.ExpectColumnValuesToBeInSet(column="channels", value_set=[c]),
            E.ExpectColumnValuesToBeUnique(column="sha1", mostly=1.0 - cfg.max_duplicate_share),
        ]),
        "identities": (m.identities, [
            E.ExpectColumnDistinctValuesToEqualSet(column="label", value_set=list(range(m.num_classes))),
            E.ExpectColumnValuesToBeBetween(column="images", min_value=cfg.min_images_per_identity),
        ]),
        "eval": (m.eval_images, [E.ExpectColumnValuesToBeInSet(column="in_training", value_set=[False])]),
        "pair_sets": (m.pair_sets, [
            E.ExpectColumnValuesToBeBetween(column="genuine_share", min_value=0.5 - tol, max_value=0.5 + tol),
            E.ExpectColumnValuesToBeBetween(column="pairs", min_value=1),
        ]),
    }


def run_suite(m: Manifests, cfg: ValidationParams) -> dict:
    """Validate every table; returns a JSON-able report with one entry per expectation."""
    # GX logs its import-time registry bookkeeping ("Skipping registering function ...", 200+
    # lines) and context set-up at INFO; facekd logs at INFO, so keep only GX's warnings. One of
    # its modules sets its own logger to INFO on import: that one is quietened after the import.
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    import great_expectations as gx

    from great_expectations.data_context.types.base import ProgressBarsConfig

    logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas("facekd")
    report: dict = {"success": True, "num_classes": m.num_classes, "num_images": len(m.images), "tables": {}}
    for table, (frame, expectations) in _suites(m, cfg).items():
        batch = source.add_dataframe_asset(table).add_batch_definition_whole_dataframe("all").get_batch(
            batch_parameters={"dataframe": frame})
        suite = gx.ExpectationSuite(name=table, expectations=expectations)
        result = batch.validate(suite, result_format={
            "result_format": "COMPLETE", "unexpected_index_column_names": [ROW_ID[table]]})
        entries = [_entry(r) for r in result.results]
        report["tables"][table] = {"rows": len(frame), "success": bool(result.success), "expectations": entries}
        report["success"] &= bool(result.success)
    return report


def _entry(r) -> dict:
    cfg = r.expectation_config
    kwargs = {k: v for k, v in cfg.kwargs.items() if k not in {"batch_id", "value_set"} or k == "value_set" and len(v) <= 10}
    res = r.result or {}
    return {
        "expectation": cfg.type,
        "kwargs": kwargs,
        "success": bool(r.success),
        "unexpected_count": res.get("unexpected_count"),
        "unexpected_examples": [_row(v) for v in (res.get("unexpected_index_list") or [])[:5]],
        "observed": str(res.get("observed_value")) if "observed_value" in res else None,
    }


def _row(v) -> str:
    """``{'label': 3, 'images': 1}`` -> ``label=3 images=1``."""
    return " ".join(f"{k}={x}" for k, x in v.items()) if isinstance(v, dict) else str(v)


def summary_markdown(report: dict) -> str:
    lines = ["# Data validation", "", f"Overall: **{'PASSED' if report['success'] else 'FAILED'}** "
             f"({report['num_images']} training images, {report['num_classes']} identities)", ""]
    for table, t in report["tables"].items():
        lines += [f"## {table} ({t['rows']} rows): {'passed' if t['success'] else 'FAILED'}", ""]
        for e in t["expectations"]:
            mark = "ok  " if e["success"] else "FAIL"
            detail = "" if e["success"] else f" - unexpected {e['unexpected_count']}, e.g. {e['unexpected_examples']}{' observed ' + e['observed'] if e['observed'] else ''}"
            lines.append(f"- {mark} {e['expectation']} {e['kwargs']}{detail}")
        lines.append("")
    return "\n".join(lines)


def failed_expectations(report: dict) -> list[str]:
    return [f"{table}: {e['expectation']} {e['kwargs']} (unexpected {e['unexpected_count']}, e.g. {e['unexpected_examples']})"
            for table, t in report["tables"].items() for e in t["expectations"] if not e["success"]]


class ValidationFailed(FacekdError):
    """The prepared data failed the gate; nothing downstream may run."""
