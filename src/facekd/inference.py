"""Using a model: embed aligned face crops, verify whether two faces are the same person.

The model is the registry version an alias points at (``champion`` by default, loaded by
:func:`facekd.mlops.champion.load_champion`) or a local ``.onnx`` file. Faces are embedded as the
evaluation embeds them (image + horizontal flip, summed, L2-normalised), so a cosine between two
faces is the score of two one-image templates, and "same" means cosine > the threshold the
evaluation recorded at ``registry.verify_far`` (:func:`facekd.mlops.evidence.operating_point`).
"""
from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facekd import layout
from facekd.config import Params
from facekd.errors import DataError, RegistryError
from facekd.mlops.champion import ChampionModel

ALIGNED = (112, 112, 3)
BATCH = 64  # images per onnxruntime call: bounded memory for any number of files
ALIGN_HINT = ("align it first with insightface's 5-point alignment (insightface.utils.face_align.norm_crop, "
              "or facekd.data.ijb_protocol.align_face with the 5 landmarks) to a 112x112 crop")


@dataclass(frozen=True)
class LoadedModel:
    """An embedding model and the decision threshold its evaluation recorded (None if none)."""

    model: ChampionModel
    label: str
    threshold: float | None
    far: float | None


@dataclass(frozen=True)
class Verification:
    score: float
    threshold: float
    far: float | None

    @property
    def same(self) -> bool:
        return self.score > self.threshold


def _tag_number(value: str | None) -> float | None:
    """A ``repr(float)`` version tag back to a float; absent or ``None`` -> None."""
    try:
        return float(value) if value not in (None, "None") else None
    except ValueError:
        return None


def load_model(params: Params, source: str) -> LoadedModel:
    """``source`` is a registry alias of ``registry.model_name`` or a path ending in ``.onnx``."""
    if source.endswith(".onnx"):
        return _load_file(params, Path(source))
    from facekd.mlops.champion import load_champion

    model = load_champion(params, alias=source)
    return LoadedModel(model, f"{model.name}@{source} (version {model.version})",
                       _tag_number(model.tags.get("verify_threshold")), _tag_number(model.tags.get("verify_far")))


def _load_file(params: Params, path: Path) -> LoadedModel:
    """A local ONNX file; its threshold comes from ``metrics/eval/<file stem>.json`` when there is one."""
    from facekd.export.checks import open_session
    from facekd.mlops.evidence import operating_point, read_eval_metrics

    if not path.is_file():
        raise DataError(f"{path}: ONNX model file not found; pass an exported .onnx (exports/<model>.onnx) "
                        "or a registry alias such as champion")
    try:
        session = open_session(path)
    except Exception as err:  # noqa: BLE001 - onnxruntime raises its own untyped failures
        raise DataError(f"{path}: not a loadable ONNX model ({str(err).splitlines()[0][:200]}); "
                        "export it again with `facekd export <model>`") from None
    threshold = far = None
    if layout.eval_metrics_file(path.stem).is_file():
        point = operating_point(read_eval_metrics(path.stem), params.registry.gate_metric, params.registry.verify_far)
        threshold, far = point["threshold"], point["far"]
    return LoadedModel(ChampionModel(path.stem, "file", str(path), session), str(path), threshold, far)


def read_faces(paths: Sequence[str | Path]) -> np.ndarray:
    """(N, 112, 112, 3) uint8 RGB from image files; DataError naming the first that is not an aligned crop."""
    from facekd.data.images import read_image_file

    faces = np.empty((len(paths), *ALIGNED), np.uint8)
    for i, path in enumerate(paths):
        image = read_image_file(path)
        if image.shape != ALIGNED:
            raise DataError(f"{path}: image is {image.shape[1]}x{image.shape[0]}, not an aligned "
                            f"{ALIGNED[1]}x{ALIGNED[0]} face crop; {ALIGN_HINT}")
        faces[i] = image
    return faces


def embed_faces(model: ChampionModel, faces: np.ndarray) -> np.ndarray:
    """(N, 112, 112, 3) uint8 -> (N, d) float32 unit vectors of image + flip, as the evaluation embeds."""
    from facekd.evaluation.embed import flip_sum_normalize

    chunks = [np.concatenate([model.embed(part), model.embed(part[:, :, ::-1])], axis=1)
              for part in np.array_split(faces, max(1, -(-len(faces) // BATCH)))]
    return flip_sum_normalize(np.concatenate(chunks))


def embed_files(params: Params, source: str, paths: Sequence[str | Path], out: Path) -> tuple[LoadedModel, np.ndarray]:
    """Embed ``paths`` (rows in that order) and write the (N, d) array to ``out`` as .npy."""
    from facekd.fsio import write_bytes

    faces = read_faces(paths)  # every file checked before the model is fetched
    loaded = load_model(params, source)
    emb = embed_faces(loaded.model, faces)
    buf = io.BytesIO()
    np.save(buf, emb)
    write_bytes(out, buf.getvalue())
    return loaded, emb


def verify_files(params: Params, source: str, a: str | Path, b: str | Path,
                 threshold: float | None = None) -> tuple[LoadedModel, Verification]:
    """Cosine of two faces and the decision at ``threshold`` (default: the model's recorded one)."""
    faces = read_faces([a, b])
    loaded = load_model(params, source)
    if threshold is None and loaded.threshold is None:
        raise RegistryError(
            f"{loaded.label}: no decision threshold recorded at FAR {params.registry.verify_far:g} on "
            f"'{params.registry.gate_metric.split('.', 1)[0]}' (evaluate with that FAR in evaluate.far_targets, "
            "then register again), or pass --threshold")
    emb = embed_faces(loaded.model, faces)
    score = float(np.dot(emb[0], emb[1]))
    if threshold is not None:
        return loaded, Verification(score, threshold, None)
    return loaded, Verification(score, loaded.threshold, loaded.far)
