"""Data: image reading, datasets, samplers, augmentation, synthetic documents."""

from openrecog.data.datasets import (
    AugmentedDataset,
    DatasetError,
    ImageListDataset,
    csv_dataset,
    folder_dataset,
)
from openrecog.data.images import ImageLoadError, load_image
from openrecog.data.samplers import ClassBalancedBatchSampler

__all__ = [
    "AugmentedDataset",
    "ClassBalancedBatchSampler",
    "DatasetError",
    "ImageListDataset",
    "ImageLoadError",
    "csv_dataset",
    "folder_dataset",
    "load_image",
]
