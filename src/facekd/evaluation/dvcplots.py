"""DVC plots of the ROC curves: one plot per benchmark with every model on it, on a log FAR axis,
rendered to a page that works offline.

The evaluate stage writes ``plots/roc/<model>.json`` (rows ``{benchmark, fpr, tpr}`` of every
benchmark). Plotted as they are, DVC draws one plot per *model* and joins the benchmarks of a model
into one line. Face recognition reads a ROC per benchmark, all models together, TAR against a log
FAR. So the report stage regroups the rows into ``plots/roc_by_benchmark/<benchmark>.json`` (rows
``{model, fpr, tpr}``), and ``dvc.yaml``'s top-level ``plots:`` section draws that folder (one plot
per file) with the template ``.dvc/plots/roc_log_far.json``: a stepped line per model (the points
are exact ROC corners, so no smoothing), colour by model, dash by revision (``dvc plots diff``).

``dvc plots show`` writes a page that loads Vega from a CDN: blank without a network.
:func:`offline_html_template` is a ``--html-template`` with Vega, Vega-Lite and Vega-Embed inside
it (from the ``vl-convert-python`` package, the bundle Altair inlines for the same purpose), and
:func:`render` runs ``dvc plots show``/``diff`` with it (``facekd plots``, ``make plots``).
"""
from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import sys
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from facekd import layout
from facekd.errors import DataError, FacekdError
from facekd.fsio import replaced_dir, write_text

log = logging.getLogger(__name__)

OUT_DIR = Path("dvc_plots")  # dvc plots show's default output folder (gitignored)
PAGE_TITLE = "facekd: ROC per benchmark (DVC plots)"


def benchmark_rows(models: Sequence[str], src: Path = layout.ROC_POINTS) -> dict[str, list[dict[str, float | str]]]:
    """Benchmark -> rows ``{"model", "fpr", "tpr"}`` of every model, in ``models`` order."""
    by_bench: dict[str, list[dict[str, float | str]]] = defaultdict(list)
    for name in models:
        path = src / f"{name}.json"
        try:
            rows = json.loads(path.read_text())
        except FileNotFoundError:
            raise DataError(f"{path}: missing; run `dvc repro evaluate@{name}` first") from None
        except ValueError as err:
            raise DataError(f"{path}: not JSON ({err}); rerun `dvc repro evaluate@{name}`") from None
        if not isinstance(rows, list) or not all(isinstance(r, dict) and {"benchmark", "fpr", "tpr"} <= r.keys()
                                                 for r in rows):
            raise DataError(f"{path}: expected a list of {{benchmark, fpr, tpr}} rows; "
                            f"rerun `dvc repro evaluate@{name}`")
        for row in rows:
            by_bench[str(row["benchmark"])].append({"model": name, "fpr": row["fpr"], "tpr": row["tpr"]})
    return dict(by_bench)


def write_benchmark_rocs(models: Sequence[str], src: Path = layout.ROC_POINTS,
                         dest: Path = layout.ROC_BY_BENCHMARK) -> list[Path]:
    """Replace ``dest`` with one ``<benchmark>.json`` per benchmark (a benchmark that is gone leaves
    no stale file behind); returns the files written."""
    rows = benchmark_rows(models, src)
    with replaced_dir("plots", dest, {"evaluate's ROC points": src}) as staging:
        for bench, points in sorted(rows.items()):
            # one row a line: a diff of two runs' files reads row by row
            (staging / f"{bench}.json").write_text("[\n" + ",\n".join(json.dumps(p) for p in points) + "\n]\n")
    return [dest / f"{bench}.json" for bench in sorted(rows)]


def vega_bundle() -> str:
    """Vega + Vega-Lite + Vega-Embed as one script that sets ``window.vegaEmbed`` (what DVC's plot
    divs call), from the installed ``vl-convert-python``; nothing is downloaded."""
    try:
        import vl_convert
    except ImportError:
        raise FacekdError(
            "offline plots need the Vega libraries of the vl-convert-python package, which is not installed "
            "in this environment (pip install vl-convert-python); `dvc plots show` still writes a page that "
            "loads them from the internet") from None
    return vl_convert.javascript_bundle()


def offline_html_template(bundle: str | None = None) -> str:
    """An HTML page for ``dvc plots show --html-template``: the Vega libraries inside it, no CDN.

    The libraries go in as a ``data:`` URL rather than inline text, so nothing in ~1 MB of minified
    JavaScript can end the ``<script>`` element early; a classic script in ``<head>`` runs before
    the ``vegaEmbed(...)`` calls DVC writes into the body. DVC's ``{scripts}`` placeholder (its CDN
    tags) is deliberately absent; ``{plot_divs}`` and ``{refresh_tag}`` are DVC's.
    """
    code = base64.b64encode((bundle if bundle is not None else vega_bundle()).encode("utf-8")).decode("ascii")
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">', "{refresh_tag}",
        f"<title>{PAGE_TITLE}</title>",
        f'<script src="data:text/javascript;base64,{code}"></script>',
        "<style>body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; } "
        "h1 { font-size: 1.3rem; } p { color: #555; max-width: 60rem; } "
        "body > div { display: inline-block; vertical-align: top; margin: 0 1.5rem 1.5rem 0; }</style>",
        "</head>", "<body>", f"<h1>{PAGE_TITLE}</h1>",
        "<p>True accept rate against false accept rate (log scale), every model on each benchmark's plot; "
        "points are the ROC's corners, joined as steps. Written by <code>facekd plots</code> from dvc.yaml's "
        "<code>plots:</code> section; no network needed.</p>",
        "{plot_divs}", "</body>", "</html>", "",
    ])


def render(revisions: Sequence[str] = (), out: Path = OUT_DIR, repo: Path = Path(".")) -> Path:
    """``dvc plots show`` (or ``dvc plots diff REV...`` with revisions: git revs or experiment names)
    with the offline template; returns the page DVC wrote (``out/index.html``)."""
    template = offline_html_template()
    with tempfile.TemporaryDirectory(prefix="facekd-plots-") as tmp:
        path = Path(tmp) / "offline_template.html"
        write_text(path, template)
        command = [sys.executable, "-m", "dvc", "plots", *(("diff", *revisions) if revisions else ("show",)),
                   "--html-template", str(path), "-o", str(out)]
        proc = subprocess.run(command, cwd=repo, capture_output=True, text=True,
                              env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    if proc.returncode != 0:
        detail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-5:]
        raise FacekdError(f"`dvc plots {'diff' if revisions else 'show'}` failed in {repo.resolve()}: "
                          + " | ".join(detail))
    page = repo / out / "index.html" if not out.is_absolute() else out / "index.html"
    log.debug("dvc plots: %s", proc.stdout.strip())
    return page
