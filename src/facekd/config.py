"""Typed configuration: ``params.yaml`` parsed into frozen pydantic models.

Every section rejects unknown keys, and a validation failure becomes one
:class:`ConfigError` whose message names the key path (``distill.qud.tau``) and,
for an unknown key, the keys that are allowed there.
"""
from __future__ import annotations

import functools
from collections.abc import Hashable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from facekd.errors import ConfigError

SEED_MAX = 2**32 - 1  # numpy's SeedSequence / legacy seeding range
MAX_EMBEDDING = 8192


class Section(BaseModel):
    """Base of every config section: frozen, unknown keys rejected, every float finite.

    ``allow_inf_nan=False`` covers every float field and float tuple of every section: ``.inf``
    or ``.nan`` pass a ``ge=0`` bound and then break a schedule or a loss at run time.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class SyntheticData(Section):
    """Scale and difficulty of the embedded procedural face dataset."""

    # Upper bounds: the rendered set must fit one disk (1e6 identities x 1000 images is ~4 TB).
    train_identities: int = Field(200, ge=2, le=1_000_000)
    images_per_identity: int = Field(20, ge=2, le=1000)
    eval_identities: int = Field(100, ge=4, le=1_000_000)
    eval_images_per_identity: int = Field(12, ge=4, le=1000)
    mask_share: float = Field(0.5, ge=0.0, le=1.0)
    nuisance: float = Field(1.0, ge=0.0, le=3.0)
    pairs_per_set: int = Field(600, ge=20, le=10_000_000)
    ijb_media_per_template: int = Field(2, ge=1, le=1000)
    ijb_images_per_media: int = Field(2, ge=1, le=1000)
    jpeg_quality: int = Field(95, ge=50, le=100)
    seed: int = Field(0, ge=0, le=SEED_MAX)
    workers: int = Field(2, ge=1, le=1024)


class ValidationParams(Section):
    """Thresholds of the Great Expectations data gate."""

    min_images_per_identity: int = Field(2, ge=1)
    max_duplicate_share: float = Field(0.0, ge=0.0, le=1.0)
    pair_balance_tolerance: float = Field(0.1, ge=0.0, le=0.5)
    check_every_image: bool = True


class DataLimits(Section):
    """What a reader accepts before it allocates: hostile or careless files are refused, naming
    the file and record, instead of exhausting memory (docs/reliability.md, class 3)."""

    # Declared width x height of one image, read from its header before decoding: 4096 x 4096.
    max_image_pixels: int = Field(1 << 24, ge=1)
    # Declared pixels per encoded byte. Real images stay far below (a flat 112x112 JPEG: ~20;
    # deflate cannot pack 8-bit pixels tighter than ~1032:1); a forged header declares
    # gigapixels in a few hundred bytes.
    max_pixels_per_byte: int = Field(2048, ge=1)
    # Bytes a verification .bin may make its loader hold (images, counting every reference to a
    # shared one, plus what allowed calls build) per byte of the file; real files need ~1.
    max_bin_expansion: float = Field(4.0, ge=1.0)
    # Decoded bytes per byte of a .bin decoded whole: real sets need ~10, flat synthetic ~250.
    max_decode_expansion: float = Field(1024.0, ge=1.0)


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
    limits: DataLimits = DataLimits()

    @model_validator(mode="after")
    def _path_for_real_sources(self) -> DataParams:
        if self.source != "synthetic" and not self.path:
            raise ValueError(f"data.path is required when data.source is '{self.source}'")
        return self


class BackboneParams(Section):
    """A backbone from the model registry (`facekd models` lists them)."""

    arch: str = "iresnet18"
    embedding_size: int = Field(512, ge=8, le=MAX_EMBEDDING)
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

    epochs: int = Field(10, ge=1, le=100_000)
    batch_size: int = Field(64, ge=2, le=1 << 20)
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
    grad_accum: int = Field(1, ge=1, le=1 << 16)
    amp: Literal["off", "fp16", "bf16"] = "off"
    # auto: channels_last on CUDA, and on CPU where measured faster (facekd.training.runtime)
    channels_last: bool | Literal["auto"] = "auto"
    # auto: one intra-op thread per usable core (the same every run: the count changes the
    # result); idle: one per idle core at start-up (faster beside other work, results vary with load)
    threads: Annotated[int, Field(ge=1, le=1024)] | Literal["auto", "idle"] = "auto"
    workers: int = Field(0, ge=0, le=1024)
    checkpoint_every: int = Field(200, ge=1, le=2**31 - 1)
    eval_every: int = Field(0, ge=0, le=2**31 - 1)
    deterministic: bool = True


class OnnxTeacherParams(Section):
    """An ONNX-only teacher (``teacher.source: onnx``, e.g. insightface's ``w600k_r50.onnx``) and how
    to feed it (facekd.models.onnx_backbone). The defaults are right for insightface's packs."""

    # A .onnx file, or a folder holding exactly one. A dependency of train_teacher, so it must
    # exist even when teacher.source is "train" (then the near-empty data/raw/teacher/).
    path: str = "data/raw/teacher"
    color: Literal["rgb", "bgr"] = "rgb"  # channel order the model was trained on
    mean: float = Field(127.5, ge=0.0, le=255.0)  # input = (pixel - mean) / std
    std: float = Field(127.5, gt=0.0)
    # "auto": raw pixels when the graph starts with Sub and Mul nodes (insightface's own test)
    normalization: Literal["auto", "outside", "inside"] = "auto"
    batch_size: int = Field(64, ge=1, le=1 << 16)
    threads: int = Field(0, ge=0, le=1024)  # onnxruntime intra-op threads; 0 = all cores
    sanity_images: int = Field(64, ge=4, le=10_000)  # training images of the "is this a face embedder?" check


class TeacherParams(Section):
    """The teacher: trained here (``source: train``: backbone, head, optim) or imported from ONNX."""

    source: Literal["train", "onnx"] = "train"
    onnx: OnnxTeacherParams = OnnxTeacherParams()
    backbone: BackboneParams = BackboneParams(arch="iresnet50")
    head: HeadParams = HeadParams()
    optim: OptimParams = OptimParams()
    init_from: str | None = None


class DistillSettings(Section):
    """Students: what every method shares (one DVC stage per method, identical setting otherwise).

    :data:`DistillParams` adds one ``<name>`` section per registered method, typed by the method's
    own params model (:mod:`facekd.distill.registry`).
    """

    methods: tuple[str, ...] = Field(default_factory=lambda: _registry().foreach_methods())
    student: BackboneParams = BackboneParams(arch="mfn")
    head: HeadParams = HeadParams(margin=0.45)
    optim: OptimParams = OptimParams()
    teacher_source: Literal["cache", "online"] = "cache"
    cache_dtype: Literal["float32", "float16"] = "float32"
    # Students per method, trained under seeds seed, seed + 1, ...: the first is models/<method>
    # (evaluated on every benchmark, exported, registered); the others (models/<method>/seeds/<s>)
    # are scored on the gate benchmark, so the leaderboard gives a mean and spread over seeds.
    seeds: int = Field(1, ge=1, le=100)
    # Methods that fine-tune a copy of the teacher first (SH-KD; stages student_aware_teacher@<m>
    # -> student_aware_features@<m> -> distill_student_aware@<m>); [] leaves them out (required
    # with an ONNX teacher).
    head_sharing: tuple[str, ...] = Field(default_factory=lambda: _registry().student_aware_methods())

    @model_validator(mode="after")
    def _known_methods(self) -> DistillSettings:
        registry = _registry()
        for key, names, valid in (("methods", self.methods, registry.foreach_methods()),
                                  ("head_sharing", self.head_sharing, registry.student_aware_methods())):
            unknown = [m for m in names if m not in valid]
            if unknown:
                other = "head_sharing" if key == "methods" else "methods"
                hint = f" ({', '.join(unknown)} belong(s) in distill.{other})" if set(unknown) <= set(registry.methods()) else ""
                raise ValueError(f"unknown method(s) {unknown} in distill.{key}; valid: {list(valid)}{hint}")
        for name in (*self.methods, *self.head_sharing):
            registry.method_class(name).check_setting(getattr(self, name), self.optim.batch_size)
        return self


class BootstrapParams(Section):
    """The leaderboard's intervals: resamples of the evaluation identities (facekd.evaluation.uncertainty)."""

    resamples: int = Field(1000, ge=0, le=100_000)  # 0: no intervals
    confidence: float = Field(0.95, gt=0.5, lt=1.0)
    seed: int = Field(0, ge=0, le=2**32 - 1)


class EvaluateParams(Section):
    """Benchmarks and protocol switches."""

    models: tuple[str, ...] = Field(default_factory=lambda: trained_models())
    batch_size: int = Field(128, ge=1, le=1 << 20)
    far_targets: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
    fpir_targets: tuple[float, ...] = (1e-3, 1e-2, 1e-1)
    ijb_flip: bool = True
    ijb_norm: bool = False
    ijb_detector: bool = True
    mfr_far: float = Field(1e-4, gt=0.0, lt=1.0)
    bootstrap: BootstrapParams = BootstrapParams()


class Int8Params(Section):
    """INT8 copy of every exported model (facekd.export.quantize): onnxruntime static QDQ quantization,
    per-channel weights, calibrated on training images."""

    enabled: bool = False
    calibration_images: int = Field(256, ge=1, le=100_000)
    # Layers left in float: "first_conv" (reads the raw pixels) and "embedding" (the last MatMul/Gemm
    # and every node after it). Min cosine to float on 64 embedded eval faces, none / first / embedding /
    # both kept: mfn student 0.9918 / 0.9927 / 0.9918 / 0.9926, iresnet teacher 0.9993 / 0.9996 /
    # 0.9996 / 0.9998; but a float embedding layer is most of iResNet's weights (INT8 file 334 KB ->
    # 935 KB, float 1133 KB). So only the first conv (3x3x3xC weights) stays float by default.
    keep_float: tuple[Literal["first_conv", "embedding"], ...] = ("first_conv",)
    # "compute": Conv/MatMul/Gemm only (activations between them stay float); "all": every op
    # onnxruntime can quantize, the PReLUs' Max/Min/Mul/Add too: embedded mfn min cosine 0.9744
    # instead of 0.9927, and slower (a Q/DQ pair around each elementwise op).
    ops: Literal["compute", "all"] = "compute"
    # 7-bit weights: no int16 saturation in the uint8 x int8 kernels of x86 CPUs without VNNI
    # (AVX2 only); off there, the embedded mfn fell to min cosine 0.915 (0.993 on). False only for
    # VNNI or ARM targets.
    reduce_range: bool = True


class ExportParams(Section):
    models: tuple[str, ...] = Field(default_factory=lambda: trained_models())
    # "auto": torch's dynamo exporter (the supported one), legacy TorchScript if it raises;
    # "legacy" is ~4x faster to export, which matters for the embedded CPU default.
    exporter: Literal["auto", "dynamo", "legacy"] = "auto"
    # PRelu -> Max(x,0) + s*Min(x,0): bit-identical, 1.3-1.7x faster batch-1 mfn in onnxruntime on
    # 1 thread (facekd.export.rewrite); false keeps the exporter's plain PRelu graph.
    rewrite_prelu: bool = True
    opset: int = Field(18, ge=13, le=100)
    min_cosine: float = Field(0.9999, gt=0.0, le=1.0)
    latency_runs: int = Field(20, ge=1, le=1_000_000)
    max_output_dim: int = Field(512, ge=1, le=MAX_EMBEDDING)
    max_file_bytes: int = Field(1 << 30, ge=1)
    int8: Int8Params = Int8Params()


class RegistryParams(Section):
    model_name: str = "facekd-student"
    gate_metric: str = "ijb.tar@far=1e-4"
    min_improvement: float = Field(0.0, ge=0.0)
    # `facekd verify` decides at this FAR, with the threshold the gate metric's benchmark recorded
    # (one of evaluate.far_targets).
    verify_far: float = Field(1e-3, gt=0.0, lt=1.0)
    # Largest drop of the gate metric from the float model to its INT8 copy (float minus INT8, in
    # the gate metric's units: 0.01 = 1 percentage point) that `promote` accepts; None: off, releases
    # are judged on the float model only. Needs export.int8.enabled (facekd.mlops.evidence.int8_verdict).
    max_int8_drop: float | None = Field(None, ge=0.0, le=1.0)


class TrackingParams(Section):
    uri: str = "sqlite:///mlflow.db"
    experiment: str = "facekd"


class ScheduleParams(Section):
    cron: str = "0 3 * * 1"
    retries: int = Field(2, ge=0, le=1000)
    retry_delay_seconds: int = Field(10, ge=0, le=86_400)


class ParamsBase(Section):
    """The whole ``params.yaml`` but the method sections; :data:`Params` adds them."""

    seed: int = Field(0, ge=0, le=SEED_MAX)
    data: DataParams = Field(default_factory=DataParams)
    teacher: TeacherParams = Field(default_factory=TeacherParams)
    distill: DistillSettings = Field(default_factory=DistillSettings)
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams)
    export: ExportParams = Field(default_factory=ExportParams)
    registry: RegistryParams = Field(default_factory=RegistryParams)
    tracking: TrackingParams = Field(default_factory=TrackingParams)
    schedule: ScheduleParams = Field(default_factory=ScheduleParams)

    def student_seeds(self) -> list[int]:
        """Every student's training seeds: ``seed``, ``seed + 1``, ... (``distill.seeds`` of them); the
        first trains ``models/<method>``."""
        return [self.seed + k for k in range(self.distill.seeds)]

    @model_validator(mode="after")
    def _seeds_fit(self) -> ParamsBase:
        if self.seed + self.distill.seeds - 1 > SEED_MAX:
            raise ValueError(f"seed {self.seed} with distill.seeds {self.distill.seeds} runs past the largest "
                             f"seed {SEED_MAX}; lower seed or distill.seeds")
        return self

    @model_validator(mode="after")
    def _known_models(self) -> ParamsBase:
        known = ("teacher", *self.distill.methods, *self.distill.head_sharing)
        for key, models in (("evaluate.models", self.evaluate.models), ("export.models", self.export.models)):
            unknown = [m for m in models if m not in known]
            if unknown:
                raise ValueError(f"{key} names {unknown}, which no stage trains; valid: {list(known)}")
        return self

    @model_validator(mode="after")
    def _onnx_teacher(self) -> ParamsBase:
        if self.teacher.source != "onnx":
            return self
        if self.distill.head_sharing:
            raise ValueError("teacher.source is 'onnx': SH-KD fine-tunes the teacher, and an ONNX file has no "
                             "trainable weights here; set distill.head_sharing: [] (and drop shkd from "
                             "evaluate.models / export.models)")
        if "teacher" in self.export.models:
            raise ValueError("teacher.source is 'onnx': the teacher already is an ONNX file; drop 'teacher' "
                             "from export.models")
        return self


