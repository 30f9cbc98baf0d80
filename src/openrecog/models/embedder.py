"""The embedding contract: RGB image batch → L2-normalised float32 vectors."""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from openrecog.config import ModelConfig, format_validation_error

# Registers the cp2_* backbones with timm, so timm.create_model and get_pretrained_cfg know them.
from openrecog.models import cp2 as _cp2  # noqa: F401
from openrecog.models.budget import check_param_budget, count_parameters
from openrecog.models.necks import Neck
from openrecog.models.pca import PCAProjection
from openrecog.models.pretrained import has_offline_weights, load_offline_pretrained
from openrecog.models.taps import MultiLevelPool
from openrecog.models.tta import check_tta_mode, tta_views
from openrecog.models.weights import load_backbone_checkpoint


class Embedder(nn.Module):
    """``backbone.forward_features`` → :class:`Neck` → L2 normalisation.

    ``config.tta`` (test-time augmentation) changes :meth:`forward` only; the training
    entry points (:meth:`forward_features`, :meth:`forward_head`,
    :meth:`forward_unnormalized`) always see the batch as given.

    Attributes:
        config: the :class:`ModelConfig` the module was built from.
        embedding_dim: length of the output vectors.
    """

    def __init__(self, config: ModelConfig, load_pretrained: bool = True) -> None:
        super().__init__()
        self.config = config
        try:
            self.backbone = timm.create_model(
                config.backbone,
                pretrained=False,
                num_classes=0,
                global_pool="",
                **config.backbone_kwargs,
            )
        except RuntimeError as exc:  # timm raises RuntimeError for unknown names
            raise ValueError(f"unknown timm backbone {config.backbone!r}: {exc}") from exc
        except TypeError as exc:  # an argument the architecture does not take
            raise ValueError(
                f"model.backbone_kwargs {config.backbone_kwargs} do not fit {config.backbone!r}: "
                f"{exc}"
            ) from exc
        if load_pretrained:
            if config.checkpoint:
                load_backbone_checkpoint(self.backbone, config.checkpoint)
            elif config.pretrained:
                if not has_offline_weights(config.backbone):
                    raise ValueError(
                        f"no offline pretrained weights for {config.backbone!r}; set "
                        "model.pretrained=false (random init) or model.checkpoint=PATH"
                    )
                load_offline_pretrained(self.backbone, config.backbone)
        self.taps: MultiLevelPool | None = None
        if config.taps:
            self.taps = MultiLevelPool(
                config.taps, config.tap_gate, last_channels=self.backbone.num_features
            )
        channels, feature_size = self._probe_features(config.image_size)
        self.neck = Neck(
            config.neck,
            channels,
            feature_size,
            config.embedding_dim,
            norm=config.norm,
            dropout=config.dropout,
            squeeze_channels=config.squeeze_channels,
            projection=config.projection,
            hidden_dim=config.hidden_dim,
        )
        self.pca: PCAProjection | None = None
        if config.pca_dim is not None:
            self.pca = PCAProjection(self.neck.out_dim, config.pca_dim)
        self.embedding_dim = self.pca.out_dim if self.pca is not None else self.neck.out_dim
        check_param_budget(
            count_parameters(self), config.max_params, f"model {config.backbone} + {config.neck}"
        )

    @torch.no_grad()
    def _probe_features(self, image_size: int) -> tuple[int, tuple[int, int]]:
        """Run a dummy image through the backbone to learn its feature-map shape."""
        was_training = self.backbone.training
        self.backbone.eval()
        dummy = torch.zeros(1, 3, image_size, image_size)
        try:
            features = self.forward_features(dummy)
        except (AttributeError, AssertionError, IndexError, NotImplementedError) as exc:
            if self.taps is None:
                raise
            raise ValueError(
                f"model.taps at feature indices {self.taps.indices} do not fit "
                f"{self.config.backbone!r} (it needs timm's forward_intermediates and that "
                f"many feature levels): {exc}"
            ) from exc
        self.backbone.train(was_training)
        return features.shape[1], (features.shape[2], features.shape[3])

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Backbone feature map ``(B, C, H, W)``; ``(B, D, 1, 1)`` joined vectors with taps."""
        if self.taps is None:
            return self.backbone.forward_features(images)
        return self.taps.join(self.forward_tap_parts(images))[:, :, None, None]

    def forward_tap_parts(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The taps' parts before any weight or gate, widths :meth:`tap_part_widths`.

        The last map's L2-normalised GAP, then each tap's L2-normalised grid cells, in
        network order; what the tap gate and the neck's PCA start are fitted on.
        """
        taps = self._require_taps()
        last, inner = self.backbone.forward_intermediates(images, indices=taps.indices)
        return taps.pooled_parts(last, inner)

    def tap_part_widths(self) -> list[int]:
        """Widths of the parts of :meth:`forward_tap_parts`: ``C_last``, then ``C_i · grid_i²``."""
        taps = self._require_taps()
        info = self.backbone.feature_info
        cells = [
            info[index]["num_chs"] * grid**2
            for index, grid in zip(taps.indices, taps.grids, strict=True)
        ]
        return [self.backbone.num_features, *cells]

    def _require_taps(self) -> MultiLevelPool:
        if self.taps is None:
            raise ValueError("this model has no model.taps")
        return self.taps

    def forward_unnormalized(self, images: torch.Tensor) -> torch.Tensor:
        """Embedding before L2 normalisation (what margin heads normalise themselves)."""
        return self.forward_head(self.forward_features(images))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Feature map → unnormalised embedding (neck, then PCA if the model has one)."""
        embeddings = self.neck(features)
        return self.pca(embeddings) if self.pca is not None else embeddings

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised float32 embeddings ``(B, embedding_dim)``.

        With ``config.tta`` set, every view of :func:`~openrecog.models.tta.tta_views` goes
        through the backbone in one batch; the views' L2-normalised neck outputs are
        averaged, then projected by the PCA (if any) and L2-normalised.
        """
        mode = self.config.tta
        if mode == "none":
            return F.normalize(self.forward_unnormalized(images).float(), dim=-1)
        views = tta_views(images, mode)
        # Normalise per view before averaging so no view outweighs the others by its norm;
        # the PCA maps one embedding per image, so it comes after the average.
        embeddings = F.normalize(self.neck(self.forward_features(views)).float(), dim=-1)
        embeddings = embeddings.view(-1, images.shape[0], embeddings.shape[-1]).mean(dim=0)
        if self.pca is not None:
            embeddings = self.pca(embeddings)
        return F.normalize(embeddings, dim=-1)

    def set_tta(self, mode: str) -> Embedder:
        """Use test-time augmentation ``mode`` from now on (recorded in ``config``); returns self.

        Raises:
            ValueError: ``mode`` is not one of ``none | flip | crops | flip_crops``.
        """
        self.config = self.config.model_copy(update={"tta": check_tta_mode(mode)})
        return self

    def set_image_size(self, size: int) -> Embedder:
        """Run at ``size`` × ``size`` pixels from now on (recorded in ``config``); returns self.

        A pooling neck sees any feature-map size, so a model trained at one resolution can
        run at another without retraining; CNNs trained with random-resized crops often do
        better a little above their training size (Touvron et al., "Fixing the train-test
        resolution discrepancy", 2019). Measure it on your data: bench/quality.py rows
        ``MODEL@SIZE``.

        Raises:
            ValueError: the neck is not ``gap`` (flatten/squeeze necks fix the feature-map
                size), or ``size`` is outside the configuration's bounds.
        """
        if self.config.neck != "gap":
            raise ValueError(
                f"model.neck={self.config.neck} flattens a fixed {self.config.image_size}-px "
                "feature map; only a gap neck can run at another image size"
            )
        try:
            config = type(self.config).model_validate(
                {**self.config.model_dump(), "image_size": size}
            )
        except ValidationError as exc:
            raise ValueError(f"image size {size}: {format_validation_error(exc)}") from exc
        self.config = config
        return self


def resolve_preprocessing(config: ModelConfig) -> dict:
    """Mean/std/size for ``config``: explicit values win, else the timm default of the backbone."""
    mean, std = config.mean, config.std
    if mean is None or std is None:
        cfg = timm.get_pretrained_cfg(config.backbone)
        default_mean = tuple(cfg.mean) if cfg is not None else (0.485, 0.456, 0.406)
        default_std = tuple(cfg.std) if cfg is not None else (0.229, 0.224, 0.225)
        mean = mean or default_mean
        std = std or default_std
    return {"image_size": config.image_size, "mean": list(mean), "std": list(std)}
