"""Model artifacts: a directory with ``config.json`` + ``weights.safetensors``, never pickle.

``config.json`` carries the model configuration, the preprocessing (size, mean, std) and a
SHA-256 of the weights file, which :func:`load_artifact` verifies before reading any tensor.
``weights_dtype`` says how the weights are stored (``float32``, ``float16`` or weight-only
``int8``, see :mod:`openrecog.models.compression`); an artifact without it is float32. Loading
always gives a float32 model.

An :class:`~openrecog.models.ensemble.EnsembleEmbedder` is stored the same way, with an extra
``ensemble`` section (the members' configurations and the PCA size) and its weights under
``members.<i>.`` and ``pca.``.

An artifact may also hold ONNX exports of its model (``model.onnx``, ``model.int8.onnx``),
recorded with their SHA-256 in an ``onnx`` section of ``config.json``; see
:mod:`openrecog.models.onnx_export` and :mod:`openrecog.models.onnx_engine`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors.torch import load_file, save_file

from openrecog.config import ModelConfig, format_validation_error
from openrecog.models.compression import (
    WEIGHTS_DTYPES,
    check_weights_dtype,
    dequantize_state_dict,
    quantize_state_dict,
)
from openrecog.models.embedder import Embedder, resolve_preprocessing
from openrecog.models.ensemble import EnsembleEmbedder
from openrecog.storage import read_json, recover_dir, replace_dir, sha256_file

ARTIFACT_FORMAT = "openrecog-model"
ARTIFACT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"


class ArtifactError(ValueError):
    """A model directory that is missing, incomplete, tampered with or of another format."""


def is_artifact(path: str | Path) -> bool:
    """Return True if ``path`` looks like a model artifact directory."""
    path = Path(path)
    return (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def save_artifact(
    model: Embedder | EnsembleEmbedder,
    path: str | Path,
    metadata: dict[str, Any] | None = None,
    weights_dtype: str = "float32",
) -> Path:
    """Write ``model`` to the directory ``path`` atomically (temp dir, then rename).

    An existing artifact at ``path`` is replaced only once the new one is complete.

    Args:
        model: the embedder or ensemble to save (its weights are left untouched).
        path: artifact directory.
        metadata: free JSON-able data stored in ``config.json`` (e.g. a threshold).
        weights_dtype: ``float32`` (lossless, default), ``float16`` (about half the size) or
            ``int8`` (weight-only per-channel int8, about a quarter); see
            :mod:`openrecog.models.compression`.

    Raises:
        ValueError: ``weights_dtype`` is not one of the allowed values.
    """
    check_weights_dtype(weights_dtype)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        state = quantize_state_dict(model.state_dict(), weights_dtype)
        save_file(state, str(tmp / WEIGHTS_FILE))
        config = {
            "format": ARTIFACT_FORMAT,
            "version": ARTIFACT_VERSION,
            "model": model.config.model_dump(mode="json"),
            "preprocessing": resolve_preprocessing(model.config),
            "embedding_dim": model.embedding_dim,
            "weights_sha256": sha256_file(tmp / WEIGHTS_FILE),
            "weights_dtype": weights_dtype,
            "metadata": metadata or {},
        }
        if isinstance(model, EnsembleEmbedder):
            config["ensemble"] = {
                "members": [c.model_dump(mode="json") for c in model.member_configs()],
                "pca_dim": model.pca_dim,
            }
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2), encoding="utf-8")
        replace_dir(tmp, path)
        if weights_dtype == "float32":
            # Only a lossless save makes the in-memory model *equal* to the artifact; after a
            # lossy one the model keeps pointing at the artifact it really matches (if any).
            model.artifact_sha256 = config["weights_sha256"]
            model.artifact_state_digest = state_digest(model)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def read_artifact_config(path: str | Path) -> dict[str, Any]:
    """Read and check ``config.json`` of an artifact directory."""
    path = Path(path)
    recover_dir(path)
    if not path.is_dir():
        raise ArtifactError(f"model not found: {path}")
    if not is_artifact(path):
        raise ArtifactError(
            f"{path}: not a model artifact (needs {CONFIG_FILE} and {WEIGHTS_FILE})"
        )
    config = read_json(path / CONFIG_FILE, ArtifactError)
    if not isinstance(config, dict) or config.get("format") != ARTIFACT_FORMAT:
        raise ArtifactError(f"{path}: not an {ARTIFACT_FORMAT} artifact")
    if config.get("version", 0) > ARTIFACT_VERSION:
        raise ArtifactError(f"{path}: artifact version {config['version']} is newer than supported")
    return config


def _model_config(data: Any, where: str) -> ModelConfig:
    try:
        return ModelConfig.model_validate(data)
    except ValidationError as exc:
        raise ArtifactError(f"{where}: bad model section ({format_validation_error(exc)})") from exc


def _build_model(config: dict[str, Any], where: str) -> Embedder | EnsembleEmbedder:
    """The untrained model described by an artifact's ``config.json``."""
    if "model" not in config:
        raise ArtifactError(f"{where}: bad model section ('model' is missing)")
    model_config = _model_config(config["model"], where)
    ensemble = config.get("ensemble")
    if ensemble is None:
        return Embedder(model_config, load_pretrained=False)
    try:
        member_data, pca_dim = ensemble["members"], ensemble["pca_dim"]
        configs = [_model_config(member, where) for member in member_data]
    except (KeyError, TypeError) as exc:
        raise ArtifactError(f"{where}: bad ensemble section ({exc!r})") from exc
    members = [Embedder(c, load_pretrained=False) for c in configs]
    try:
        return EnsembleEmbedder(members, pca_dim)
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"{where}: bad ensemble section ({exc})") from exc