def _registry() -> Any:
    """:mod:`facekd.distill.registry`, imported on first use: it loads torch and the methods, which
    the orchestration layer (importing this module for :class:`ScheduleParams`) must not."""
    from facekd.distill import registry

    return registry


def trained_models() -> tuple[str, ...]:
    """Every model the default pipeline trains: the teacher, then each method's student."""
    registry = _registry()
    return ("teacher", *registry.foreach_methods(), *registry.student_aware_methods())


@functools.cache
def _models_for(methods: tuple[tuple[str, type], ...]) -> tuple[type[DistillSettings], type[ParamsBase]]:
    sections: dict[str, Any] = {name: (model, Field(default_factory=model)) for name, model in methods}
    distill = create_model("DistillParams", __base__=DistillSettings, __module__=__name__, **sections)
    params = create_model("Params", __base__=ParamsBase, __module__=__name__,
                          distill=(distill, Field(default_factory=distill)))
    return distill, params


def params_models() -> tuple[type[DistillSettings], type[ParamsBase]]:
    """``(DistillParams, Params)``: the models with one ``distill.<name>`` section per registered method.

    Built on first use from the method registry (and again if a method is registered later), so a
    method's params live in its own module.
    """
    methods = tuple((name, cls.params_model) for name, cls in _registry().methods().items())
    return _models_for(methods)


