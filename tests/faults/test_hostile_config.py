"""Class 4 of issue 14: the params loader refuses hostile or careless YAML with one line naming
the file, the line or the key, and never builds (or prints) an alias expansion.

Alias bombs run in a child process under RLIMIT_AS = 1.5 GiB (tests/faults/hostile.py); the rest
run in this process over every field of the config models.
"""
from __future__ import annotations

import types
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from facekd.config import Params, load_params
from facekd.errors import ConfigError

from tests.faults.conftest import ROOT, assert_clean_failure
from tests.faults.hostile import FACEKD, LIMIT_AS, read_bounded, run_bounded

pytestmark = pytest.mark.slow


def _fields(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> typing.Iterator[tuple[tuple[str, ...], object]]:
    """(key path, annotation) of every leaf field of the params models."""
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _fields(annotation, (*prefix, name))
        else:
            yield (*prefix, name), annotation


def _nested(path: tuple[str, ...], value: str) -> str:
    """YAML setting ``path`` to the YAML scalar ``value`` (block style, one key per line)."""
    return "".join("  " * depth + f"{key}:\n" for depth, key in enumerate(path[:-1])) + \
        "  " * (len(path) - 1) + f"{path[-1]}: {value}\n"


def _load_text(tmp_path: Path, text: str | bytes, name: str = "params.yaml") -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def _is_float(annotation: object) -> bool:
    return annotation is float or float in typing.get_args(annotation)


def test_non_finite_floats_refused_in_every_field(tmp_path: Path) -> None:
    """`.inf`, `-.inf` and `.nan` pass a `ge=0` bound and break a schedule or a loss at run time."""
    floats = [path for path, annotation in _fields(Params) if _is_float(annotation)]
    assert len(floats) > 30  # every section's floats, tuples of floats included
    accepted = []
    annotations = dict(_fields(Params))
    for path in floats:
        is_tuple = typing.get_origin(annotations[path]) is tuple
        for value in (".inf", "-.inf", ".nan"):
            text = _nested(path, f"[0.5, {value}]" if is_tuple else value)
            try:
                load_params(_load_text(tmp_path, text))
                accepted.append((".".join(path), value))
            except ConfigError as err:
                assert ".".join(path) in str(err) and "finite" in str(err), str(err)
    assert not accepted, f"non-finite values accepted: {accepted}"


def test_sizes_and_seeds_past_what_runs_refused(tmp_path: Path) -> None:
    """Integers that validate but then fail to allocate or seed: refused at load, naming the key."""
    ints = [path for path, annotation in _fields(Params) if annotation is int]
    huge = [("seed", "1.0e+28"), ("seed", "10000000000000000000000000000"), ("seed", "4294967296"),
            ("data.synthetic.seed", "-1"), ("teacher.backbone.embedding_size", "1000000000"),
            ("distill.student.embedding_size", "1.0e+9")]
    unbounded = {"min_images_per_identity", "max_image_pixels", "max_pixels_per_byte", "max_file_bytes"}
    cases = huge + [(".".join(p), "1000000000000") for p in ints if p[-1] not in unbounded]
    assert len(cases) > 30
    accepted = []
    for key, value in cases:
        try:
            load_params(_load_text(tmp_path, _nested(tuple(key.split(".")), value)))
            accepted.append((key, value))
        except ConfigError as err:
            assert key in str(err), str(err)
    assert not accepted, f"accepted: {accepted}"
    load_params(_load_text(tmp_path, "seed: 4294967295\ndata: {synthetic: {seed: 0}}\n"))  # numpy's maximum


@pytest.mark.parametrize(("text", "key", "line"), [
    ("teacher:\n  head: {scale: 1.0}\nseed: 1\nteacher:\n  head: {scale: 2.0}\n", "teacher", 4),
    ("seed: 1\nseed: 1\n", "seed", 2),
    ("distill:\n  qud:\n    tau: 0.1\n    queue_size: 64\n    tau: 0.2\n", "tau", 5),
    ("teacher: {optim: {lr: 0.1, lr: 0.2}}\n", "lr", 1),
    ("data:\n  synthetic: {seed: 1}\n  limits: {}\n  synthetic: {seed: 2}\n", "synthetic", 4),
    ("export:\n  models: [teacher]\n\n\n  models: [none]\n", "models", 5),
    ("'seed': 1\nseed: 2\n", "seed", 2),
])
def test_duplicate_keys_refused_naming_key_and_line(tmp_path: Path, text: str, key: str, line: int) -> None:
    with pytest.raises(ConfigError, match=rf"params\.yaml: line {line}: key '{key}' appears twice"):
        load_params(_load_text(tmp_path, text))


@pytest.mark.parametrize(("data", "line"), [
    (b"seed: 0\n# caf\xe9\n", 2),
    (b"\xff\xfes\x00e\x00e\x00d\x00:\x00 \x000\x00\n\x00", 1),  # UTF-16 with its byte-order mark
    (b"seed: 0\nteacher:\n  optim: {lr: 0.1}\n# \x80\n", 4),
    (b"tracking:\n  experiment: \xc3\x28\n", 2),  # an invalid 2-byte sequence
])
def test_non_utf8_file_gives_one_line_naming_the_line(tmp_path: Path, data: bytes, line: int) -> None:
    with pytest.raises(ConfigError, match=rf"params\.yaml: line {line}: byte 0x[0-9a-f]{{2}} is not UTF-8"):
        load_params(_load_text(tmp_path, data))


@pytest.mark.parametrize("depth", [65, 100, 1000, 100_000])
@pytest.mark.parametrize("style", ["flow-list", "flow-map", "block"])
def test_deep_nesting_gives_one_line(tmp_path: Path, depth: int, style: str) -> None:
    if style == "flow-list":
        text = "seed: " + "[" * depth + "]" * depth + "\n"
    elif style == "flow-map":
        text = "seed: " + "{a: " * depth + "1" + "}" * depth + "\n"
    else:
        depth = min(depth, 2000)  # block style: two spaces a level
        text = "".join("  " * i + f"k{i}:\n" for i in range(depth)) + "  " * depth + "x: 1\n"
    with pytest.raises(ConfigError, match=r"params\.yaml: line \d+: nested more than 64 levels deep") as err:
        load_params(_load_text(tmp_path, text))
    assert "\n" not in str(err.value)


def _laughs(depth: int, fanout: int, target: str) -> str:
    """``target`` set to a value of fanout**depth leaves written in a few hundred bytes."""
    lines = [f"l0: &l0 [{', '.join(['lol'] * fanout)}]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * fanout)}]" for i in range(1, depth + 1)]
    anchors = "x-anchors:\n" + "".join(f"  {line}\n" for line in lines)
    path = target.split(".")
    return anchors + _nested(tuple(path), f"*l{depth}")


BOMB_TARGETS = ["seed", "teacher", "distill.methods", "data.synthetic", "evaluate.far_targets", "bogus"]


def test_alias_bombs_refused_within_bound(tmp_path: Path) -> None:
    """Billion laughs (and smaller cousins) aimed at every kind of field: refused at load."""
    paths = []
    for depth, fanout in ((9, 10), (6, 10), (30, 2), (17, 3), (4, 100)):
        for target in BOMB_TARGETS:
            paths.append(_load_text(tmp_path, _laughs(depth, fanout, target), f"{depth}-{fanout}-{target}.yaml"))
    paths.append(_load_text(tmp_path, "seed: &a [1, *a]\n", "cycle.yaml"))
    paths.append(_load_text(tmp_path, "teacher: &t {head: *t}\n", "cycle-map.yaml"))
    # Control: the limit counts expanded values, so ordinary reuse of a section stays legal.
    legal = _load_text(tmp_path, "teacher: {optim: &optim {epochs: 2, lr: 0.1}}\ndistill: {optim: *optim}\n")
    results, peak = read_bounded("params", [legal, *paths])
    assert results[0].get("ok"), results[0]
    for result in results[1:]:
        assert "error" in result, result
        assert Path(result["path"]).name in result["error"] and len(result["error"]) < 400, result["error"]
        assert "expands" in result["error"] or "refers to a value that contains it" in result["error"], result
    assert peak < LIMIT_AS / 2**20


def test_alias_bomb_through_the_cli_exits_2_within_bound(tmp_path: Path) -> None:
    bomb = _load_text(tmp_path, _laughs(9, 10, "teacher"))
    rc, out, err, peak = run_bounded([FACEKD, "--params", str(bomb), "info"], cwd=ROOT)
    proc = types.SimpleNamespace(returncode=rc, stdout=out, stderr=err)
    assert_clean_failure(proc, "params.yaml", "expands")
    assert peak < LIMIT_AS / 2**20
