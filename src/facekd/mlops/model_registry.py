"""MLflow model registry: the best student becomes ``candidate``; a gate moves ``champion``.

- :func:`register_candidate` logs the exported ONNX model (MLflow ``onnx`` flavour with signature
  and input example), the PyTorch weights, the export report and a model card to a new MLflow run,
  registers it under ``registry.model_name`` and points alias ``candidate`` at it. A version is
  identified by the sha256 of its ONNX file (version tag ``onnx_sha256``): registering the same file
  again reuses that version.
- :func:`promote` moves ``champion`` to the candidate only if its export checks passed, it has the
  gate metric, and it beats the champion by strictly more than ``registry.min_improvement``
  (a tie never promotes). Each promotion tags the new champion with ``previous_champion``,
  ``promoted_at`` and ``metric_delta``; those tags form the chain :func:`rollback` walks back.
- Every problem is a :class:`RegistryError` raised before any alias moves, so the champion is
  never left half-changed.
- The INT8 copy (``exports/<model>.int8.onnx``, evaluated as ``<model>.int8``) is registered *in
  the same version* as its float parent: a second MLflow ONNX model ``int8/`` in the same run
  (``runs:/<run_id>/int8``), with version tags ``int8_*`` (file hash, gate value, drop from float and
  its paired interval, cosine) and ``int8.eval.<metric>`` (every INT8 evaluation number). Why not
  a linked registered model: a release is the pair, and the gate judges the pair; one version
  means one alias move promotes (and :func:`rollback` restores) float and INT8 together, with no
  second alias to keep in step and no window where ``champion`` names a float model whose INT8
  copy is another's. With ``registry.max_int8_drop`` set, :func:`promote` refuses a candidate
  whose INT8 copy loses more than that on the gate metric (:func:`int8_verdict`).

Everything goes through an explicit ``MlflowClient`` (no global tracking URI, no active run).
The URI is ``MLFLOW_TRACKING_URI`` when set, else ``tracking.uri``.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from facekd import layout
from facekd.config import Params
from facekd.errors import RegistryError
from facekd.fsio import write_json, write_text
from facekd.mlops.client import open_registry, tracking_uri
from facekd.mlops.evidence import Candidate, Int8Evidence, Selection, gate_value, gather_candidate, int8_verdict

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

CANDIDATE = "candidate"
CHAMPION = "champion"
MODEL_ARTIFACT = "model"
INT8_ARTIFACT = "int8"  # the INT8 copy's MLflow model, beside MODEL_ARTIFACT in the same run
INT8_EVAL_TAG = "int8.eval."  # version tags int8.eval.<benchmark>.<metric>: the INT8 copy's numbers
HISTORY_TAG = "champion_history"
EVAL_TAG = "eval."  # version tags eval.<benchmark>.<metric>, one number each
LEGACY_EVAL_TAG = "eval_metrics"  # the JSON blob of versions registered before the eval.* tags
HISTORY_KEEP = 50
NO_VERSION = "none"


def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        with contextlib.suppress(MlflowException):  # created by another process in between
            client.create_registered_model(name, description="facekd: distilled face-recognition students (ONNX)")


def _require_registered_model(client: MlflowClient, name: str) -> dict[str, str]:
    """The registered model's tags; RegistryError if it does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return dict(client.get_registered_model(name).tags)
    except MlflowException:
        raise RegistryError(
            f"registered model '{name}' not found in MLflow at {client.tracking_uri}; run `facekd register` first "
            "(or check registry.model_name)"
        ) from None


