"""Validated configuration: YAML files + dotted command-line overrides → pydantic models.

Unknown keys and wrong types are errors (``extra="forbid"``), reported as one line per
problem by :func:`load_config`, never as a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)


class ConfigError(ValueError):
    """A configuration file or override that cannot be used; the message says why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class FeatureTap(_Strict):
    """One inner feature map joined to the last one (multi-level features, ``model.taps``)."""

    index: int = Field(
        ge=0,
        description="timm feature index of the inner map (forward_intermediates; for "
        "EfficientNet 0-4 = strides 2, 4, 8, 16, 32)",
    )
    grid: int = Field(
        1, ge=1, le=8, description="average-pool the map to grid x grid cells (keeps layout)"
    )
    weight: float = Field(1.0, gt=0.0, description="scale of its L2-normalised pooled vector")


class TapGate(_Strict):
    """An image-dependent weight for ``model.taps`` (``model.tap_gate``).

    A fixed tap weight trades one kind of image against another: documents are told apart by
    the layout the inner map keeps, photographs by the semantics of the last map, and one
    weight cannot suit both (docs/benchmarks/feature_taps.md). The gate is a logistic
    classifier on the last map's L2-normalised GAP, fitted at the start of training to tell
    the main training images (``data.source``) from ``data.extra_folders``; with its
    probability ``p`` of the main kind, every tap's weight is multiplied by
    ``low + (high - low) * p``.
    """

    low: float = Field(gt=0.0, description="tap weight factor for images like data.extra_folders")
    high: float = Field(gt=0.0, description="tap weight factor for images like the main data")
    l2: float = Field(
        1.0, gt=0.0, description="inverse L2 strength of the fit, as scikit-learn's C"
    )


class ModelConfig(_Strict):
    """What network maps an image to an embedding, and how images are prepared for it."""

    backbone: str = "tf_efficientnet_lite0"
    backbone_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="extra timm.create_model arguments, e.g. {width: 32} for cp2_*, "
        "{channels: [32, 64, 128, 256]} for resnet18, {act_layer: gelu}",
    )
    max_params: int | None = Field(
        None, ge=1, description="parameter budget: building a larger model is an error"
    )
    pretrained: bool = Field(True, description="offline ImageNet weights where available")
    checkpoint: str | None = Field(None, description="local backbone weights (.safetensors/.pth)")
    init_from: str | None = Field(
        None,
        description="start from a trained model (artifact path or shipped name, e.g. default); "
        "its architecture is used and fields set here must agree with it",
    )
    neck: Literal["flatten", "gap", "squeeze"] = Field(
        "gap",
        description="gap: pooled features → projection (the ablation's best with ImageNet "
        "weights); squeeze: 1x1 conv to C/4, flatten; flatten: whole map (largest)",
    )
    norm: Literal["none", "bn", "ln", "ln_bn"] = "ln_bn"
    taps: list[FeatureTap] = Field(
        default_factory=list,
        description="gap neck only: inner feature maps, grid-pooled and L2-normalised, "
        "joined to the L2-normalised GAP of the last map before the projection",
    )
    tap_gate: TapGate | None = Field(
        None,
        description="scale the taps by a fitted main-data-vs-extra_folders classifier on "
        "the GAP (documents get layout, photographs semantics); needs taps",
    )
    squeeze_channels: int | None = Field(
        None, ge=1, description="channels after the squeeze neck's 1x1 conv (None: C/4)"
    )
    embedding_dim: int | None = Field(256, description="None only with neck=gap: raw features")
    pca_dim: int | None = Field(
        None, ge=2, description="reduce the embedding to this size by a fitted PCA (GUIE)"
    )
    projection: Literal["linear", "mlp", "bn_linear"] = Field(
        "linear",
        description="map from pooled features to the embedding: linear (DocClassifier), "
        "mlp = Linear→dropout→Linear (GUIE), bn_linear = BatchNorm1d(affine=False)→Linear (GUIE)",
    )
    hidden_dim: int = Field(1024, ge=16, description="width of the mlp projection's first Linear")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    tta: Literal["none", "flip", "crops", "flip_crops"] = Field(
        "none",
        description="test-time augmentation at inference: embeddings of flipped and/or "
        "zoomed-crop views averaged (training is unaffected)",
    )
    image_size: int = Field(224, ge=32, le=1024)
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None

    @field_validator("embedding_dim")
    @classmethod
    def _dim_range(cls, value: int | None) -> int | None:
        if value is not None and not 16 <= value <= 4096:
            raise ValueError("embedding_dim must be between 16 and 4096 (64-512 is typical)")
        return value

    @model_validator(mode="after")
    def _check_taps(self) -> ModelConfig:
        if self.taps and self.neck != "gap":
            raise ValueError(
                f"model.taps need model.neck=gap (the joined vectors have no spatial map to "
                f"{self.neck}); got neck={self.neck}"
            )
        if self.tap_gate is not None and not self.taps:
            raise ValueError("model.tap_gate scales the model.taps; the model has none")
        indices = [tap.index for tap in self.taps]
        if len(set(indices)) != len(indices):
            raise ValueError(f"model.taps: each feature index at most once, got {indices}")
        return self


