"""Run forward+backward of backbones in a child process, one case at a time, and report which died.

A crashing oneDNN kernel kills its process with SIGSEGV, which no ``try`` can catch. So each case
runs in a child (``python -m tests.kernel_probe CASE ...``) that prints ``start CASE`` before and
``ok CASE`` after it; when the child dies, the parent names the case that started without
finishing, records it, and starts a fresh child for the cases after it. A case is
``arch:width:layout:batch`` with layout ``nchw`` or ``cl`` (channels_last).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Died:
    case: str
    how: str


def run_case(case: str) -> None:
    """One training step's kernels: forward and backward in train mode (BatchNorm batch statistics)."""
    import torch

    from facekd.models.registry import create_backbone

    arch, width, layout, batch = case.split(":")
    torch.manual_seed(0)
    model = create_backbone(arch, embedding_size=64, width=float(width))
    x = torch.randn(int(batch), 3, 112, 112)
    if layout == "cl":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    out = model(x.requires_grad_())
    out.square().sum().backward()
    if not (torch.isfinite(out).all() and torch.isfinite(x.grad).all()):
        raise FloatingPointError(f"{case}: non-finite output or gradient")


def probe(cases: list[str], env: dict[str, str], timeout: float = 600) -> list[Died]:
    """Run ``cases`` in as few children as possible; the cases whose child died (or failed)."""
    died: list[Died] = []
    todo = list(cases)
    while todo:
        proc = subprocess.run(
            [sys.executable, "-m", "tests.kernel_probe", *todo], cwd=ROOT, env=env,
            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        )
        finished = {line[3:] for line in proc.stdout.splitlines() if line.startswith("ok ")}
        started = [line[6:] for line in proc.stdout.splitlines() if line.startswith("start ")]
        if proc.returncode == 0:
            break
        culprit = started[-1] if started and started[-1] not in finished else todo[0]
        died.append(Died(culprit, _describe(proc.returncode, proc.stderr)))
        todo = todo[todo.index(culprit) + 1:]
    return died


def _describe(returncode: int, stderr: str) -> str:
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    tail = stderr.strip().splitlines()[-1:] or [""]
    return f"exit {returncode}: {tail[0][:300]}"


def main(cases: list[str]) -> None:
    import torch

    torch.set_num_threads(int(os.environ.get("FACEKD_PROBE_THREADS", "1")))
    for case in cases:
        print(f"start {case}", flush=True)
        if case == os.environ.get("FACEKD_PROBE_CRASH"):  # the probe's own test: a real segfault
            os.kill(os.getpid(), signal.SIGSEGV)
        run_case(case)
        print(f"ok {case}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
