"""The INT8 copy of a model as an evaluated model of its own: its name, and how far its embeddings
stray from the float model's on the evaluation images.

``exports/<model>.int8.onnx`` is scored by ``evaluate_int8@<model>`` exactly like the PyTorch model
by ``evaluate@<model>``, under the name ``<model>.int8``: ``metrics/eval/<model>.int8.json`` and
``metrics/scores/<model>.int8.npz``. The report then pairs the two on the same bootstrap resamples
(the drop from float, with its interval) and the registry gates a release on that drop.

The cosine is measured on every image the evaluation embeds, against the float ONNX file on the
same input: the export report's cosine covers the 64 parity images only, and a few hard images are
where quantization breaks first. The mirrors (which the INT8 model also embeds, as both are scored)
are left out of the cosine: the float file then embeds each image once, half the reference's cost
(on the embedded study ~3 s of an ``evaluate_int8`` stage's 29 s, 10 stages).
"""
from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import numpy as np

from facekd import layout
from facekd.errors import DataError

COSINE_KEY = "cosine_to_float"  # in metrics/eval/<model>.int8.json

Embedder = Callable[[str, np.ndarray], np.ndarray]


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N,) cosine of row i of ``a`` and row i of ``b``, both (N, d); 0 for an all-zero row."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise DataError(f"embeddings to compare must be two (N, d) arrays of one shape; got {a.shape} and {b.shape}")
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.sum(a * b, axis=1) / np.maximum(norms, np.finfo(np.float64).tiny)


class AgreementEmbedder:
    """An embedder that returns the INT8 model's features and records, per benchmark, each image's
    cosine to the float model's embedding of the same input.

    ``quantized`` returns ``(N, 2d)`` ``[image, mirror]`` features (``embed_images`` with flip),
    ``reference`` ``(N, d)`` features of the images alone (without flip): a benchmark of N images
    gives N cosines, INT8 image half against the float embedding.
    """

    def __init__(self, quantized: Embedder, reference: Embedder) -> None:
        self.quantized, self.reference = quantized, reference
        self.cosines: dict[str, np.ndarray] = {}

    def __call__(self, name: str, images: np.ndarray) -> np.ndarray:
        q, f = self.quantized(name, images), self.reference(name, images)
        if q.ndim != 2 or f.ndim != 2 or q.shape != (f.shape[0], 2 * f.shape[1]):
            raise DataError(f"{name}: INT8 features {q.shape} ([image, mirror]) and float features {f.shape} "
                            "(image) do not match; re-export the model so both files come from one checkpoint")
        self.cosines[name] = row_cosines(q[:, :f.shape[1]], f)  # (N,): each image's INT8 vs float embedding
        return q

    def summary(self, reference: str) -> dict[str, Any]:
        """``{"reference", "min", "median", "images", "per_benchmark": {name: {"min", "median", "images"}}}``."""
        if not self.cosines:
            raise DataError("no images were embedded, so there is no INT8-vs-float cosine to report")
        every = np.concatenate(list(self.cosines.values()))
        return {"reference": reference, **_spread(every),
                "per_benchmark": {name: _spread(values) for name, values in sorted(self.cosines.items())}}


def _spread(values: np.ndarray) -> dict[str, Any]:
    return {"min": float(values.min()), "median": float(statistics.median(values.tolist())), "images": int(values.size)}


def int8_metrics(model: str) -> dict[str, Any] | None:
    """``metrics/eval/<model>.int8.json``, or None when the INT8 copy was not evaluated."""
    from facekd.fsio import read_json_object

    path = layout.eval_metrics_file(layout.int8_name(model))
    if not path.is_file():
        return None
    return read_json_object(path, DataError, missing="missing", redo=f"re-run `facekd evaluate {model} --int8`")
