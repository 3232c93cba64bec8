"""Where the pipeline's outputs live: every path a stage writes, and which stage writes it, in one place.

Paths are relative to the workspace (the DVC repository's root, where stages run). ``dvc.yaml``
spells the same paths for its ``outs``/``deps``; ``tests/unit/test_layout.py`` checks that the two
agree. The inputs (``data.prepared_dir``, ``data.eval_dir``, ...) are params, not layout.
"""
from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

INT8_SUFFIX = ".int8"  # the INT8 copy of model m is evaluated and exported as "m.int8"

MODELS = Path("models")
FEATURES = Path("features")
EVAL_FEATURES = FEATURES / "eval"  # per model: embedding caches of the evaluation images
CHECKPOINTS = Path("checkpoints")
TRAIN_METRICS = Path("metrics/train")
EVAL_METRICS = Path("metrics/eval")
SCORES = Path("metrics/scores")  # per model: every scored pair, for the report's bootstrap
HEADLINE = Path("metrics/headline.json")  # the pipeline's only DVC metrics file
ROC_POINTS = Path("plots/roc")  # per model, every benchmark (evaluate)
ROC_BY_BENCHMARK = Path("plots/roc_by_benchmark")  # per benchmark, every model (report): what `dvc plots` draws
EXPORTS = Path("exports")
REPORTS = Path("reports")
ROC_IMAGES = REPORTS / "roc"
EXPORT_REPORTS = REPORTS / "export"
VALIDATION_JSON = REPORTS / "validation.json"
VALIDATION_MD = REPORTS / "validation.md"
LEADERBOARD_TEXT = REPORTS / "leaderboard.txt"  # what `make run` ends by printing
LEADERBOARD_MD = REPORTS / "leaderboard.md"
LEADERBOARD_HTML = REPORTS / "leaderboard.html"  # the page with the plots inline
LEADERBOARD_PNG = REPORTS / "leaderboard.png"  # gate metric per model, with intervals
ROC_ALL_PNG = REPORTS / "roc_all.png"  # every model's ROC on the gate benchmark
REGISTRY_REPORT = REPORTS / "registry.json"
MODEL_CARD = REPORTS / "model_card.md"  # the candidate's card, beside the leaderboard

TEACHER = "teacher"  # the pipeline's teacher, trained or imported (models/teacher)
STUDENT_AWARE_PREFIX = "teacher_"  # models/teacher_<method>: a method's own fine-tuned teacher (SH-KD)


def int8_name(model: str) -> str:
    """The evaluated name of ``model``'s INT8 copy: ``none`` -> ``none.int8``."""
    return f"{model}{INT8_SUFFIX}"


def student_aware_teacher(method: str) -> str:
    """The model name of ``method``'s own fine-tuned copy of the teacher: ``shkd`` -> ``teacher_shkd``."""
    return f"{STUDENT_AWARE_PREFIX}{method}"


def is_teacher(name: str) -> bool:
    """``teacher`` or a method's student-aware teacher: the models with a feature cache."""
    return name == TEACHER or name.startswith(STUDENT_AWARE_PREFIX)


def model_dir(name: str) -> Path:
    return MODELS / name


def seed_model_dir(model: str, seed: int) -> Path:
    """``models/<model>/seeds/<seed>``: the student trained under another seed (``distill.seeds``),
    inside its first seed's DVC output."""
    return model_dir(model) / "seeds" / str(seed)


def seed_train_metrics_file(model: str, seed: int) -> Path:
    """That student's training summary, in its folder (``metrics/train/`` holds one file per stage)."""
    return seed_model_dir(model, seed) / "train_metrics.json"


def seed_checkpoint_dir(model: str, seed: int) -> Path:
    return checkpoint_dir(model) / "seeds" / str(seed)


def features_dir(teacher: str) -> Path:
    """``features/<teacher>``: the teacher's embeddings of every training image and its flip."""
    return FEATURES / teacher


def checkpoint_dir(name: str) -> Path:
    """Resumable training state: ``checkpoints/<teacher>`` or ``checkpoints/students/<method>``."""
    return CHECKPOINTS / name if is_teacher(name) else CHECKPOINTS / "students" / name


def train_metrics_file(name: str) -> Path:
    return TRAIN_METRICS / f"{name}.json"


def eval_metrics_file(name: str) -> Path:
    return EVAL_METRICS / f"{name}.json"


def scores_file(name: str) -> Path:
    return SCORES / f"{name}.npz"


def roc_points_file(name: str) -> Path:
    return ROC_POINTS / f"{name}.json"


def roc_image(name: str) -> Path:
    return ROC_IMAGES / f"{name}.png"


def onnx_path(model: str) -> Path:
    return EXPORTS / f"{model}.onnx"


def int8_path(model: str) -> Path:
    return EXPORTS / f"{int8_name(model)}.onnx"


def export_report(model: str) -> Path:
    return EXPORT_REPORTS / f"{model}.json"


def features_stage(teacher: str) -> str:
    """The DVC stage that writes ``features/<teacher>`` (named in stale-cache errors)."""
    if teacher == TEACHER:
        return "teacher_features"
    return f"student_aware_features@{teacher.removeprefix(STUDENT_AWARE_PREFIX)}"


def training_stage(name: str, student_aware: Collection[str] = ()) -> str:
    """The DVC stage that writes ``models/<name>`` (what to run when it is missing).

    student_aware: the methods that distil from their own fine-tuned teacher (``distill.head_sharing``),
    whose students train in ``distill_student_aware@<method>`` rather than ``distill@<method>``.
    """
    if name == TEACHER:
        return "train_teacher"
    if name.startswith(STUDENT_AWARE_PREFIX):
        return f"student_aware_teacher@{name.removeprefix(STUDENT_AWARE_PREFIX)}"
    return f"distill_student_aware@{name}" if name in student_aware else f"distill@{name}"
