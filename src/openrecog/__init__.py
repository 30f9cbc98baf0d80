"""openrecog: open-set visual recognition by metric learning.

>>> import openrecog as orc
>>> model = orc.load_model("lite0_squeeze")       # doctest: +SKIP
>>> gallery = orc.Gallery(model)                  # doctest: +SKIP
"""

from openrecog.config import ConfigError, ExperimentConfig, ModelConfig, load_config
from openrecog.gallery import UNKNOWN, Gallery, GalleryError, Hit
from openrecog.models import create_model, list_models, load_model, save_artifact

__version__ = "0.1.0"

__all__ = [
    "UNKNOWN",
    "ConfigError",
    "ExperimentConfig",
    "Gallery",
    "GalleryError",
    "Hit",
    "ModelConfig",
    "create_model",
    "list_models",
    "load_config",
    "load_model",
    "save_artifact",
]
