"""Build the datasets a config names (folder, labels.csv or synthetic documents)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from openrecog.config import DataConfig, EvalConfig
from openrecog.data.datasets import DatasetError, ImageListDataset, csv_dataset, folder_dataset

if TYPE_CHECKING:
    from openrecog.data.synthetic_views import SyntheticTemplateViews


def build_train_dataset(
    cfg: DataConfig, image_size: int
) -> ImageListDataset | SyntheticTemplateViews:
    """The training dataset of ``cfg`` (before augmentation)."""
    if cfg.source == "synthetic":
        from openrecog.data.synthetic_views import SyntheticTemplateViews

        return SyntheticTemplateViews(
            cfg.synthetic_classes, cfg.synthetic_images_per_class, cfg.synthetic_seed, image_size
        )
    dataset = _load(cfg.source, cfg.root, cfg.split)
    if cfg.min_images_per_class > 1:
        dataset = dataset.filter_min_images(cfg.min_images_per_class)
        if dataset.num_classes < 2:
            raise DatasetError(
                f"{cfg.root}: fewer than 2 classes have >= {cfg.min_images_per_class} images"
            )
    if cfg.instance_as_class:
        dataset = dataset.instance_as_class()
    return dataset


def build_eval_dataset(
    cfg: EvalConfig, image_size: int
) -> ImageListDataset | SyntheticTemplateViews | None:
    """The class-disjoint evaluation dataset of ``cfg``, or None if evaluation is off."""
    if cfg.source == "none":
        return None
    if cfg.source == "synthetic":
        from openrecog.data.synthetic_views import SyntheticTemplateViews

        # Held-out templates: indices far from any training template index.
        return SyntheticTemplateViews(
            cfg.synthetic_classes,
            cfg.synthetic_images_per_class,
            cfg.synthetic_seed,
            image_size,
            start_index=1_000_000,
        )
    return _load(cfg.source, cfg.root, cfg.split)


def _load(source: str, root: str | None, split: str | None) -> ImageListDataset:
    if not root:
        raise DatasetError(f"data source {source!r} needs a root folder (set data.root=PATH)")
    if source == "csv":
        return csv_dataset(root, split=split)
    return folder_dataset(root)
