"""Issue 13: facekd's default CPU training step against the fastest configuration of the same math.

The configurations: intra-op threads {1, 2} x layout {NCHW, channels_last} x denormal flushing
{off, on}, timed interleaved with facekd's default in one child process (the target compares
within it), and the whole grid again in a second child with ``ONEDNN_MAX_CPU_ISA=AVX2`` (oneDNN
reads its ISA once per process; an information line compares the two paths' fastest). facekd's default is a Trainer
built with the default OptimParams (``threads: auto``, ``channels_last: auto``, resolved by
``facekd.training.runtime``) in the default-ISA child. Then all of it again beside one artificial
busy process (a Python spin loop), where the default is what the README tells a shared machine to
set, ``threads: idle`` (one thread per idle core at start-up; ``auto``, one per usable core, keeps
results independent of load but pays OpenMP's barrier beside a busy core).

Targets: default / fastest step time ratio, as a speed ratio fastest/default >= 0.9, quiet and
busy; the busy default step costs at most 1.5x the quiet one. Children are separate processes, so
cross-child comparisons (the ISA line, the busy cost) are not interleaved: read them with the load
average printed beside them.
"""
from __future__ import annotations

import contextlib
import copy
import itertools
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from typing import Any

from bench import common
from bench._training import first_batch, fit_settings, make_trainer, optim_params, rec_dataset, step_fn

TARGET = 0.9
BUSY_LIMIT = 1.5
ISAS = {"default": None, "avx2": "AVX2"}


@dataclass(frozen=True)
class Setup:
    name: str
    arch: str
    width: float
    embedding: int
    batch: int
    classes: int
    repeats: int
    threads: str = "auto"  # the default trainer's optim.threads


# The embedded default's teacher and student (params.yaml), at its batch size.
TEACHER = Setup("teacher-embedded", "iresnet_tiny", 0.25, 64, batch=32, classes=100, repeats=6)
STUDENT = Setup("student-embedded", "mfn", 0.125, 64, batch=32, classes=100, repeats=6)
QUICK = Setup("mfn-quick", "mfn", 0.125, 16, batch=4, classes=4, repeats=1)


def _configs(quick: bool) -> list[tuple[int, bool, bool]]:
    """(threads, channels_last, flush denormals); quick runs keep to one thread (a correctness check)."""
    return list(itertools.product((1,) if quick else (1, 2), (False, True), (False, True)))


def _label(threads: int, channels_last: bool, flush: bool) -> str:
    return f"{threads}t-{'cl' if channels_last else 'nchw'}-{'flush' if flush else 'denorm'}"