def __getattr__(name: str) -> Any:
    # ``from facekd.config import Params`` / ``DistillParams``: built from the registry on first access.
    if name == "DistillParams":
        return params_models()[0]
    if name == "Params":
        return params_models()[1]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if TYPE_CHECKING:  # what the two built models are to a type checker
    DistillParams = DistillSettings
    Params = ParamsBase


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the section that holds the unknown key at ``loc``."""
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return sorted(model.model_fields)


_SHOWN_CHARS = 80  # of an offending value in a message


def _shown(value: Any) -> str:
    """`` (got ...)`` for a scalar, cut short; nothing for a container, which may be huge."""
    if isinstance(value, dict | list | tuple | set):
        return ""
    text = repr(value)
    return f" (got {text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + '...'})"


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration ({err.error_count()} problem(s))"]
    for e in err.errors(include_input=True, include_url=False):
        loc = tuple(p for p in e["loc"] if not str(p).startswith("function-after"))
        key = ".".join(str(p) for p in loc) or "<top level>"
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(params_models()[1], loc)
            lines.append(f"  - unknown key {key!r}; allowed keys here: {', '.join(allowed)}")
        else:
            lines.append(f"  - {key}: {e['msg']}{_shown(e.get('input'))}")
    return "\n".join(lines)


def parse_params(raw: dict[str, Any] | None, source: str = "params") -> Params:
    try:
        return params_models()[1].model_validate(raw or {})
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None


# A params file is a few hundred nodes, 4-5 levels deep. The limits stop alias expansion
# ("billion laughs": a few hundred bytes expanding to 10**9 nodes in validation) and nesting deep
# enough to exhaust PyYAML's recursive composer.
MAX_YAML_NODES = 100_000
MAX_YAML_DEPTH = 64
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _YamlRefused(Exception):
    """A params file the loader will not build; the message names the line."""


def _node_children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a document whose aliases expand it past MAX_YAML_NODES or MAX_YAML_DEPTH levels,
    or refer back into themselves. Sizes are memoised per node, so this costs O(distinct nodes)."""
    size: dict[int, int] = {}
    height: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            open_nodes.discard(key)
            kids = _node_children(node)
            size[key] = 1 + sum(size[id(k)] for k in kids)
            height[key] = 1 + max((height[id(k)] for k in kids), default=0)
            if size[key] > MAX_YAML_NODES or height[key] > MAX_YAML_DEPTH:
                raise _YamlRefused(
                    f"line {node.start_mark.line + 1}: this value expands (through aliases) to more than "
                    f"{MAX_YAML_NODES} values or {MAX_YAML_DEPTH} levels; write the parameters out plainly"
                )
            continue
        if key in size:
            continue
        if key in open_nodes:
            raise _YamlRefused(f"line {node.start_mark.line + 1}: an alias refers to a value that contains it")
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((kid, False) for kid in _node_children(node) if id(kid) not in size)