def _by_alias(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def _find_version(client: MlflowClient, name: str, sha256: str, int8_sha256: str | None = None) -> ModelVersion | None:
    """The newest version of ``name`` whose ONNX file has this sha256 and whose INT8 copy this one
    (None: registered without one): a new INT8 file is a new version, since the artifact changed."""
    same = [mv for mv in client.search_model_versions(f"name='{name}'")
            if mv.tags.get("onnx_sha256") == sha256 and mv.tags.get("int8_onnx_sha256") == int8_sha256]
    return max(same, key=lambda mv: int(mv.version), default=None)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _version_tags(cand: Candidate) -> dict[str, str]:
    """Tags the gate reads later: everything it needs lives on the version itself."""
    checks = cand.export_report.get("checks", {})
    return {
        "onnx_sha256": cand.onnx_sha256,
        "model": cand.model,
        "method": str(cand.meta.get("method", cand.model)),
        "arch": str(cand.meta.get("arch")),
        "export_checks_passed": "true" if cand.checks_passed else "false",
        "export_failures": "; ".join(checks.get("failures", []))[:5000],
        "gate_metric": cand.gate_metric,
        "gate_value": repr(cand.gate_value),
        **_eval_tags(cand.metrics),
        "data_hash": str(cand.meta.get("data_hash")),
        "params_m": str(cand.meta.get("params_m", cand.metrics.get("params_m"))),
        "verify_far": repr(cand.operating_point["far"]),
        "verify_threshold": repr(cand.operating_point["threshold"]),
        # the promotion gate's noise bound: the gate metric's 95% lower bound (absent: none known)
        **({"gate_low": repr(cand.selection.gate_low), "gate_high": repr(cand.selection.gate_high)}
           if cand.selection is not None and cand.selection.gate_low is not None else {}),
        **({"selection": cand.selection.reason[:5000]} if cand.selection is not None else {}),
        **(_int8_tags(cand.int8) if cand.int8 is not None else {}),
    }


def _int8_tags(int8: Int8Evidence) -> dict[str, str]:
    """What the INT8 gate reads (``int8.eval.<metric>`` for any gate metric) and what a user looks for."""
    from facekd.evaluation.int8 import COSINE_KEY

    def number(value: float | None) -> str:
        return NO_VERSION if value is None else repr(value)

    numbers = _flat_numbers({k: v for k, v in int8.metrics.items() if k != COSINE_KEY})
    return {"int8_onnx_sha256": int8.onnx_sha256, "int8_artifact": INT8_ARTIFACT,
            "int8_gate_value": repr(int8.gate_value), "int8_drop": repr(int8.drop),
            "int8_drop_low": number(int8.drop_low), "int8_drop_high": number(int8.drop_high),
            "int8_cosine_min": number(int8.cosine.get("min")), "int8_cosine_median": number(int8.cosine.get("median")),
            **{INT8_EVAL_TAG + name: repr(value) for name, value in numbers.items()}}


def _eval_tags(metrics: dict[str, Any]) -> dict[str, str]:
    """One readable tag per evaluation number (``eval.ijb.tar_at_far_1e-3`` = ``0.08``), not one JSON blob:
    the MLflow UI lists them, and the gate reads the one it needs (:func:`version_metric`)."""
    return {EVAL_TAG + name: repr(value) for name, value in _flat_numbers(metrics).items()}


def _flat_numbers(tree: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Every number of a nested metrics tree, under its MLflow name (the one the evaluate run logs)."""
    from facekd.mlops.tracking import metric_name

    out: dict[str, float] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat_numbers(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value):
            out[metric_name(f"{prefix}{key}")] = float(value)
    return out


def _model_card(params: Params, cand: Candidate, git_commit: str | None) -> dict[str, Any]:
    from facekd.export.model_card import build_card

    return build_card(model=cand.model, meta=cand.meta, metrics=cand.metrics, export_report=cand.export_report,
                      onnx_sha256=cand.onnx_sha256, gate_metric=cand.gate_metric, gate_value=cand.gate_value,
                      git_commit=git_commit, operating_point=cand.operating_point,
                      eval_data={"source": params.data.source, "path": str(params.data.eval_dir)},
                      int8_eval=_card_int8(cand))


def _card_int8(cand: Candidate) -> dict[str, Any] | None:
    """The INT8 copy's evaluation as the model card states it (None without one)."""
    if cand.int8 is None:
        return None
    q = cand.int8
    return {"gate_metric": cand.gate_metric, "float_value": cand.gate_value, "int8_value": q.gate_value,
            "drop": q.drop, "drop_low": q.drop_low, "drop_high": q.drop_high, "cosine": q.cosine}


def _write_model_files(cand: Candidate, card: dict[str, Any], root: Path) -> None:
    """The MLflow ONNX model, the model card and the export report, under ``root``."""
    import mlflow.onnx
    import onnx
    import onnxruntime
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    from facekd.export.model_card import render_markdown
    from facekd.export.onnx import IMAGE_SIZE, INPUT_NAME, OUTPUT_NAME

    def save(path: Path, dest: str, metadata: dict[str, str]) -> None:
        proto = onnx.load(str(path))
        dim = proto.graph.output[0].type.tensor_type.shape.dim[-1].dim_value
        signature = ModelSignature(
            inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, IMAGE_SIZE, IMAGE_SIZE), INPUT_NAME)]),
            outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, dim), OUTPUT_NAME)]),
        )
        example = {INPUT_NAME: np.zeros((1, 3, IMAGE_SIZE, IMAGE_SIZE), np.float32)}  # a mid-grey image
        mlflow.onnx.save_model(
            proto,
            str(root / dest),
            signature=signature,
            input_example=example,
            pip_requirements=[f"onnx=={onnx.__version__}", f"onnxruntime=={onnxruntime.__version__}"],
            save_as_external_data=False,
            # What the export checks ran on; MLflow's default also lists CUDA and warns on every load
            # where onnxruntime has no CUDA build.
            onnx_execution_providers=["CPUExecutionProvider"],
            metadata={"facekd_model": cand.model, **metadata},
        )

    save(cand.onnx_path, MODEL_ARTIFACT, {"onnx_sha256": cand.onnx_sha256})
    if cand.int8 is not None:  # same input and output as the float model; its parent named in the metadata
        save(cand.int8.onnx_path, INT8_ARTIFACT, {"onnx_sha256": cand.int8.onnx_sha256, "precision": "int8",
                                                  "float_onnx_sha256": cand.onnx_sha256})
    (root / "model_card").mkdir()
    (root / "model_card" / "model_card.json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    (root / "model_card" / "model_card.md").write_text(render_markdown(card))
    (root / "export").mkdir()
    (root / "export" / "report.json").write_text(json.dumps(cand.export_report, indent=2, sort_keys=True) + "\n")


def _log_version(client: MlflowClient, params: Params, cand: Candidate, card: dict[str, Any]) -> ModelVersion:
    """A new MLflow run holding the model and its files, registered as a new version."""
    from mlflow.entities import Metric, Param

    from facekd.export.model_card import describe
    from facekd.mlops.tracking import default_tags, experiment_id

    commit = card["git_commit"]
    run = client.create_run(experiment_id(client, params.tracking.experiment), run_name=f"register-{cand.model}",
                            tags={**default_tags("register"), "facekd.model": cand.model})
    run_id = run.info.run_id
    try:
        with tempfile.TemporaryDirectory() as tmp:
            _write_model_files(cand, card, Path(tmp))
            for sub in (MODEL_ARTIFACT, *([INT8_ARTIFACT] if cand.int8 else []), "model_card", "export"):
                client.log_artifacts(run_id, str(Path(tmp) / sub), sub)
        for name in ("backbone.pt", "meta.json"):
            client.log_artifact(run_id, str(cand.model_dir / name), "pytorch")
        now = int(datetime.now(timezone.utc).timestamp() * 1000)
        numbers = {**_flat_numbers(cand.metrics), "gate": cand.gate_value,
                   **({"int8.gate": cand.int8.gate_value, "int8.drop": cand.int8.drop} if cand.int8 else {})}
        fields = {"model": cand.model, "method": cand.meta.get("method", cand.model), "arch": cand.meta.get("arch"),
                  "teacher": cand.meta.get("teacher"), "data_hash": cand.meta.get("data_hash"),
                  "gate_metric": cand.gate_metric, "onnx_sha256": cand.onnx_sha256, "git_commit": commit}
        client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in sorted(numbers.items())],
                         params=[Param(k, str(v)) for k, v in sorted(fields.items())])
        tags = {**_version_tags(cand), "git_commit": str(commit), "registered_at": _now()}
        version = client.create_model_version(
            params.registry.model_name, source=f"{run.info.artifact_uri}/{MODEL_ARTIFACT}", run_id=run_id,
            tags=tags, description=describe(card),
        )
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return version


