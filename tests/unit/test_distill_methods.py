"""Contract tests every registered distillation method must pass (parametrised over the registry)."""
from __future__ import annotations

import pytest
import torch

from facekd.config import DistillParams
from facekd.distill.base import DistillBatch, DistillMethod
from facekd.distill.registry import build_method, method_class, methods
from facekd.errors import ConfigError

C, D = 7, 8
METHODS = methods()
ALL = sorted(METHODS)


def _params() -> DistillParams:
    # A short warm-up so GKD's KD terms are on at the epochs used below.
    return DistillParams(optim={"batch_size": 4}, qud={"queue_size": 8}, gkd={"warmup_epochs": 2.0})


def _build(name: str, student_dim: int = D, teacher_dim: int = D, seed: int = 0, **teacher) -> DistillMethod:
    torch.manual_seed(seed)
    head = teacher.get("head", torch.randn(C, teacher_dim, generator=torch.Generator().manual_seed(99)))
    return build_method(
        name, _params(), num_classes=C, student_dim=student_dim, teacher_dim=teacher_dim, teacher_head=head
    )


def _batch(seed: int, b: int = 4, student_dim: int = D, teacher_dim: int = D, labels: bool = True) -> DistillBatch:
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(b, student_dim, generator=g).requires_grad_(True)
    t = torch.randn(b, teacher_dim, generator=g).requires_grad_(True)  # must never receive a gradient
    y = torch.randint(0, C, (b,), generator=g) if labels else None
    return DistillBatch(student=s, teacher=t, labels=y, epoch=3.0)


def test_registry_covers_every_configured_method() -> None:
    assert set(METHODS) == {"none", "feature", "logit", "arcdistill", "adadistill", "qud", "thkd", "shkd", "gkd"}
    assert set(DistillParams.model_fields) >= set(METHODS)  # one params section each, derived
    for name, cls in METHODS.items():
        assert cls.name == name


def test_unknown_method_names_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="unknown distill method 'fitnet'.*adadistill.*qud"):
        method_class("fitnet")


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dims", [(D, D), (6, D)], ids=["same_dim", "projected"])
def test_gradients_reach_student_and_own_parameters_only(name: str, dims: tuple[int, int]) -> None:
    w_t = torch.randn(C, dims[1]).requires_grad_(True)
    method = _build(name, *dims, head=w_t)
    batch = _batch(1, student_dim=dims[0], teacher_dim=dims[1])
    out = method(batch)
    assert out["loss"].dim() == 0 and torch.isfinite(out["loss"])
    assert all(torch.isfinite(v).all() and not v.requires_grad for k, v in out.items() if k != "loss")
    out["loss"].backward()
    assert batch.student.grad is not None and batch.student.grad.abs().sum() > 0
    assert batch.teacher.grad is None
    assert w_t.grad is None
    for pname, p in method.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    assert not any(b.requires_grad for b in method.buffers())
    if dims[0] != dims[1] and method.shares_teacher_space:
        assert method.project.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ALL)
def test_batch_of_two(name: str) -> None:
    out = _build(name)(_batch(2, b=2))
    assert torch.isfinite(out["loss"])


def _train(method: DistillMethod, steps: int) -> None:
    """A few steps of plain SGD (by hand: torch.optim's first use imports dynamo, seconds)."""
    for step in range(steps):
        method.zero_grad()
        method(_batch(10 + step))["loss"].backward()
        with torch.no_grad():
            for p in method.parameters():
                p -= 0.1 * p.grad


@pytest.mark.parametrize("name", ALL)
def test_state_dict_round_trip_continues_identically(name: str) -> None:
    trained = _build(name, seed=0)
    _train(trained, 3)
    state = {k: v.clone() for k, v in trained.state_dict().items()}
    fresh = _build(name, seed=123)
    next_batch = _batch(50)
    if state:  # the state matters: without loading it the next step differs
        assert not torch.equal(fresh(_batch(50))["loss"], trained(_batch(50))["loss"])
        trained.load_state_dict(state)
        fresh = _build(name, seed=123)
    fresh.load_state_dict(state)
    assert torch.equal(fresh(next_batch)["loss"], trained(next_batch)["loss"])
    for key, value in trained.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


@pytest.mark.parametrize("name", ALL)
def test_unlabeled_batches(name: str) -> None:
    method = _build(name)
    batch = _batch(3, labels=False)
    if method.uses_labels:
        with pytest.raises(ConfigError, match=f"'{name}' needs identity labels"):
            method(batch)
    else:
        assert torch.isfinite(method(batch)["loss"])


@pytest.mark.parametrize("name", ALL)
def test_eval_mode_leaves_state_alone(name: str) -> None:
    method = _build(name)
    before = {k: v.clone() for k, v in method.state_dict().items()}
    method.eval()
    method(_batch(4))
    for key, value in method.state_dict().items():
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize("name", [n for n in ALL if METHODS[n].needs_teacher_head])
def test_missing_or_mismatched_teacher_head_is_a_config_error(name: str) -> None:
    with pytest.raises(ConfigError, match="needs the teacher's head"):
        build_method(name, _params(), num_classes=C, student_dim=D, teacher_dim=D, teacher_head=None)
    with pytest.raises(ConfigError, match=r"expected \(num_classes, teacher embedding size\) = \(7, 8\)"):
        build_method(name, _params(), num_classes=C, student_dim=D, teacher_dim=D, teacher_head=torch.zeros(5, D))


@pytest.mark.parametrize("name", ALL)
def test_malformed_batches_are_rejected(name: str) -> None:
    method = _build(name)
    good = _batch(5)
    with pytest.raises(ValueError, match="teacher embeddings must be"):
        method(DistillBatch(good.student, good.teacher[:3], good.labels))
    with pytest.raises(ValueError, match="student embeddings must be"):
        method(DistillBatch(good.student[:, :5], good.teacher, good.labels))
    if method.uses_labels:
        with pytest.raises(ValueError, match="labels must be int64"):
            method(DistillBatch(good.student, good.teacher, good.labels.float()))


def test_adadistill_teacher_head_init_requires_the_head() -> None:
    params = DistillParams(adadistill={"init": "teacher_head"})
    assert METHODS["adadistill"].requires_teacher_head(params.adadistill)
    assert not METHODS["adadistill"].requires_teacher_head(DistillParams().adadistill)
    with pytest.raises(ConfigError, match="needs the teacher's head"):
        build_method("adadistill", params, num_classes=C, student_dim=D, teacher_dim=D)
    w_t = torch.randn(C, D)
    method = build_method("adadistill", params, num_classes=C, student_dim=D, teacher_dim=D, teacher_head=w_t)
    assert torch.allclose(method.centres, torch.nn.functional.normalize(w_t, dim=1))


def test_feature_needs_labels_only_with_ce() -> None:
    cls = METHODS["feature"]
    assert not cls.requires_labels(DistillParams().feature)
    assert cls.requires_labels(DistillParams(feature={"with_ce": True}).feature)


def test_a_plugin_that_fails_to_import_is_named(tmp_path) -> None:
    """A ``facekd.methods`` entry point whose module raises: one ConfigError naming the plugin."""
    import subprocess
    import sys

    info = tmp_path / "broken_kd-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-kd\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[facekd.methods]\nbroken = broken_kd\n")
    (tmp_path / "broken_kd.py").write_text("raise ImportError('needs a missing library')\n")
    code = "from facekd.distill.registry import methods\nmethods()"
    proc = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert ("ConfigError: distill method plugin 'broken = broken_kd' (broken-kd 0.1, entry-point group "
            "facekd.methods) failed to import: ImportError: needs a missing library") in proc.stderr
