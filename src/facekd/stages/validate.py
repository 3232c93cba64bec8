"""Stage ``validate``: the Great Expectations data gate.

Writes ``reports/validation.json`` and ``reports/validation.md`` in every case, then fails
(naming each failed expectation) when the data is bad, so nothing downstream runs on it.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from facekd import layout
from facekd.config import Params
from facekd.data.validation import ValidationFailed, build_manifests, failed_expectations, run_suite, summary_markdown
from facekd.fsio import write_json, write_text

log = logging.getLogger(__name__)


def run(params: Params, report_json: Path = layout.VALIDATION_JSON, report_md: Path = layout.VALIDATION_MD) -> dict:
    # GX progress bars flood CI logs; it reads this switch from the environment.
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    manifests = build_manifests(Path(params.data.prepared_dir), Path(params.data.eval_dir), params.data.validation)
    report = run_suite(manifests, params.data.validation)
    write_json(report_json, report)
    write_text(report_md, summary_markdown(report))
    failed = failed_expectations(report)
    if failed:
        raise ValidationFailed(
            f"data validation of {Path(params.data.prepared_dir) / 'train.rec'} and {params.data.eval_dir} failed "
            f"({len(failed)} expectation(s)); see {report_md}:\n  - " + "\n  - ".join(failed)
        )
    log.info("data validation passed: %d images, %d identities (%s)", report["num_images"], report["num_classes"], report_md)
    return report