class AugmentConfig(_Strict):
    """Training-time augmentation; each probability 0 turns that step off."""

    preset: Literal["custom", "cp2"] = Field(
        "custom",
        description="custom: the keys below; cp2: the CP2 report's list (flip, padded crop, "
        "rotation 30°, colour jitter, grayscale 0.2, affine translate 25%, perspective 0.3), "
        "which ignores the keys below",
    )
    random_resized_crop: bool = True
    scale: tuple[float, float] = (0.6, 1.0)
    ratio: tuple[float, float] = (0.75, 1.33)
    hflip: float = 0.0
    rotate_degrees: float = 5.0
    perspective: float = 0.2
    color_jitter: float = 0.3
    grayscale: float = 0.1
    blur: float = 0.2
    jpeg_quality: tuple[int, int] | None = (30, 95)
    jpeg_prob: float = 0.3
    random_erasing: float = 0.0


class DataConfig(_Strict):
    """Where training images come from and how batches are formed."""

    source: Literal["folder", "csv", "synthetic", "shards"] = "synthetic"
    root: str | None = Field(
        None,
        description="folder root, dataset folder with labels.csv, or (shards) the folder "
        "written by `openrecog shards` with index.json",
    )
    split: str = "train"
    instance_as_class: bool = Field(False, description="each image its own class (K views)")
    views_per_instance: int = Field(
        2, ge=1, description="K augmented views per image/batch (every sample, with shards)"
    )
    images_per_class: int = Field(2, ge=1, description="M for the class-balanced sampler")
    min_images_per_class: int = Field(1, ge=1)
    max_images_per_class: int | None = Field(
        None, ge=1, description="keep at most this many images per class (seeded subsample)"
    )
    class_sampling_power: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="classes are drawn with probability ∝ images^power: 0 = every class "
        "equally often (rare classes oversampled), 1 = in proportion to their images",
    )
    synthetic_classes: int = Field(2000, ge=2)
    synthetic_images_per_class: int = Field(1, ge=1)
    synthetic_seed: int = 0
    extra_folders: list[str] = Field(
        default_factory=list,
        description="image folders (searched recursively) added to the training data with "
        "every image its own class, shown as views_per_instance views",
    )
    shuffle_buffer: int = Field(
        1000, ge=1, description="shards only: samples held per worker for shuffling the stream"
    )
    num_workers: int = Field(0, ge=0)
    augment: AugmentConfig = AugmentConfig()


class LossConfig(_Strict):
    """The training head: a margin head over class centres, or (``ce``) a classifier."""

    name: Literal["cosface", "arcface", "combined", "normsoftmax", "softmax", "ce"] = Field(
        "cosface",
        description="ce: closed-set classification (cross-entropy classifier on the "
        "unnormalised embedding, top-1 accuracy in evaluation); the others: metric learning",
    )
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="ce only")
    hidden_dim: int | None = Field(
        None, ge=2, description="ce only: hidden layer of the classifier (CP2: 256)"
    )
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="ce only: classifier dropout")
    s: float | None = None
    m: float | None = None
    m1: float | None = None
    m2: float | None = None
    m3: float | None = None
    easy_margin: bool = False
    sample_rate: float = Field(1.0, gt=0.0, le=1.0, description="PartialFC negative sampling")
    margin_start: float | None = Field(
        None,
        description="dynamic margin (GUIE): start at this margin and add margin_step every "
        "margin_every steps up to the loss's m (None: fixed margin)",
    )
    margin_step: float = Field(0.05, gt=0.0)
    margin_every: int | None = Field(
        None, ge=1, description="steps between margin increases (None: once per epoch)"
    )


# distill.teacher naming the student itself, frozen as training starts.
INITIAL_TEACHER = "initial"