def _refresh_tags(client: MlflowClient, name: str, version: ModelVersion, cand: Candidate,
                  card: dict[str, Any]) -> None:
    """Same ONNX file again: keep the version, bring its gate tags up to date (e.g. re-evaluated)."""
    from facekd.export.model_card import describe

    if version.description != describe(card):
        client.update_model_version(name, version.version, description=describe(card))
    for key, value in _version_tags(cand).items():
        if version.tags.get(key) != value:
            log.warning("version %s of %s: tag %s changes from %r to %r", version.version, name, key,
                        version.tags.get(key, "")[:80], value[:80])
            client.set_model_version_tag(name, version.version, key, value)


def register_candidate(params: Params, model_name: str, selection: Selection | None = None) -> dict[str, Any]:
    """Register ``model_name``'s exported ONNX as alias ``candidate``; writes ``reports/registry.json``
    (with why it was chosen, ``selection``)."""
    import dataclasses

    from facekd.export.model_card import render_markdown
    from facekd.mlops.tracking import git_commit

    cand = dataclasses.replace(gather_candidate(params, model_name), selection=selection)
    card = _model_card(params, cand, git_commit())
    name = params.registry.model_name
    with open_registry(params) as client:
        _ensure_registered_model(client, name)
        version = _find_version(client, name, cand.onnx_sha256, cand.int8.onnx_sha256 if cand.int8 else None)
        reused = version is not None
        if version is None:
            version = _log_version(client, params, cand, card)
        else:
            _refresh_tags(client, name, version, cand, card)
        client.set_registered_model_alias(name, CANDIDATE, version.version)
    result = {
        "registered_model": name,
        "version": str(version.version),
        "run_id": version.run_id,
        "model": model_name,
        "reused": reused,
        "gate_metric": cand.gate_metric,
        "gate_value": cand.gate_value,
        "onnx_sha256": cand.onnx_sha256,
        "export_checks_passed": cand.checks_passed,
        "tracking_uri": tracking_uri(params),
        "selection": selection.record() if selection is not None else None,
        "int8": cand.int8.record(params.registry.max_int8_drop) if cand.int8 is not None else None,
    }
    # The file leaves out "reused" so an unchanged registration rewrites identical bytes (DVC output).
    write_json(layout.REGISTRY_REPORT, {k: v for k, v in result.items() if k != "reused"})
    write_text(layout.MODEL_CARD, render_markdown(card))
    log.info("%s version %s (%s) is now '%s'%s", name, version.version, model_name, CANDIDATE,
             " (reused)" if reused else "")
    return result


