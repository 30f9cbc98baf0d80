"""Embedding models: timm backbones + necks, artifacts, registry."""

from openrecog.models.artifact import ArtifactError, load_artifact, save_artifact
from openrecog.models.embedder import Embedder, resolve_preprocessing
from openrecog.models.ensemble import EnsembleEmbedder, fit_ensemble
from openrecog.models.necks import NECKS, NORMS, PROJECTIONS, Neck, create_norm, create_projection
from openrecog.models.registry import (
    create_model,
    create_model_from_trained,
    get_model_config,
    list_models,
    list_shipped_models,
    load_model,
    register_model_config,
)
from openrecog.models.tta import TTA_MODES, tta_views

__all__ = [
    "NECKS",
    "NORMS",
    "PROJECTIONS",
    "TTA_MODES",
    "ArtifactError",
    "Embedder",
    "EnsembleEmbedder",
    "Neck",
    "create_model",
    "create_model_from_trained",
    "create_norm",
    "create_projection",
    "fit_ensemble",
    "get_model_config",
    "list_models",
    "list_shipped_models",
    "load_artifact",
    "load_model",
    "register_model_config",
    "resolve_preprocessing",
    "save_artifact",
    "tta_views",
]