class _ParamsLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys, deep nesting and alias bombs (see the limits above)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                mark = self.peek_event().start_mark
                raise _YamlRefused(f"line {mark.line + 1}: nested more than {MAX_YAML_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self) -> yaml.Node:
        node = super().compose_document()
        _check_expansion(node)
        return node

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError) as err:  # e.g. an integer of more than 4300 digits
            raise _YamlRefused(f"line {node.start_mark.line + 1}: cannot read this value ({err})") from None

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, Hashable) and key in seen:
                raise _YamlRefused(f"line {line}: key {key!r} appears twice in one section (first on line {seen[key]}); "
                                   "keep one, a second would silently replace it")
            if isinstance(key, Hashable):
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path) -> Any:
    """The parsed params file, or ConfigError with one line naming the file and the line."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ConfigError(f"{path}: line {line}: byte 0x{data[err.start]:02x} is not UTF-8; save the file as UTF-8") from None
    try:
        return yaml.load(text, Loader=_ParamsLoader)
    except _YamlRefused as err:
        raise ConfigError(f"{path}: {err}") from None
    except yaml.MarkedYAMLError as err:
        where = f"line {err.problem_mark.line + 1}: " if err.problem_mark else ""
        raise ConfigError(f"{path}: {where}not valid YAML: {err.problem or err.context}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate ``params.yaml``; any problem is a :class:`ConfigError`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: parameters file not found (run from the repository root or pass --params)")
    raw = _read_yaml(path)
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(raw).__name__}")
    return parse_params(raw, str(path))
