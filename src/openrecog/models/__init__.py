"""Embedding models: timm backbones + necks, artifacts, registry."""

from openrecog.models.artifact import ArtifactError, load_artifact, save_artifact
from openrecog.models.embedder import Embedder, resolve_preprocessing
from openrecog.models.necks import NECKS, NORMS, Neck, create_norm
from openrecog.models.registry import (
    create_model,
    create_model_from_trained,
    get_model_config,
    list_models,
    list_shipped_models,
    load_model,
    register_model_config,
)

__all__ = [
    "NECKS",
    "NORMS",
    "ArtifactError",
    "Embedder",
    "Neck",
    "create_model",
    "create_model_from_trained",
    "create_norm",
    "get_model_config",
    "list_models",
    "list_shipped_models",
    "load_artifact",
    "load_model",
    "register_model_config",
    "resolve_preprocessing",
    "save_artifact",
]
