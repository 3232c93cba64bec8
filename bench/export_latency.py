"""Target 6: onnxruntime batch-1 latency of the exported student <= 0.7x PyTorch eager.

The student is exported by facekd's ``export_onnx`` (the graph the ``export`` stage writes); the
same module in eval mode under ``inference_mode`` is the PyTorch side, fed the same normalised
(1, 3, 112, 112) input. Calls are interleaved in blocks and the latency is the median call, on 2
threads (the machine) and on 1 thread (what the export stage's checks record). The embeddings must
agree (cosine >= 0.9999: "identical"). The same export without the PRelu rewrite
(``rewrite_prelu=False``, see ``facekd.export.rewrite``) is timed in the same rounds and shown in
the note, with its largest output difference from the rewritten graph.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench import common

LIMIT = 0.7


@dataclass(frozen=True)
class Setup:
    name: str
    width: float
    embedding: int
    calls: int  # timed calls per side and thread count
    exporter: str


FULL = Setup("mfn-full", 1.0, 512, calls=200, exporter="auto")
EMBEDDED = Setup("mfn-embedded", 0.25, 128, calls=300, exporter="auto")
QUICK = Setup("mfn-quick", 0.125, 32, calls=10, exporter="legacy")


def _latencies(fns: dict[str, Callable[[], Any]], calls: int, block: int = 10) -> dict[str, float]:
    """Median seconds per call of each function, alternating blocks of ``block`` calls."""
    for fn in fns.values():
        for _ in range(3):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(max(1, calls // block)):
        for name in list(fns) if r % 2 == 0 else list(fns)[::-1]:
            for _ in range(block):
                start = time.perf_counter()
                fns[name]()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def run_setup(setup: Setup) -> list[common.Result]:
    import torch

    from facekd.export.checks import cosine_rows, open_session
    from facekd.export.onnx import INPUT_NAME, export_onnx, to_input
    from facekd.models.registry import create_backbone

    torch.manual_seed(0)
    start_threads = torch.get_num_threads()
    model = create_backbone("mfn", embedding_size=setup.embedding, width=setup.width).eval()
    x = to_input(common.face_like_images(1))  # (1, 3, 112, 112) float32
    out = []
    with common.scratch_dir("export") as tmp:
        info = export_onnx(model, tmp / "student.onnx", opset=18, exporter=setup.exporter)
        export_onnx(model, tmp / "plain.onnx", opset=18, exporter=info["exporter"], rewrite_prelu=False)
        for threads in dict.fromkeys((torch.get_num_threads(), 1)):
            torch.set_num_threads(threads)
            session = open_session(tmp / "student.onnx", threads)
            plain = open_session(tmp / "plain.onnx", threads)
            tx = torch.from_numpy(x)

            def eager() -> np.ndarray:
                with torch.inference_mode():
                    return model(tx).numpy()

            def ort() -> np.ndarray:
                return session.run(None, {INPUT_NAME: x})[0]

            def ort_plain() -> np.ndarray:
                return plain.run(None, {INPUT_NAME: x})[0]

            same = float(cosine_rows(ort(), eager()).min()) >= 0.9999
            rewrite_diff = float(np.abs(ort() - ort_plain()).max())
            lat = _latencies({"ort": ort, "ort_plain": ort_plain, "eager": eager}, setup.calls)
            out.append(common.emit(common.Result(
                "export_latency", f"{setup.name}/{threads}-thread",
                f"onnxruntime {lat['ort'] * 1e3:.2f} ms vs PyTorch eager {lat['eager'] * 1e3:.2f} ms (batch 1)",
                lat["ort"] / lat["eager"], op="<=", limit=LIMIT, identical=same,
                note=f"{info['exporter']} exporter, opset 18, {info['prelu_rewritten']} PRelu rewritten; "
                     f"plain PRelu graph {lat['ort_plain'] * 1e3:.2f} ms, max abs diff {rewrite_diff:.1e}")))
    torch.set_num_threads(start_threads)
    return out


def run(quick: bool = False) -> list[common.Result]:
    """Measure this target (tiny sizes with ``quick``: a correctness check, not a measurement)."""
    return common.measure_setups(run_setup, quick, QUICK, (FULL, EMBEDDED))


if __name__ == "__main__":
    common.module_main(__doc__, run)