class DistillConfig(_Strict):
    """Feature distillation from a frozen teacher (DocClassifier's CLIP-feature recipe).

    The student's embedding goes through a trained linear projection to the teacher's
    feature size and is pulled towards the teacher's feature of the same augmented view.
    """

    teacher: str | None = Field(
        None,
        description="teacher model: registered config (lite2_gap_imagenet), artifact path, or "
        f"{INITIAL_TEACHER!r}: a frozen copy of the student as training starts (after "
        "model.init_from or the neck's PCA start), which keeps what the start retrieves well "
        "(learning without forgetting)",
    )
    kind: Literal["cosine", "mse", "kl", "relation"] = Field(
        "cosine",
        description="cosine/mse: embedding → teacher features; kl: embedding → teacher's "
        "class logits, KL of the softmaxes at `temperature` (USI; the teacher must be a "
        "classifier, e.g. tf_efficientnet_lite2 with its ImageNet head); relation: no "
        "projection, KL of each image's softmax over its in-batch cosine similarities, "
        "teacher vs student (CompRess/SEED)",
    )
    weight: float = Field(1.0, ge=0.0)
    temperature: float | None = Field(
        None,
        gt=0.0,
        description="softmax temperature T of kind=kl (default 1.0) or kind=relation (default 0.1)",
    )
    image_size: int | None = Field(
        None, ge=32, le=1024, description="teacher input size (None: the student's views as is)"
    )


class StageConfig(_Strict):
    """One stage of a staged schedule (CP2 / multi-resolution fine-tuning).

    Unset fields take the value of the ``train`` section (``image_size`` of ``model``).
    """

    steps: int = Field(..., ge=1)
    lr: float | None = Field(None, gt=0.0)
    image_size: int | None = Field(None, ge=32, le=1024)
    mixup_alpha: float | None = Field(None, ge=0.0)
    cutmix_alpha: float | None = Field(None, ge=0.0)
    warmup_steps: int | None = Field(None, ge=0)