# --- promotion and rollback -----------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    delta: float | None = None
    int8_drop: float | None = None  # float minus INT8 on the gate metric, when the INT8 gate ran


def version_metric(version: ModelVersion, metric: str, *, role: str) -> float:
    """The gate metric of a registered version, from its ``eval.<metric>`` tag (or, for a version an
    older facekd registered, its ``eval_metrics`` JSON tag)."""
    from facekd.mlops.tracking import metric_name

    where = f"{role} version {version.version} (model '{version.tags.get('model', '?')}')"
    key = EVAL_TAG + metric_name(metric)
    if key in version.tags:
        try:
            value = float(version.tags[key])
        except ValueError:
            raise RegistryError(f"{where}: tag {key} = {version.tags[key][:40]!r} is not a number; "
                                "register the model again") from None
        return gate_value({metric: value}, metric, model=version.tags.get("model", "?"), source=f"{where}, tag {key}")
    if LEGACY_EVAL_TAG not in version.tags:
        shown = sorted(k for k in version.tags if k.startswith(EVAL_TAG))
        raise RegistryError(
            f"{where}: no tag {key} for gate metric '{metric}' (its evaluation tags: {', '.join(shown[:12]) or 'none'}"
            f"{', ...' if len(shown) > 12 else ''}); evaluate it on that benchmark and register it again, or "
            "change registry.gate_metric")
    try:
        metrics = json.loads(version.tags[LEGACY_EVAL_TAG])
    except ValueError:
        raise RegistryError(f"{where}: its eval_metrics tag is not JSON; register the model again") from None
    return gate_value(metrics, metric, model=version.tags.get("model", "?"), source=f"{where}, tag eval_metrics")


