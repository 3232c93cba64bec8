"""What every benchmark shares: thread settings, interleaved timing, results and the summary table.

Timing rules (the machine is a shared 2-core box, so every figure is noisy):

- both sides run in the same process, warmed up, then interleaved A B B A A B ... so drift in the
  machine's load hits both alike;
- each call is timed in wall seconds and in CPU seconds of this process (all its threads); a ratio
  is the median of the per-round ratios, which cancels most of the load that changes between rounds;
- "faster" means wall time, so wall-time ratios are the verdict; the CPU-time ratio is printed
  beside it as a cross-check (it ignores other jobs' load, but counts OpenMP threads spinning while
  they wait, so it under-rates better parallel use). Targets stated in CPU seconds use CPU time.
"""
from __future__ import annotations

import contextlib
import gc
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

THREADS = 2  # the project machine's cores
ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def threads(quick: bool = False) -> Iterator[None]:
    """Run on the machine's 2 threads (torch and the BLAS behind numpy), restoring the settings after.

    Quick (correctness-only) runs use 1 thread: tiny ops on 2 threads of a busy 2-core box spend
    milliseconds waiting for the second thread at every parallel region.
    """
    import torch
    from threadpoolctl import threadpool_limits

    n = 1 if quick else THREADS
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with threadpool_limits(n):
            yield
    finally:
        torch.set_num_threads(before)


@dataclass
class Timing:
    """Wall and CPU seconds of every timed call of one side."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def add(self, wall: float, cpu: float) -> None:
        self.wall.append(wall)
        self.cpu.append(cpu)

    def median(self, clock: str = "cpu") -> float:
        return statistics.median(getattr(self, clock))


def timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """(wall seconds, CPU seconds of this process, result) of one call."""
    gc.collect()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall0, time.process_time() - cpu0, out


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, Timing]:
    """Time every function ``repeats`` times, round-robin with the order reversed every other round."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    out = {name: Timing() for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            wall, cpu, _ = timed(fns[name])
            out[name].add(wall, cpu)
    return out


def paired_ratio(a: Timing, b: Timing, clock: str = "wall") -> float:
    """Median over rounds of a_i / b_i (the rounds are interleaved, so each pair saw similar load)."""
    xs, ys = getattr(a, clock), getattr(b, clock)
    return statistics.median(x / y for x, y in zip(xs, ys, strict=True) if y > 0)


def compare(a_label: str, a: Timing, b_label: str, b: Timing) -> tuple[str, float]:
    """("A x ms vs B y ms wall (CPU ...; CPU ratio; best-of ratio)", wall ratio a/b) for a result line.

    The best-of ratio (fastest call of each side) is the cross-check against load bursts: noise
    from other jobs only ever adds time.
    """
    best = min(a.wall) / min(b.wall)
    detail = (f"{a_label} {ms(a.median('wall'))} vs {b_label} {ms(b.median('wall'))} wall "
              f"(CPU {ms(a.median())} vs {ms(b.median())}, CPU ratio {paired_ratio(a, b, 'cpu'):.3g}, "
              f"best-of ratio {best:.3g})")
    return detail, paired_ratio(a, b)


@dataclass
class Result:
    """One measured target: a value (often a ratio) checked against a limit."""

    bench: str
    case: str
    detail: str  # "cache step 12.3 ms vs none 11.1 ms"
    value: float  # the number the target is about
    what: str = "ratio"  # printed before the value: "ratio", "CPU s", "GiB"...
    op: str = "<="  # "<=" or ">="; "" for an informational line
    limit: float | None = None
    identical: bool | None = None  # reference and facekd agree (where the bench checks it)
    note: str = ""

    @property
    def passed(self) -> bool | None:
        if self.limit is None or not self.op:
            return None
        return self.value <= self.limit if self.op == "<=" else self.value >= self.limit

    @property
    def verdict(self) -> str:
        return {True: "PASS", False: "FAIL", None: "info"}[self.passed]

    def line(self) -> str:
        target = f" (target {self.op} {self.limit:g})" if self.passed is not None else ""
        same = "" if self.identical is None else ("; identical" if self.identical else "; NOT IDENTICAL")
        note = f" [{self.note}]" if self.note else ""
        return f"{self.bench}[{self.case}]: {self.detail} -> {self.what} {self.value:.3g}{target} {self.verdict}{same}{note}"


def emit(result: Result) -> Result:
    """Print one result line now (benchmarks take minutes: show progress as it comes)."""
    print(result.line(), flush=True)
    return result


def note(text: str) -> None:
    """An indented diagnostic line under the results."""
    print(f"    {text}", flush=True)


def summary_table(results: Sequence[Result]) -> str:
    """Plain-text table of every result."""
    rows = [("bench", "case", "value", "target", "verdict", "identical")]
    for r in results:
        target = f"{r.op} {r.limit:g}" if r.passed is not None else "-"
        same = "-" if r.identical is None else ("yes" if r.identical else "NO")
        rows.append((r.bench, r.case, f"{r.what} {r.value:.3g}", target, r.verdict, same))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 10 else f"{seconds:.1f} s"


def peak_rss_gib() -> float:
    """Peak resident memory of this process so far, GiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def load_average() -> str:
    """The 1-minute load average and core count, for the record."""
    return f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"


@contextlib.contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A temporary folder removed afterwards."""
    with tempfile.TemporaryDirectory(prefix=f"facekd-bench-{prefix}-") as tmp:
        yield Path(tmp)


def face_like_images(n: int, seed: int = 0) -> "Any":
    """(n, 112, 112, 3) uint8 smooth images with some texture: JPEG-compress like aligned face crops.

    A 7x7 colour field upsampled (the broad shading of a face) plus mild noise (skin and hair
    texture); at quality 95 each is 4-8 KB, the size of a real 112x112 crop.
    """
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    out = np.empty((n, 112, 112, 3), dtype=np.uint8)
    for i in range(n):
        coarse = rng.uniform(30, 220, (7, 7, 3)).astype(np.float32)
        smooth = cv2.resize(coarse, (112, 112), interpolation=cv2.INTER_CUBIC)
        out[i] = np.clip(smooth + rng.normal(0, 6, smooth.shape), 0, 255).astype(np.uint8)
    return out


def write_rec(folder: Path, images: "Any", labels: "Any", quality: int = 95) -> Path:
    """Write images (N, 112, 112, 3) with labels (N,) grouped 0..C-1 as ``folder/train.rec``; returns folder."""
    from facekd.data.images import encode_jpeg
    from facekd.data.face_rec import write_face_rec

    folder.mkdir(parents=True, exist_ok=True)
    items = ((int(y), encode_jpeg(img, quality)) for img, y in zip(images, labels, strict=True))
    write_face_rec(folder / "train.rec", folder / "train.idx", items)
    return folder


def measure(inner: Callable[[bool], list["Result"]], quick: bool = False) -> list["Result"]:
    """Run a target's measurement on the benchmark threads (tiny sizes with ``quick``)."""
    with threads(quick):
        return inner(quick)


def measure_setups(run_setup: Callable[[Any], list["Result"]], quick: bool, quick_setup: Any,
                   setups: Sequence[Any]) -> list["Result"]:
    """:func:`measure` of ``run_setup`` over ``setups`` (only ``quick_setup`` with ``quick``)."""
    return measure(lambda q: [r for setup in ([quick_setup] if q else setups) for r in run_setup(setup)], quick)


def module_main(doc: str | None, run: Callable[[bool], list["Result"]]) -> None:
    """``python -m bench.<name> [--quick]`` for one target."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds), for the smoke test")
    run(parser.parse_args().quick)
