"""The promoted model, ready to embed faces: ``models:/<name>@champion`` (or its INT8 copy) in an
onnxruntime session."""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from facekd.config import Params
from facekd.errors import RegistryError
from facekd.mlops.client import open_registry, tracking_uri
from facekd.mlops.model_registry import CHAMPION, INT8_ARTIFACT, _by_alias, _require_registered_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChampionModel:
    """A registered version's (or a local file's) ONNX graph in an onnxruntime session, with its version tags."""

    name: str
    version: str
    uri: str
    session: Any
    tags: dict[str, str] = field(default_factory=dict)

    def embed(self, images_uint8: np.ndarray) -> np.ndarray:
        """(N, 112, 112, 3) uint8 RGB -> (N, d) float32 embeddings (not normalised)."""
        from facekd.export.onnx import INPUT_NAME, to_input

        return self.session.run(None, {INPUT_NAME: to_input(images_uint8)})[0]

    __call__ = embed


def load_champion(params: Params, alias: str = CHAMPION, *, int8: bool = False) -> ChampionModel:
    """Download ``models:/<name>@<alias>`` (pinned to the version the alias points at) for inference;
    with ``int8`` its INT8 copy (``runs:/<run_id>/int8`` of the same version)."""
    import mlflow.artifacts
    import mlflow.onnx

    from facekd.export.checks import open_session

    name, uri_root = params.registry.model_name, tracking_uri(params)
    with open_registry(params) as client:
        _require_registered_model(client, name)
        champion = _by_alias(client, name, alias)
        if champion is None:
            fix = "run `facekd promote` first" if alias == CHAMPION else "check the alias in the MLflow UI"
            raise RegistryError(f"registered model '{name}' has no alias '{alias}' yet; {fix}")
        uri = f"models:/{name}/{champion.version}"
        if int8:
            if "int8_onnx_sha256" not in champion.tags:
                raise RegistryError(f"version {champion.version} of '{name}' ({alias}) was registered without an "
                                    "INT8 copy; set export.int8.enabled, `dvc repro` and register again")
            uri = f"runs:/{champion.run_id}/{INT8_ARTIFACT}"
        with tempfile.TemporaryDirectory() as tmp:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=uri, dst_path=tmp, tracking_uri=uri_root, registry_uri=uri_root
            )
            proto = mlflow.onnx.load_model(local)
    session = open_session(proto.SerializeToString())
    log.info("loaded %s@%s = version %s", name, alias, champion.version)
    return ChampionModel(name, str(champion.version), uri, session, dict(champion.tags))
