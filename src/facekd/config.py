"""Typed configuration: ``params.yaml`` parsed into frozen pydantic models.

Every section rejects unknown keys, and a validation failure becomes one
:class:`ConfigError` whose message names the key path (``distill.qud.tau``) and,
for an unknown key, the keys that are allowed there.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from facekd.errors import ConfigError

DISTILL_METHODS = ("none", "feature", "logit", "arcdistill", "adadistill", "qud", "thkd", "shkd", "gkd")
# shkd needs its own teacher stage (fine-tuned through the `none` student's head), so it runs as
# the dedicated stages `shkd_teacher` + `distill_shkd` rather than in the `distill` foreach.
FOREACH_METHODS = tuple(m for m in DISTILL_METHODS if m != "shkd")
ALL_MODELS = ("teacher", *FOREACH_METHODS, "shkd")


class Section(BaseModel):
    """Base of every config section: frozen, unknown keys rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class SyntheticData(Section):
    """Scale and difficulty of the embedded procedural face dataset."""

    train_identities: int = Field(200, ge=2)
    images_per_identity: int = Field(20, ge=2)
    eval_identities: int = Field(100, ge=4)
    eval_images_per_identity: int = Field(12, ge=4)
    mask_share: float = Field(0.25, ge=0.0, le=1.0)
    nuisance: float = Field(1.0, ge=0.0, le=3.0)
    pairs_per_set: int = Field(600, ge=20)
    ijb_media_per_template: int = Field(2, ge=1)
    ijb_images_per_media: int = Field(2, ge=1)
    jpeg_quality: int = Field(95, ge=50, le=100)
    seed: int = 0
    workers: int = Field(2, ge=1)


class ValidationParams(Section):
    """Thresholds of the Great Expectations data gate."""

    min_images_per_identity: int = Field(2, ge=1)
    max_duplicate_share: float = Field(0.0, ge=0.0, le=1.0)
    pair_balance_tolerance: float = Field(0.1, ge=0.0, le=0.5)
    check_every_image: bool = True


class DataParams(Section):
    """Where the training data comes from and where prepared data lives.

    ``path`` and ``eval_path`` are deps of the ``prepare`` stage in ``dvc.yaml``, so under DVC
    they must name existing paths (params.yaml: the ``data/raw/`` folders); None is for running
    a stage outside DVC (then ``path`` is still required for a real source).
    """

    source: Literal["synthetic", "rec", "folder", "unlabeled"] = "synthetic"
    path: str | None = None  # identity folders, a train.rec, or a folder holding train.rec + .idx
    eval_path: str | None = None  # folder of .bin sets (+ ijb/, mfr/)
    prepared_dir: str = "data/prepared"
    eval_dir: str = "data/eval"
    synthetic: SyntheticData = SyntheticData()
    validation: ValidationParams = ValidationParams()

    @model_validator(mode="after")
    def _path_for_real_sources(self) -> "DataParams":
        if self.source != "synthetic" and not self.path:
            raise ValueError(f"data.path is required when data.source is '{self.source}'")
        return self


class BackboneParams(Section):
    """A backbone from the model registry (`facekd models` lists them)."""

    arch: str = "iresnet18"
    embedding_size: int = Field(512, ge=8)
    width: float = Field(1.0, gt=0.0, le=4.0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    fp16: bool = False

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, arch: str) -> str:
        # Refused here, before any stage computes, rather than when the model is first built.
        from facekd.models.registry import list_backbones

        if arch not in list_backbones():
            raise ValueError(f"unknown backbone '{arch}'; valid: {', '.join(list_backbones())}")
        return arch


class HeadParams(Section):
    """Margin softmax head."""

    type: Literal["arcface", "arcface_st", "cosface"] = "arcface"
    scale: float = Field(64.0, gt=0.0)
    margin: float = Field(0.5, ge=0.0, lt=1.5)
    sample_rate: float = Field(1.0, gt=0.0, le=1.0)


