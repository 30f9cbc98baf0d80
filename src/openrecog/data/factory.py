"""Build the datasets a config names (folder, labels.csv or synthetic documents)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from openrecog.config import DataConfig, EvalConfig
from openrecog.data.datasets import (
    ConcatClassDataset,
    DatasetError,
    ImageListDataset,
    csv_dataset,
    dataset_from_items,
    folder_dataset,
)
from openrecog.data.images import list_image_files

if TYPE_CHECKING:
    from openrecog.data.synthetic_views import SyntheticTemplateViews


def build_train_dataset(
    cfg: DataConfig, image_size: int
) -> ImageListDataset | SyntheticTemplateViews | ConcatClassDataset:
    """The training dataset of ``cfg`` (before augmentation), with ``extra_folders`` added."""
    main = _build_main_train_dataset(cfg, image_size)
    if not cfg.extra_folders:
        return main
    return ConcatClassDataset([main, *(instance_folder(f) for f in cfg.extra_folders)])


def instance_folder(root: str) -> ImageListDataset:
    """Every image under ``root`` (recursively) as its own class, named by relative path."""
    folder = Path(root)
    if not folder.is_dir():
        raise DatasetError(f"{root}: extra training folder not found")
    paths = list_image_files(folder)
    if not paths:
        raise DatasetError(f"{root}: no image files in extra training folder")
    items = [(p, p.relative_to(folder).as_posix()) for p in paths]
    # Paths are unique, so the class-per-label build gives each image its own class.
    return dataset_from_items(items, check=True, where=root)


def _build_main_train_dataset(
    cfg: DataConfig, image_size: int
) -> ImageListDataset | SyntheticTemplateViews:
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
    if cfg.max_images_per_class is not None:
        # A fixed seed: every run (and every seed of an ablation) trains on the same images.
        dataset = dataset.limit_images_per_class(cfg.max_images_per_class, seed=0)
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
