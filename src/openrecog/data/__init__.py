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
from openrecog.data.shards import (
    ShardIndex,
    ShardStream,
    build_shard_loader,
    write_shards,
    write_shards_from_source,
)

__all__ = [
    "AugmentedDataset",
    "ClassBalancedBatchSampler",
    "DatasetError",
    "ImageListDataset",
    "ImageLoadError",
    "ShardIndex",
    "ShardStream",
    "build_shard_loader",
    "csv_dataset",
    "folder_dataset",
    "load_image",
    "write_shards",
    "write_shards_from_source",
]