class TrainConfig(_Strict):
    """Optimisation, precision, checkpointing and logging."""

    name: str = "run"
    output_dir: str = "runs"
    seed: int = 0
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1, description="stop after this many steps")
    batch_size: int = Field(32, ge=2)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0.0)
    head_lr: float | None = Field(None, gt=0.0, description="defaults to lr")
    weight_decay: float = Field(0.05, ge=0.0)
    momentum: float = 0.9
    warmup_steps: int = Field(0, ge=0)
    neck_init_images: int = Field(
        0,
        ge=0,
        description="gap neck only: start its Linear as the PCA of this many training images' "
        "pooled backbone features (0: random init)",
    )
    neck_init_whiten: bool = Field(
        False,
        description="scale each principal axis of the neck's PCA start to unit variance "
        "(PCA whitening, as in retrieval with pooled CNN features)",
    )
    neck_init_whiten_power: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="with neck_init_whiten: divide each axis by its standard deviation to "
        "this power (1: full whitening; 0.5 keeps some of the leading axes' weight)",
    )
    freeze_backbone_steps: int = Field(
        0, ge=0, description="train only neck and head for the first N steps (LP-FT)"
    )
    freeze_bn_stats: bool = Field(
        False,
        description="keep the backbone's BatchNorm running statistics (eval-mode BN, "
        "affine weights still trained; mmdet's norm_eval), for a pretrained backbone "
        "trained on images unlike its own (bench/bn_statistics.py)",
    )
    alternate_steps: int = Field(
        0,
        ge=0,
        description="GUIE alternating training: phases of N steps, neck+head only (frozen "
        "backbone), then backbone only (frozen neck+head) at lr × alternate_backbone_lr_scale",
    )
    alternate_backbone_lr_scale: float = Field(0.1, gt=0.0)
    layer_decay: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="layer-wise lr decay: backbone block i gets lr × decay^(depth − i)",
    )
    schedule: Literal["cosine", "onecycle"] = Field(
        "onecycle",
        description="onecycle: 30% warmup from lr/25, then cosine to lr/25/1e4 (USI; beat "
        "cosine in every ablation run); cosine: warmup_steps, then cosine to lr × min_lr_ratio",
    )
    min_lr_ratio: float = Field(0.01, ge=0.0, le=1.0)
    ema_decay: float | None = Field(
        None, gt=0.0, lt=1.0, description="keep an EMA of the weights and evaluate/save it"
    )
    mixup_alpha: float = Field(0.0, ge=0.0, description="Beta(α, α) MixUp of batches (0: off)")
    cutmix_alpha: float = Field(0.0, ge=0.0, description="Beta(α, α) CutMix of batches (0: off)")
    mix_prob: float = Field(1.0, ge=0.0, le=1.0, description="chance a batch is mixed")
    stages: list[StageConfig] = Field(
        default_factory=list,
        description="staged training: run these stages in turn (steps, lr, image size, "
        "mixup); replaces max_steps/epochs",
    )
    grad_clip: float | None = Field(5.0, gt=0.0)
    matmul_precision: Literal["highest", "high", "medium"] = "highest"
    channels_last: bool = Field(True, description="NHWC memory format (faster convs on CPU/GPU)")
    autocast: Literal["none", "bf16", "fp16"] = "none"
    checkpoint_every: int = Field(200, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(10, ge=1)
    device: str = "auto"
    threads: int | None = Field(None, ge=1)
    progress: bool = True


class EvalConfig(_Strict):
    """Evaluation during/after training on class-disjoint data."""

    source: Literal["folder", "csv", "synthetic", "none"] = "synthetic"
    root: str | None = None
    split: str = "test"
    synthetic_classes: int = Field(40, ge=2)
    synthetic_images_per_class: int = Field(4, ge=2)
    synthetic_seed: int = 1000
    every: int | None = Field(None, ge=1, description="evaluate every N steps (None: at end)")
    target_far: float = Field(1e-3, gt=0.0, lt=1.0)
    batch_size: int = Field(64, ge=1)


class ExperimentConfig(_Strict):
    """One training experiment: model, data, loss, optimisation and evaluation."""

    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    loss: LossConfig = LossConfig()
    distill: DistillConfig = DistillConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()

    @model_validator(mode="after")
    def _check_combinations(self) -> ExperimentConfig:
        stages = self.train.stages
        if stages and self.train.max_steps is not None:
            raise ValueError("train.stages fixes the number of steps; leave train.max_steps unset")
        sizes = {s.image_size for s in stages if s.image_size is not None}
        if sizes - {self.model.image_size} and self.model.neck != "gap":
            raise ValueError(
                f"stages at other image sizes need model.neck=gap (neck={self.model.neck} "
                "depends on the feature-map size)"
            )
        if self.model.projection != "linear" and self.model.embedding_dim is None:
            raise ValueError(f"model.projection={self.model.projection} needs an embedding_dim")
        classify = self.loss.name == "ce"
        ce_keys = ("label_smoothing", "hidden_dim", "dropout")
        if not classify and self.loss.model_fields_set & set(ce_keys):
            raise ValueError(f"loss.{'/'.join(ce_keys)} only apply to loss.name=ce")
        if classify and self.train.ema_decay is not None:
            # The EMA averages the Embedder only; evaluating it with the live classifier
            # would mix weights from different points of training.
            raise ValueError("train.ema_decay is not supported with loss.name=ce")
        if classify and self.data.instance_as_class:
            raise ValueError("loss.name=ce classifies the data's classes; unset instance_as_class")
        if self.train.neck_init_whiten and not self.train.neck_init_images:
            raise ValueError("train.neck_init_whiten whitens the PCA start; set neck_init_images")
        if self.model.tap_gate is not None and not self.model.init_from:
            # A fresh gate is fitted beside the neck's PCA start, on the same images.
            if not self.train.neck_init_images:
                raise ValueError(
                    "model.tap_gate is fitted on the train.neck_init_images images at the "
                    "start of training; set train.neck_init_images"
                )
            if not self.data.extra_folders:
                raise ValueError(
                    "model.tap_gate tells the main training data from data.extra_folders; "
                    "set data.extra_folders"
                )
        if self.distill.teacher == INITIAL_TEACHER:
            if self.distill.kind == "kl":
                raise ValueError(
                    "distill.teacher=initial gives embeddings, not class logits; "
                    "use kind=relation, cosine or mse"
                )
            if self.distill.image_size not in (None, self.model.image_size):
                raise ValueError(
                    "distill.teacher=initial sees the student's views; unset distill.image_size"
                )
        return self


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """Turn ``["train.epochs=3", "model.neck=gap"]`` into a nested dict (values parsed as YAML)."""
    nested: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({exc})") from exc
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r} conflicts with an earlier override")
            node = child
        node[parts[-1]] = value
    return nested


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``update`` into a copy of ``base``."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def format_validation_error(exc: ValidationError) -> str:
    """Render pydantic errors as ``key.path: message`` lines."""
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(root)"
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"{where}: {msg}")
    return "; ".join(lines)


def config_data(path: str | Path | None, overrides: list[str] | None) -> dict[str, Any]:
    """The mapping of a YAML config file (optional) with dotted overrides merged in.

    Raises:
        ConfigError: the file is missing, not YAML, or not a mapping; a bad override.
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections")
        data = loaded
    return deep_merge(data, parse_overrides(overrides or []))


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None
) -> ExperimentConfig:
    """Load an :class:`ExperimentConfig` from YAML (optional) plus dotted overrides.

    Raises:
        ConfigError: the file is missing or not YAML, or a key/value is invalid.
    """
    data = config_data(path, overrides)
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        source = f"{path}: " if path is not None else ""
        raise ConfigError(f"{source}{format_validation_error(exc)}") from exc
