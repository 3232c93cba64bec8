"""Two runs' headline numbers side by side: ``facekd compare A B``.

``dvc exp show`` lists every experiment in one wide row each; a person comparing two of them wants
the models as rows: the gate metric of A, of B, and the difference. A and B are each

- a headline file (``metrics/headline.json`` of any run, e.g. one a colleague sent),
- ``workspace``: this repository's current ``metrics/headline.json``,
- or a revision as DVC reads it: a git commit, branch or tag, or an experiment name from
  ``dvc exp show`` (through ``dvc.api.metrics_show``, which resolves experiment names the way
  ``dvc metrics diff`` does).

The difference is B - A in percentage points. Each side's interval is shown when its report
computed one; the two runs are different models, so no paired test between them is claimed.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from facekd import layout
from facekd.errors import DataError
from facekd.evaluation import headline as hl

WORKSPACE = "workspace"
METRICS = ("gate", "lfw_acc")  # what can be compared; intervals ride along with the gate


@dataclass(frozen=True)
class Side:
    """One run's headline: where it came from (for the column header) and its content."""

    label: str
    headline: dict[str, Any]

    @property
    def gate_metric(self) -> str:
        return str(self.headline[hl.GATE_METRIC])

    def models(self) -> dict[str, Mapping[str, Any]]:
        return {name: row for name, row in self.headline.items() if name != hl.GATE_METRIC}


def load(source: str, repo: Path = Path(".")) -> Side:
    """The headline named by ``source`` (a file, ``workspace`` or a revision), read in ``repo``."""
    path = Path(source)
    if path.is_file():
        return Side(source, hl.read(path))
    if source == WORKSPACE:
        return Side(WORKSPACE, hl.read(repo / layout.HEADLINE))
    return Side(source, at_revision(source, repo))


def at_revision(rev: str, repo: Path = Path(".")) -> dict[str, Any]:
    """``metrics/headline.json`` as committed in ``rev`` (a git revision or a DVC experiment name)."""
    import dvc.api

    try:
        data = dvc.api.metrics_show(str(layout.HEADLINE), repo=str(repo), rev=rev)
    except Exception as err:  # noqa: BLE001 - DVC raises many kinds (unknown rev, not a repo, ...); one message
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise DataError(f"'{rev}': not a headline file, not 'workspace' and not a revision or experiment DVC "
                        f"can read in {repo.resolve()} ({first}); see `dvc exp show` for experiment names") from None
    if not data:
        raise DataError(f"'{rev}' has no {layout.HEADLINE} (a run before facekd wrote it, or one whose results were "
                        "never committed: commit dvc.lock and metrics/ after a run, see README 'Experiments')")
    return hl.parse(data, f"{layout.HEADLINE} at '{rev}'")


def _pct(value: Any, signed: bool = False) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "-"
    return f"{100 * value:{'+' if signed else ''}.2f}"


def _cell(row: Mapping[str, Any] | None, metric: str) -> str:
    if row is None:
        return ""
    text = _pct(row.get(metric))
    if metric == "gate" and "gate_low" in row and "gate_high" in row:
        text += f" [{_pct(row['gate_low'])}, {_pct(row['gate_high'])}]"
    return text


def _difference(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None, metric: str) -> str:
    values = [row.get(metric) if row is not None else None for row in (a, b)]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return ""
    return _pct(values[1] - values[0], signed=True)


def _order(a: Side, b: Side, metric: str) -> list[str]:
    """Teacher first, then B's models best first (the run being judged), then models only A has."""
    def key(name: str) -> float:
        value = b.models().get(name, {}).get(metric)
        return -value if isinstance(value, (int, float)) and not isinstance(value, bool) else math.inf

    names = sorted(b.models(), key=key) + sorted(set(a.models()) - set(b.models()))
    return ["teacher", *(n for n in names if n != "teacher")] if "teacher" in names else names


def table(a: Side, b: Side, metric: str = "gate") -> str:
    """Plain-text table: one row per model, A's value, B's value, B - A (percentage points)."""
    if metric not in METRICS:
        raise DataError(f"cannot compare '{metric}': choose one of {', '.join(METRICS)}")
    if metric == "gate" and a.gate_metric != b.gate_metric:
        raise DataError(f"{a.label} gates on {a.gate_metric} and {b.label} on {b.gate_metric}: their 'gate' "
                        "numbers are different metrics; compare another one (--metric lfw_acc)")
    name = f"gate metric {a.gate_metric}" if metric == "gate" else "LFW-style accuracy (lfw_acc)"
    header = ["model", a.label, b.label, "B - A"]
    rows = [[model, _cell(a.models().get(model), metric), _cell(b.models().get(model), metric),
             _difference(a.models().get(model), b.models().get(model), metric)] for model in _order(a, b, metric)]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        padded = (c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
        return "  ".join(padded)

    intervals = " [95% interval]" if metric == "gate" and any(
        "gate_low" in row for side in (a, b) for row in side.models().values()) else ""
    return "\n".join([f"{name}, percent{intervals}; A = {a.label}, B = {b.label}", line(header),
                      line(["-" * w for w in widths]), *(line(r) for r in rows)]) + "\n"