def _measure_in_child(setup: Setup) -> dict[str, Any]:
    """Time the default and every configuration in this process (the child); medians and first losses."""
    import torch

    from facekd.models.heads import MarginHead
    from facekd.models.registry import create_backbone
    from facekd.training.objectives import HeadObjective

    with common.scratch_dir("cpu-path") as tmp:
        dataset = rec_dataset(tmp / "data", setup.batch, min(setup.classes, setup.batch // 2 or 1))
        raw = first_batch(dataset, setup.batch)
        torch.manual_seed(0)
        backbone = create_backbone(setup.arch, embedding_size=setup.embedding, width=setup.width)
        head = MarginHead(setup.classes, setup.embedding, "arcface", 64.0, 0.5)

        def trainer(name: str, **optim: Any) -> Any:
            objective = HeadObjective(copy.deepcopy(head))
            return make_trainer(copy.deepcopy(backbone), objective, dataset, optim_params(setup.batch, **optim),
                                tmp / name)

        default = trainer("default", threads=setup.threads)  # threads/layout resolved here, as a stage does
        chosen = {"threads": torch.get_num_threads(), "channels_last": default.channels_last}
        fns = {"default": _pinned(step_fn(default, raw), chosen["threads"], False)}
        for threads, channels_last, flush in _configs(setup == QUICK):
            name = _label(threads, channels_last, flush)
            fns[name] = _pinned(step_fn(trainer(name, threads=threads, channels_last=channels_last), raw),
                                threads, flush)
        with fit_settings(deterministic=True):
            losses = {name: float(fn()["loss"]) for name, fn in fns.items()}  # first step: also the warm-up
            timings = common.interleaved(fns, setup.repeats, warmup=0)
    return {"chosen": chosen, "loss": losses, "wall": {n: t.median("wall") for n, t in timings.items()},
            "load": common.load_average()}


def _pinned(step: Any, threads: int, flush: bool) -> Any:
    """``step`` run with this thread count and denormal setting (both are process-wide in torch)."""
    import torch

    def run() -> Any:
        torch.set_num_threads(threads)
        torch.set_flush_denormal(flush)
        return step()

    return run


def _child(setup: Setup, isa: str | None) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_MAX_CPU_ISA", "OMP_NUM_THREADS")}
    if isa:
        env["ONEDNN_MAX_CPU_ISA"] = isa
    proc = subprocess.run([sys.executable, "-m", "bench.cpu_path", "--child", json.dumps(asdict(setup))],
                          cwd=common.ROOT, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"cpu_path child (ISA {isa or 'default'}) failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def _busy_core() -> Iterator[None]:
    """One other process spinning on a core for the duration (the contention of issue 13)."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        spinner.kill()
        spinner.wait()


def _grid(setup: Setup, isas: dict[str, str | None]) -> dict[str, dict[str, Any]]:
    return {name: _child(setup, isa) for name, isa in isas.items()}


def _fastest(out: dict[str, Any]) -> tuple[str, float]:
    return min(out["wall"].items(), key=lambda item: item[1])


def _same_math(grid: dict[str, dict[str, Any]]) -> bool:
    losses = [loss for out in grid.values() for loss in out["loss"].values()]
    return max(losses) - min(losses) <= 1e-4 * max(abs(min(losses)), 1.0)


def _vs_fastest(setup: Setup, grid: dict[str, dict[str, Any]], when: str) -> common.Result:
    """facekd's default against the fastest configuration timed interleaved beside it (one child)."""
    default = grid["default"]
    best_name, best = _fastest(default)
    chosen = default["chosen"]
    detail = (f"default ({chosen['threads']}t, {'cl' if chosen['channels_last'] else 'nchw'}) "
              f"{common.ms(default['wall']['default'])} vs fastest {best_name} {common.ms(best)}, {default['load']}")
    return common.emit(common.Result("cpu_path", f"{setup.name}-{when}", detail, best / default["wall"]["default"],
                                     what="speed vs fastest", op=">=", limit=TARGET, identical=_same_math(grid),
                                     note=f"batch {setup.batch}"))


def _isa_result(setup: Setup, grid: dict[str, dict[str, Any]], when: str) -> common.Result:
    """The fastest configuration on oneDNN's AVX2 path vs on its default path (separate children:
    not interleaved, so read it as information)."""
    (avx2_name, avx2), (name, default) = _fastest(grid["avx2"]), _fastest(grid["default"])
    return common.emit(common.Result(
        "cpu_path", f"{setup.name}-{when}-isa", f"fastest on the AVX2 path {avx2_name} {common.ms(avx2)} vs default "
        f"path {name} {common.ms(default)}, {grid['avx2']['load']}", default / avx2, what="AVX2 path speed",
        op="", identical=_same_math(grid)))


def run_setup(setup: Setup, quick: bool) -> list[common.Result]:
    isas = {"default": None} if quick else ISAS
    quiet = _grid(setup, isas)
    with _busy_core():
        busy = _grid(replace(setup, threads="idle"), isas)
    for when, grid in (("quiet", quiet), ("busy", busy)):
        for isa, out in grid.items():
            row = ", ".join(f"{name} {setup.batch / wall:.0f}" for name, wall in out["wall"].items())
            common.note(f"{setup.name} {when} ISA {isa} img/s: {row}")
    cost = busy["default"]["wall"]["default"] / quiet["default"]["wall"]["default"]
    isa_lines = [_isa_result(setup, grid, when) for when, grid in (("quiet", quiet), ("busy", busy)) if "avx2" in grid]
    return [*isa_lines,
        _vs_fastest(setup, quiet, "quiet"),
        _vs_fastest(setup, busy, "busy"),
        common.emit(common.Result("cpu_path", f"{setup.name}-busy-cost",
                                  f"default step beside one busy process (threads: idle) vs quiet, {busy['default']['load']}",
                                  cost, what="slow-down", op="<=", limit=BUSY_LIMIT)),
    ]


# Where ``channels_last: auto`` needs a measurement: the backbones at the embedded and preset widths.
LAYOUT_CASES = (("iresnet_tiny", 0.125), ("iresnet_tiny", 0.25), ("iresnet_tiny", 0.5), ("iresnet18", 0.25),
                ("iresnet18", 1.0), ("mfn", 0.125), ("mfn", 0.25), ("mfn", 0.5), ("mfn", 1.0), ("mbf", 0.25),
                ("mbf", 1.0))


def layout_result(arch: str, width: float, batch: int, repeats: int) -> common.Result:
    """Forward+backward+SGD of one backbone in NCHW vs channels_last on this process's threads."""
    import torch

    from facekd.models.registry import create_backbone

    fns, outputs = {}, {}
    for name, layout in (("nchw", torch.contiguous_format), ("cl", torch.channels_last)):
        torch.manual_seed(0)
        model = create_backbone(arch, embedding_size=128, width=width).to(memory_format=layout)
        x = torch.randn(batch, 3, 112, 112, generator=torch.Generator().manual_seed(1)).contiguous(memory_format=layout)
        sgd = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        outputs[name] = model(x).detach()

        def step(model: Any = model, x: Any = x, sgd: Any = sgd) -> None:
            sgd.zero_grad(set_to_none=True)
            model(x).square().mean().backward()
            sgd.step()

        fns[name] = step
    same = bool(torch.allclose(outputs["nchw"], outputs["cl"], rtol=1e-3, atol=1e-3))
    timings = common.interleaved(fns, repeats)
    detail, ratio = common.compare("channels_last", timings["cl"], "NCHW", timings["nchw"])
    return common.emit(common.Result("cpu_path", f"layout-{arch}-w{width:g}", detail, ratio, what="cl vs nchw time",
                                     identical=same, note=f"batch {batch}, {torch.get_num_threads()} threads"))


def run(quick: bool = False) -> list[common.Result]:
    """Measure this target (tiny sizes with ``quick``: a correctness check, not a measurement)."""
    results = [r for setup in ([QUICK] if quick else [TEACHER, STUDENT]) for r in run_setup(setup, quick)]
    cases = LAYOUT_CASES[:1] if quick else LAYOUT_CASES
    with common.threads(quick):
        results += [layout_result(arch, width, 2 if quick else 32, 1 if quick else 4) for arch, width in cases]
    return results


def _child_main(spec: str) -> None:
    result = _measure_in_child(Setup(**json.loads(spec)))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        _child_main(sys.argv[2])
    else:
        common.module_main(__doc__, run)