def int8_drop(version: ModelVersion, metric: str, *, role: str = "candidate") -> float:
    """Float minus INT8 on ``metric`` for a registered version, from its ``eval.*`` and ``int8.eval.*`` tags.

    RegistryError when the version has no INT8 copy or no INT8 reading of ``metric``.
    """
    from facekd.mlops.tracking import metric_name

    where = f"{role} version {version.version} (model '{version.tags.get('model', '?')}')"
    if "int8_onnx_sha256" not in version.tags:
        raise RegistryError(
            f"{where} was registered without an INT8 copy, and registry.max_int8_drop is set (releases ship INT8); "
            "set export.int8.enabled, `dvc repro` and register again, or set registry.max_int8_drop: null for a "
            "float-only release. The champion was not changed.")
    key = INT8_EVAL_TAG + metric_name(metric)
    try:
        quantized = float(version.tags[key])
    except (KeyError, ValueError):
        quantized = math.nan
    if not math.isfinite(quantized):
        raise RegistryError(f"{where}: no number in tag {key} (its INT8 copy's {metric}); evaluate the INT8 copy on "
                            "that benchmark and register again, or change registry.gate_metric. The champion was "
                            "not changed.")
    return version_metric(version, metric, role=role) - quantized


def decide(candidate: ModelVersion, champion: ModelVersion | None, metric: str, min_improvement: float,
           max_int8_drop: float | None = None) -> Decision:
    """The promotion gate. RegistryError when the candidate must never be promoted as it stands.

    With ``max_int8_drop`` the candidate's INT8 copy must also stay within it (:func:`int8_verdict`),
    whether or not there is a champion.
    """
    if champion is not None and str(champion.version) == str(candidate.version):
        return Decision(False, f"candidate version {candidate.version} is already the champion")
    if candidate.tags.get("export_checks_passed") != "true":
        failures = candidate.tags.get("export_failures") or "no export check result recorded"
        raise RegistryError(
            f"candidate version {candidate.version} ('{candidate.tags.get('model', '?')}') failed its export checks "
            f"({failures}); it cannot be promoted. Fix the export and register again. The champion was not changed."
        )
    value = version_metric(candidate, metric, role="candidate")
    if candidate.tags.get("rolled_back_at"):
        when = candidate.tags["rolled_back_at"]
        return Decision(False, f"candidate version {candidate.version} was rolled back at {when}; register a new model")
    drop, int8_note = None, ""
    if max_int8_drop is not None:
        drop = int8_drop(candidate, metric)
        passed, why = int8_verdict(drop, max_int8_drop)
        if not passed:
            return Decision(False, f"candidate version {candidate.version} refused: {why}", None, drop)
        int8_note = f"; {why}"
    if champion is None:
        return Decision(True, f"no champion yet; candidate {metric} = {value:.6g}{int8_note}", None, drop)
    champion_value = version_metric(champion, metric, role="champion")
    delta = value - champion_value
    low = _float_tag(candidate, "gate_low")
    if low is None:  # registered without intervals: the point values decide
        verdict = "beats" if delta > min_improvement else "does not beat"
        reason = (f"candidate version {candidate.version} {verdict} champion version {champion.version} on {metric}: "
                  f"delta {delta:+.6g}, needs > {min_improvement:g} (no interval recorded){int8_note}")
        return Decision(delta > min_improvement, reason, delta, drop)
    # Beyond noise: even the low end of the candidate's 95% interval clears the champion's value.
    margin = low - champion_value
    verdict = "beats" if margin > min_improvement else "does not beat"
    reason = (f"candidate version {candidate.version} {verdict} champion version {champion.version} on {metric} "
              f"beyond noise: delta {delta:+.6g}, its 95% lower bound {low:.6g} is {margin:+.6g} from the "
              f"champion's {champion_value:.6g}, needs > {min_improvement:g}{int8_note}")
    return Decision(margin > min_improvement, reason, delta, drop)


