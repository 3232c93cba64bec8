"""How a training process uses the CPU: intra-op threads and the memory layout of the backbone.

Both are ``auto`` by default and resolved once per process from measurements (issue 13):

* **Threads.** ``auto`` is one thread per core this process may use: the same on every run of a
  machine, because the thread count changes the floating-point summation order of backward
  kernels (and, through :data:`CPU_NCHW_FASTER`, the layout), and so the trained model. Choosing
  by load made results depend on what else ran: on one 2-core machine the embedded teacher trained
  with 1 thread (beside a test run) scored 12.67 at the gate against 18.67 with 2 (quiet).
  ``idle`` trades that for speed beside other work: it samples ``/proc/stat`` for a quarter of a
  second and uses one thread per idle core (on 2 cores a 2-thread step beside one busy process
  runs at ~110 img/s while a 1-thread step keeps ~170; quiet 2-thread ~280: OpenMP's barrier
  waits for the thread the scheduler parked). An explicit ``OMP_NUM_THREADS`` or an integer wins.
* **Layout.** ``channels_last`` pays on CUDA and on CPU for most backbones, but not everywhere on
  CPU (:data:`CPU_NCHW_FASTER`, from ``python -m bench.cpu_path``).

Also the run-wide switches a training run sets and restores: deterministic kernels, the autocast
dtype, and SIGTERM/SIGINT turned into a stop at the next step boundary.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)

Auto = Literal["auto", "idle"]
# (arch, width) -> the thread counts at which its CPU training step did not measure faster in
# channels_last than in NCHW (`python -m bench.cpu_path`, batch 32, AVX2 EPYC, 2026-12-03). At 2
# threads iresnet_tiny (8-channel first stage at every width here) measured cl/NCHW time 1.11 /
# 1.00 / 1.01 at w0.125 / 0.25 / 0.5 and, in Trainer steps, 101-108 vs 109-126 img/s; at 1 thread
# channels_last won (71-87 vs 58-80 img/s), so it keeps channels_last there. Faster in
# channels_last at 2 threads, so not listed: iresnet18 w0.25 / w1.0 (0.90 / 0.97), mfn w0.125-1.0
# (0.84 / 0.74 / 0.82 / 0.69), mbf w0.25 / w1.0 (0.72 / 0.68).
CPU_NCHW_FASTER: dict[tuple[str, float], frozenset[int]] = {
    ("iresnet_tiny", width): frozenset({2}) for width in (0.125, 0.25, 0.5)}
_SAMPLE_SECONDS = 0.25


def _cpu_times() -> tuple[float, float]:
    """(idle, total) jiffies of all CPUs since boot, from the first line of /proc/stat.

    A niced process counts as busy: it yields most of its core, but a 2-thread step beside a
    ``nice -n 19`` spinner still measured ~40x slower than 1 thread (each barrier waits for the
    thread that the scheduler gave to the spinner for a time slice).
    """
    with open("/proc/stat", encoding="ascii") as stat:
        user, nice, system, idle, iowait, irq, softirq, steal = (float(v) for v in stat.readline().split()[1:9])
    return idle + iowait, user + nice + system + idle + iowait + irq + softirq + steal


def idle_cores(sample_seconds: float = _SAMPLE_SECONDS) -> float | None:
    """Cores left idle by every other process over a short sample; ``None`` without /proc/stat."""
    try:
        idle0, total0 = _cpu_times()
        time.sleep(sample_seconds)
        idle1, total1 = _cpu_times()
    except (OSError, ValueError):
        return None
    cores = os.cpu_count() or 1
    return cores * (idle1 - idle0) / max(total1 - total0, 1e-9)


def choose_threads(setting: int | Auto) -> int:
    """Intra-op threads for this process: an integer param, else ``OMP_NUM_THREADS``, else the
    usable cores (``auto``) or the idle ones (``idle``)."""
    if setting not in ("auto", "idle"):
        return int(setting)
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    usable = len(os.sched_getaffinity(0))
    return threads_for(idle_cores(), usable) if setting == "idle" else usable


def threads_for(idle: float | None, usable: int) -> int:
    """One thread per idle core (rounded), at least 1, at most the cores this process may use."""
    if idle is None:
        return usable
    return max(1, min(usable, int(idle + 0.5)))


def apply_threads(setting: int | Auto) -> int:
    """Set torch's intra-op threads from ``setting``; returns and logs the number."""
    import torch

    threads = choose_threads(setting)
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    how = {"auto": "auto: usable cores", "idle": "idle: one per idle core"}.get(str(setting), "param")
    log.info("intra-op threads: %d (%s)", threads, how)
    return threads


def use_channels_last(setting: bool | Auto, backbone: "nn.Module", device: "torch.device",
                      threads: int | None = None) -> bool:
    """Whether to train ``backbone`` in channels_last: the param, or ``auto`` by measurement
    (:data:`CPU_NCHW_FASTER`, at ``threads``: torch's current intra-op threads when None)."""
    import torch

    if setting != "auto":
        return bool(setting)
    if device.type == "cuda":
        return True
    args: dict[str, Any] = getattr(backbone, "build_args", {})
    slower = CPU_NCHW_FASTER.get((args.get("arch"), args.get("width")), frozenset())
    return (threads or torch.get_num_threads()) not in slower


class StopSignals:
    """Turn SIGTERM/SIGINT into a request honoured at the next step boundary (main thread only)."""

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without a checkpoint
        self.signum = signum
        log.warning("received %s: stopping after this step (checkpoint saved)", signal.Signals(signum).name)

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def deterministic_kernels(enabled: bool) -> Iterator[None]:
    """Deterministic kernels for the duration of training; the previous setting is restored."""
    import torch

    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    benchmark = torch.backends.cudnn.benchmark
    _set_deterministic(enabled, warn_only=True)
    torch.backends.cudnn.benchmark = not enabled
    try:
        yield
    finally:
        _set_deterministic(before[0], warn_only=before[1])
        torch.backends.cudnn.benchmark = benchmark


def _set_deterministic(enabled: bool, *, warn_only: bool) -> None:
    """``torch.use_deterministic_algorithms`` without its import of ``torch._inductor`` when unused.

    The public call imports the inductor config (~3 CPU-s, paid by every training stage) only to
    copy the flag into it; when nothing has imported the inductor (no ``torch.compile`` in this
    process) the flag is set in the core alone, which is all eager kernels read.
    """
    import torch

    if "torch._inductor.config" in sys.modules:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
    else:
        torch._C._set_deterministic_algorithms(enabled, warn_only=warn_only)


def amp_dtype(amp: str, device: "torch.device") -> "torch.dtype | None":
    """The autocast dtype, or None: AMP runs only on CUDA (bf16 on this CPU is ~300x slower)."""
    import torch

    if amp == "off":
        return None
    if device.type != "cuda":
        log.warning("optim.amp=%s ignored on %s: mixed precision is used on CUDA only", amp, device)
        return None
    return torch.float16 if amp == "fp16" else torch.bfloat16
