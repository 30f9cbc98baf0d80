"""Named model configurations (timm-style registry) and the one door :func:`load_model`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from openrecog.config import ModelConfig
from openrecog.models.artifact import ArtifactError, is_artifact, load_artifact
from openrecog.models.embedder import Embedder
from openrecog.models.ensemble import EnsembleEmbedder


@dataclass(frozen=True)
class RegisteredModel:
    """A named configuration and what it is for."""

    name: str
    config: ModelConfig
    description: str


_REGISTRY: dict[str, RegisteredModel] = {}

SHIPPED_WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"


def register_model_config(name: str, config: ModelConfig, description: str) -> None:
    """Add a named configuration; names are unique."""
    if name in _REGISTRY:
        raise ValueError(f"model config {name!r} is already registered")
    _REGISTRY[name] = RegisteredModel(name, config, description)


def list_models() -> list[RegisteredModel]:
    """All registered configurations, sorted by name."""
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def list_shipped_models() -> list[str]:
    """Names of trained artifacts shipped inside the package."""
    if not SHIPPED_WEIGHTS_DIR.is_dir():
        return []
    return sorted(p.name for p in SHIPPED_WEIGHTS_DIR.iterdir() if is_artifact(p))


def get_model_config(name: str) -> ModelConfig:
    """The registered configuration ``name`` (a copy)."""
    if name not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY))
        raise ValueError(f"unknown model config {name!r}; registered: {known}")
    return _REGISTRY[name].config.model_copy()


def create_model(
    name_or_config: str | ModelConfig, pretrained: bool = True, **overrides
) -> Embedder:
    """Build an :class:`Embedder` from a registered name or a :class:`ModelConfig`.

    ``overrides`` replace config fields (``create_model("lite0_squeeze", embedding_dim=64)``);
    ``pretrained`` loads the offline backbone weights where the config asks for them.
    """
    config = get_model_config(name_or_config) if isinstance(name_or_config, str) else name_or_config
    if overrides:
        config = ModelConfig.model_validate({**config.model_dump(), **overrides})
    return Embedder(config, load_pretrained=pretrained)


def load_model(name_or_path: str | Path) -> Embedder | EnsembleEmbedder:
    """Load a model by artifact path, shipped model name, or registered config name.

    Resolution order: an existing directory path; a trained model shipped in the package
    (``"default"``); a registered configuration (built with offline ImageNet backbone weights
    and an untrained neck). The model is returned in eval mode; an ensemble artifact gives an
    :class:`~openrecog.models.ensemble.EnsembleEmbedder`.
    """
    path = Path(name_or_path)
    if path.exists():
        return load_artifact(path)
    name = str(name_or_path)
    shipped = SHIPPED_WEIGHTS_DIR / name
    if is_artifact(shipped):
        return load_artifact(shipped)
    if name in _REGISTRY:
        return create_model(name).eval()
    raise ArtifactError(
        f"no model {name!r}: not a directory, not a shipped model "
        f"({', '.join(list_shipped_models()) or 'none shipped'}), not a registered config "
        f"({', '.join(sorted(_REGISTRY))})"
    )


# Fields that may differ from the model a run starts from: they do not change the weights.
_INIT_FROM_FREE_FIELDS = frozenset({"init_from", "dropout", "pretrained", "checkpoint"})


def create_model_from_trained(config: ModelConfig) -> Embedder:
    """A trainable copy of the model ``config.init_from`` (artifact path or shipped name).

    The architecture comes from that model; fields set explicitly in ``config`` must agree
    with it (``dropout`` may change). The returned model's ``config`` is the merged one.

    Raises:
        ValueError: ``init_from`` is unset, unknown, or conflicts with fields set here.
    """
    if not config.init_from:
        raise ValueError("model.init_from is not set")
    source = load_model(config.init_from)
    if isinstance(source, EnsembleEmbedder):
        raise ValueError(
            f"model.init_from={config.init_from!r} is an ensemble; start from one of its members"
        )
    base = source.config.model_dump()
    conflicts = [
        f"model.{key}={getattr(config, key)!r} (it has {base[key]!r})"
        for key in sorted(config.model_fields_set - _INIT_FROM_FREE_FIELDS)
        if getattr(config, key) != base[key]
    ]
    if conflicts:
        raise ValueError(
            f"model.init_from={config.init_from!r} fixes the architecture; these differ: "
            + ", ".join(conflicts)
        )
    merged = {**base, "init_from": config.init_from, "pretrained": False, "checkpoint": None}
    if "dropout" in config.model_fields_set:
        merged["dropout"] = config.dropout
    model = Embedder(ModelConfig.model_validate(merged), load_pretrained=False)
    model.load_state_dict(source.state_dict())
    return model


def _register_builtin() -> None:
    register_model_config(
        "lite0_squeeze",
        ModelConfig(backbone="tf_efficientnet_lite0", neck="squeeze", norm="ln_bn"),
        "EfficientNet-Lite0 (offline ImageNet) + squeeze neck + LN→BN, 256-d, 224 px",
    )
    register_model_config(
        "lite0_squeeze_64",
        ModelConfig(backbone="tf_efficientnet_lite0", neck="squeeze", embedding_dim=64),
        "EfficientNet-Lite0 + squeeze neck + LN→BN, 64-d (GUIE-style compact)",
    )
    register_model_config(
        "lite2_squeeze",
        ModelConfig(backbone="tf_efficientnet_lite2", neck="squeeze", image_size=260),
        "EfficientNet-Lite2 (offline ImageNet) + squeeze + LN→BN, 256-d, 260 px",
    )
    for variant in ("lite0", "lite1", "lite2"):
        register_model_config(
            f"{variant}_gap_imagenet",
            ModelConfig(
                backbone=f"tf_efficientnet_{variant}", neck="gap", norm="none", embedding_dim=None
            ),
            f"off-the-shelf baseline: ImageNet EfficientNet-{variant.title()} GAP features",
        )
    register_model_config(
        "docclassifier_lcnet050",
        ModelConfig(
            backbone="lcnet_050", pretrained=False, image_size=128, neck="squeeze", norm="ln_bn"
        ),
        "DocClassifier-like: LCNet-0.5 at 128 px, squeeze + LN→BN, 256-d (no offline weights)",
    )

    for name, what in CP2_DESCRIPTIONS.items():
        register_model_config(
            name,
            ModelConfig(
                backbone=name,
                pretrained=False,
                image_size=128,
                neck="gap",
                norm="bn",
                embedding_dim=256,
                max_params=CP2_BUDGET,
            ),
            f"CP2 compact CNN, {what}; gap + BN, 256-d, 128 px, under 5M parameters",
        )


# The CP2 report's parameter budget, and its variants as registered configs (models/cp2.py).
CP2_BUDGET = 5_000_000
CP2_DESCRIPTIONS = {
    "cp2_deep": "residual stacks in sequence, trunk dropout",
    "cp2_dropout": "cat[res1(x), res2(x)], trunk dropout",
    "cp2_concat": "cat[res1(x), res2(x)], no trunk dropout",
    "cp2_multilevel": "concat + multi-level projection head",
    "cp2_dense": "concat + multi-level head + DenseNet-like sums (the report's best)",
}

_register_builtin()