def _float_tag(version: ModelVersion, key: str) -> float | None:
    try:
        value = float(version.tags[key])
    except (KeyError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _append_history(client: MlflowClient, name: str, tags: dict[str, str], event: dict[str, Any]) -> None:
    try:
        history = json.loads(tags.get(HISTORY_TAG, "[]"))
    except ValueError:
        history = []
    history = [*history, event][-HISTORY_KEEP:]
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))


def promote(params: Params) -> dict[str, Any]:
    """Move ``champion`` to ``candidate`` if the gate allows it; returns the decision and its reason."""
    name, metric = params.registry.model_name, params.registry.gate_metric
    with open_registry(params) as client:
        model_tags = _require_registered_model(client, name)
        candidate = _by_alias(client, name, CANDIDATE)
        if candidate is None:
            raise RegistryError(f"registered model '{name}' has no '{CANDIDATE}' alias; run `facekd register` first")
        champion = _by_alias(client, name, CHAMPION)
        max_drop = params.registry.max_int8_drop
        decision = decide(candidate, champion, metric, params.registry.min_improvement, max_drop)
        now = _now()
        client.set_model_version_tag(name, candidate.version, "last_gate_decision", f"{now}: {decision.reason}")
        if decision.int8_drop is not None:  # the INT8 gate's own record, refused or passed
            passed, why = int8_verdict(decision.int8_drop, max_drop)
            client.set_model_version_tag(name, candidate.version, "int8_gate",
                                         f"{now}: {'passed' if passed else 'refused'}: {why}")
        result = {"registered_model": name, "candidate": str(candidate.version), "gate_metric": metric,
                  "champion_before": str(champion.version) if champion else None, "promoted": decision.promote,
                  "reason": decision.reason, "metric_delta": decision.delta, "int8_drop": decision.int8_drop,
                  "max_int8_drop": max_drop}
        if not decision.promote:
            log.debug("champion unchanged: %s", decision.reason)
            return {**result, "champion": result["champion_before"]}
        previous = str(champion.version) if champion else NO_VERSION
        for key, value in {"promoted_at": now, "previous_champion": previous,
                           "metric_delta": NO_VERSION if decision.delta is None else repr(decision.delta)}.items():
            client.set_model_version_tag(name, candidate.version, key, value)
        client.set_registered_model_alias(name, CHAMPION, candidate.version)
        _append_history(client, name, model_tags, {"action": "promote", "version": str(candidate.version),
                                                   "previous": previous, "at": now, "delta": decision.delta})
    # Debug only: the caller (``facekd promote``) reports the decision in one line.
    log.debug("%s version %s is the new champion: %s", name, candidate.version, decision.reason)
    return {**result, "champion": str(candidate.version)}


def rollback(params: Params) -> dict[str, Any]:
    """Return ``champion`` to the version it replaced (tag ``previous_champion``)."""
    from mlflow.exceptions import MlflowException

    name = params.registry.model_name
    with open_registry(params) as client:
        model_tags = _require_registered_model(client, name)
        champion = _by_alias(client, name, CHAMPION)
        if champion is None:
            raise RegistryError(f"registered model '{name}' has no '{CHAMPION}'; nothing to roll back")
        previous = champion.tags.get("previous_champion", NO_VERSION)
        if previous == NO_VERSION:
            raise RegistryError(
                f"champion version {champion.version} of '{name}' was the first champion; "
                "there is no earlier one to roll back to"
            )
        try:
            client.get_model_version(name, previous)
        except MlflowException:
            raise RegistryError(
                f"previous champion version {previous} of '{name}' no longer exists; the champion was not changed"
            ) from None
        now = _now()
        client.set_model_version_tag(name, champion.version, "rolled_back_at", now)
        client.set_model_version_tag(name, previous, "reinstated_at", now)
        client.set_registered_model_alias(name, CHAMPION, previous)
        _append_history(client, name, model_tags, {"action": "rollback", "version": previous,
                                                   "previous": str(champion.version), "at": now})
    log.debug("%s: champion rolled back from version %s to %s", name, champion.version, previous)
    return {"registered_model": name, "champion_before": str(champion.version), "champion": previous,
            "rolled_back_at": now}
