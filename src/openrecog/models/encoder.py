"""Batched inference: images in, L2-normalised float32 numpy embeddings out."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from openrecog.data.images import ImageInput, load_image
from openrecog.data.transforms import build_eval_transform
from openrecog.models.embedder import Embedder, resolve_preprocessing


class _TransformedDataset(Dataset):
    def __init__(self, base: Dataset, transform) -> None:
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> torch.Tensor:
        image, _ = self.base[index]
        return self.transform(image)


class ImageEncoder:
    """Wraps an :class:`Embedder` with its preprocessing for inference.

    Args:
        model: the embedding model (switched to eval mode).
        batch_size: images per forward pass.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
    """

    def __init__(self, model: Embedder, batch_size: int = 32, device: str = "auto") -> None:
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.batch_size = batch_size
        pre = resolve_preprocessing(model.config)
        self.preprocessing = pre
        self.transform = build_eval_transform(pre["image_size"], pre["mean"], pre["std"])

    @property
    def embedding_dim(self) -> int:
        """Length of the embeddings."""
        return self.model.embedding_dim

    @torch.inference_mode()
    def encode_tensors(self, batch: torch.Tensor) -> np.ndarray:
        """Embed an already preprocessed batch ``(B, 3, H, W)``."""
        return self.model(batch.to(self.device)).float().cpu().numpy()

    def encode(self, images: Sequence[ImageInput], progress: bool = False) -> np.ndarray:
        """Embed images given as paths, bytes or PIL images → ``(N, D)`` float32.

        Raises:
            ImageLoadError: if any input is not a usable image (nothing is returned then).
        """
        out = np.zeros((len(images), self.embedding_dim), dtype=np.float32)
        starts = range(0, len(images), self.batch_size)
        for start in tqdm(starts, desc="embedding", disable=not progress, unit="batch"):
            chunk = images[start : start + self.batch_size]
            batch = torch.stack([self.transform(load_image(item)) for item in chunk])
            out[start : start + len(chunk)] = self.encode_tensors(batch)
        return out

    def encode_dataset(
        self, dataset: Dataset, progress: bool = False, num_workers: int = 0
    ) -> np.ndarray:
        """Embed every item of a dataset yielding ``(PIL image, label)``."""
        loader = DataLoader(
            _TransformedDataset(dataset, self.transform),
            batch_size=self.batch_size,
            num_workers=num_workers,
        )
        chunks: list[np.ndarray] = []
        batches: Iterable[torch.Tensor] = tqdm(
            loader, desc="embedding", disable=not progress, unit="batch"
        )
        for batch in batches:
            chunks.append(self.encode_tensors(batch))
        return np.concatenate(chunks) if chunks else np.zeros((0, self.embedding_dim), np.float32)