def load_artifact(path: str | Path, verify: bool = True) -> Embedder | EnsembleEmbedder:
    """Load an :class:`Embedder` (or an ensemble of them) from an artifact directory.

    float16 / int8 weights are converted back to float32; the model always runs in float32.
    The model gets ``artifact_metadata``, ``artifact_sha256`` (of the weights file),
    ``artifact_weights_dtype``, ``artifact_path`` (the folder, absolute) and
    ``artifact_state_digest`` (see :func:`loaded_weights_sha256`).

    Raises:
        ArtifactError: missing files, bad JSON, checksum mismatch or weights that do not fit.
    """
    path = Path(path)
    config = read_artifact_config(path)
    weights_dtype = config.get("weights_dtype", "float32")
    if weights_dtype not in WEIGHTS_DTYPES:
        raise ArtifactError(
            f"{path / CONFIG_FILE}: unknown weights_dtype {weights_dtype!r} "
            f"(supported: {', '.join(WEIGHTS_DTYPES)}; written by a newer openrecog?)"
        )
    weights = path / WEIGHTS_FILE
    digest = config.get("weights_sha256")
    if verify and sha256_file(weights) != digest:
        raise ArtifactError(f"{weights}: checksum mismatch (file changed or corrupted)")
    model = _build_model(config, str(path / CONFIG_FILE))
    try:
        model.load_state_dict(dequantize_state_dict(load_file(str(weights))), strict=True)
    except Exception as exc:  # safetensors and torch raise several types for bad files
        raise ArtifactError(f"{weights}: weights do not fit the model ({exc})") from exc
    model.artifact_metadata = config.get("metadata", {})
    model.artifact_sha256 = digest
    model.artifact_state_digest = state_digest(model)
    model.artifact_weights_dtype = weights_dtype
    # Where the model came from, so that an inference engine can find the artifact's
    # ONNX export (see openrecog.models.onnx_engine); absolute, as the cwd may change.
    model.artifact_path = path.resolve()
    return model.eval()


def state_digest(model: torch.nn.Module) -> str:
    """BLAKE2b digest of every parameter and buffer of ``model`` (names, dtypes, shapes, values).

    Tensor versions or data pointers would be cheaper but miss writes through ``.data``
    (as EMA and weight-averaging code does); hashing the values costs ~40 ms for the default
    model and runs only when a model is loaded, saved or handed to an engine or gallery.
    """
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in model.state_dict().items():
        values = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{values.dtype}:{tuple(values.shape)};".encode())
        # Through uint8 so that dtypes numpy lacks (bfloat16) hash the same way.
        digest.update(values.reshape(-1).view(torch.uint8).numpy() if values.numel() else b"")
    return digest.hexdigest()


def loaded_weights_sha256(model: torch.nn.Module) -> str | None:
    """``model.artifact_sha256`` if the model still has the weights it was loaded with, else None.

    Weights changed in place after :func:`load_artifact` (a training step, ``load_state_dict``,
    weight interpolation) no longer match the artifact's files, its ONNX export or a gallery
    that links them, so nothing may treat the model as that artifact any more.
    """
    sha = getattr(model, "artifact_sha256", None)
    if sha is None or getattr(model, "artifact_state_digest", None) != state_digest(model):
        return None
    return sha


def artifact_holds_model(config: dict[str, Any], model: Embedder | EnsembleEmbedder) -> bool:
    """Whether the artifact ``config`` (its ``config.json``) describes exactly ``model``.

    Same weights (by checksum as loaded, and unchanged since, see
    :func:`loaded_weights_sha256`) and the same model configuration; a configuration saved
    before a field existed is compared with that field at its default.
    """
    if config.get("weights_sha256") != loaded_weights_sha256(model):
        return False
    return artifact_config_matches(config, model)


def artifact_config_matches(config: dict[str, Any], model: Embedder | EnsembleEmbedder) -> bool:
    """Whether the artifact ``config``'s model section equals ``model.config`` (weights aside).

    A configuration saved before a field existed is compared with that field at its default.
    """
    try:
        saved = type(model.config).model_validate(config.get("model"))
    except ValueError:
        return False
    return saved.model_dump(mode="json") == model.config.model_dump(mode="json")