class OptimParams(Section):
    """SGD and its learning-rate schedule (stepped per iteration)."""

    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=2)
    lr: float = Field(0.1, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(5e-4, ge=0.0)
    nesterov: bool = False
    schedule: Literal["step", "poly"] = "step"
    milestones: tuple[float, ...] = (0.5, 0.75)
    gamma: float = Field(0.1, gt=0.0, le=1.0)
    warmup_epochs: float = Field(0.0, ge=0.0)
    poly_power: float = Field(2.0, gt=0.0)
    clip_grad_norm: float = Field(5.0, ge=0.0)
    grad_accum: int = Field(1, ge=1)
    amp: Literal["off", "fp16", "bf16"] = "off"
    # auto: channels_last on CUDA, and on CPU where measured faster (facekd.training.runtime)
    channels_last: bool | Literal["auto"] = "auto"
    # auto: one intra-op thread per idle core at start-up; an integer for bit-identical reruns
    threads: Annotated[int, Field(ge=1, le=1024)] | Literal["auto"] = "auto"
    workers: int = Field(0, ge=0)
    checkpoint_every: int = Field(200, ge=1)
    eval_every: int = Field(0, ge=0)
    deterministic: bool = True


class TeacherParams(Section):
    """The teacher: its backbone, head and training run."""

    backbone: BackboneParams = BackboneParams(arch="iresnet50")
    head: HeadParams = HeadParams()
    optim: OptimParams = OptimParams()
    init_from: str | None = None


class FeatureKD(Section):
    weight: float = Field(1.0, gt=0.0)
    with_ce: bool = False


class LogitKD(Section):
    weight: float = Field(1.0, ge=0.0)
    temperature: float = Field(4.0, gt=0.0)


class ArcDistillKD(Section):
    head: Literal["arcface", "cosface"] = "arcface"
    margin: float = Field(0.45, ge=0.0)


class AdaDistillKD(Section):
    variant: Literal["alpha", "alpha_prime"] = "alpha_prime"
    head: Literal["arcface", "cosface"] = "arcface"
    margin: float = Field(0.45, ge=0.0)
    init: Literal["normal", "teacher_head"] = "normal"
    init_std: float = Field(0.01, gt=0.0)
    repeated_labels: Literal["sequential", "average"] = "sequential"


class QUDKD(Section):
    queue_size: int = Field(1024, ge=1)
    tau: float = Field(0.1, gt=0.0)
    margin: float = Field(0.0, ge=0.0)


class THKD(Section):
    gamma: float = Field(1.0, ge=0.0)
    beta: float = Field(1.0, ge=0.0)
    delta: float = Field(0.0, ge=0.0)
    temperature: float = Field(4.0, gt=0.0)


class SHKD(THKD):
    teacher_epochs: int = Field(2, ge=1)
    teacher_lr: float = Field(0.01, gt=0.0)


class GKD(Section):
    k_mode: Literal["adaptive", "fixed"] = "adaptive"
    fixed_k: int = Field(10000, ge=1)
    k_step: int = Field(100, ge=1)
    mass: float = Field(0.93, gt=0.0, le=1.0)
    alpha: float = Field(1.0, ge=0.0)
    beta: float = Field(8.0, ge=0.0)
    temperature: float = Field(4.0, gt=0.0)
    warmup_epochs: float = Field(10.0, ge=0.0)
    margin: float = Field(0.4, ge=0.0)


class DistillParams(Section):
    """Students: one DVC stage per method in ``methods``, identical setting otherwise."""

    methods: tuple[str, ...] = FOREACH_METHODS
    student: BackboneParams = BackboneParams(arch="mfn")
    head: HeadParams = HeadParams(margin=0.45)
    optim: OptimParams = OptimParams()
    teacher_source: Literal["cache", "online"] = "cache"
    cache_dtype: Literal["float32", "float16"] = "float32"
    none: Section = Section()
    feature: FeatureKD = FeatureKD()
    logit: LogitKD = LogitKD()
    arcdistill: ArcDistillKD = ArcDistillKD()
    adadistill: AdaDistillKD = AdaDistillKD()
    qud: QUDKD = QUDKD()
    thkd: THKD = THKD()
    shkd: SHKD = SHKD()
    gkd: GKD = GKD()

    @model_validator(mode="after")
    def _known_methods(self) -> "DistillParams":
        unknown = [m for m in self.methods if m not in FOREACH_METHODS]
        if unknown:
            hint = " (shkd runs as its own stages shkd_teacher + distill_shkd)" if "shkd" in unknown else ""
            raise ValueError(f"unknown method(s) {unknown} in distill.methods; valid: {list(FOREACH_METHODS)}{hint}")
        if "qud" in self.methods and self.qud.queue_size % self.optim.batch_size:
            raise ValueError(
                f"distill.qud.queue_size={self.qud.queue_size} must be a multiple of the global batch "
                f"distill.optim.batch_size={self.optim.batch_size}"
            )
        return self


class BootstrapParams(Section):
    """The leaderboard's intervals: resamples of the evaluation identities (facekd.evaluation.uncertainty)."""

    resamples: int = Field(1000, ge=0, le=100_000)  # 0: no intervals
    confidence: float = Field(0.95, gt=0.5, lt=1.0)
    seed: int = Field(0, ge=0, le=2**32 - 1)


class EvaluateParams(Section):
    """Benchmarks and protocol switches."""

    models: tuple[str, ...] = ALL_MODELS
    batch_size: int = Field(128, ge=1)
    far_targets: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
    fpir_targets: tuple[float, ...] = (1e-3, 1e-2, 1e-1)
    ijb_flip: bool = True
    ijb_norm: bool = False
    ijb_detector: bool = True
    mfr_far: float = Field(1e-4, gt=0.0, lt=1.0)
    bootstrap: BootstrapParams = BootstrapParams()


class ExportParams(Section):
    models: tuple[str, ...] = ALL_MODELS
    # "auto": torch's dynamo exporter (the supported one), legacy TorchScript if it raises;
    # "legacy" is ~4x faster to export, which matters for the embedded CPU default.
    exporter: Literal["auto", "dynamo", "legacy"] = "auto"
    # PRelu -> Max(x,0) + s*Min(x,0): bit-identical, 1.3-1.7x faster batch-1 mfn in onnxruntime on
    # 1 thread (facekd.export.rewrite); false keeps the exporter's plain PRelu graph.
    rewrite_prelu: bool = True
    opset: int = Field(18, ge=13)
    min_cosine: float = Field(0.9999, gt=0.0, le=1.0)
    latency_runs: int = Field(20, ge=1)
    max_output_dim: int = Field(512, ge=1)
    max_file_bytes: int = Field(1 << 30, ge=1)


class RegistryParams(Section):
    model_name: str = "facekd-student"
    gate_metric: str = "ijb.tar@far=1e-4"
    min_improvement: float = Field(0.0, ge=0.0)
    # `facekd verify` decides at this FAR, with the threshold the gate metric's benchmark recorded
    # (one of evaluate.far_targets).
    verify_far: float = Field(1e-3, gt=0.0, lt=1.0)


class TrackingParams(Section):
    uri: str = "sqlite:///mlflow.db"
    experiment: str = "facekd"


class ScheduleParams(Section):
    cron: str = "0 3 * * 1"
    retries: int = Field(2, ge=0)
    retry_delay_seconds: int = Field(10, ge=0)


class Params(Section):
    """The whole ``params.yaml``."""

    seed: int = 0
    data: DataParams = DataParams()
    teacher: TeacherParams = TeacherParams()
    distill: DistillParams = DistillParams()
    evaluate: EvaluateParams = EvaluateParams()
    export: ExportParams = ExportParams()
    registry: RegistryParams = RegistryParams()
    tracking: TrackingParams = TrackingParams()
    schedule: ScheduleParams = ScheduleParams()

    @model_validator(mode="after")
    def _known_models(self) -> "Params":
        known = ("teacher", *self.distill.methods, "shkd")
        for key, models in (("evaluate.models", self.evaluate.models), ("export.models", self.export.models)):
            unknown = [m for m in models if m not in known]
            if unknown:
                raise ValueError(f"{key} names {unknown}, which no stage trains; valid: {list(known)}")
        return self


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the section that holds the unknown key at ``loc``."""
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return sorted(model.model_fields)


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration ({err.error_count()} problem(s))"]
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not str(p).startswith("function-after"))
        key = ".".join(str(p) for p in loc) or "<top level>"
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(Params, loc)
            lines.append(f"  - unknown key '{key}'; allowed keys here: {', '.join(allowed)}")
        else:
            got = e.get("input")
            shown = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"  - {key}: {e['msg']}{shown}")
    return "\n".join(lines)


def parse_params(raw: dict[str, Any] | None, source: str = "params") -> Params:
    try:
        return Params.model_validate(raw or {})
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate ``params.yaml``; any problem is a :class:`ConfigError`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: parameters file not found (run from the repository root or pass --params)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(raw).__name__}")
    return parse_params(raw, str(path))


def section_hash(section: BaseModel) -> str:
    """Stable short hash of a config section (guards checkpoints against a changed config)."""
    blob = json.dumps(section.model_dump(mode="json"), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def flatten(section: BaseModel, prefix: str = "") -> dict[str, Any]:
    """``{"optim.lr": 0.1, ...}``: the flat view MLflow params want."""
    return _flatten_dict(section.model_dump(mode="json"), prefix)


def _flatten_dict(d: dict[str, Any], prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flatten_dict(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
