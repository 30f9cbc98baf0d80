"""Batched inference: images in, L2-normalised float32 numpy embeddings out."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from openrecog.data.images import ImageInput, load_image
from openrecog.data.transforms import build_eval_transform
from openrecog.models.embedder import Embedder, resolve_preprocessing
from openrecog.models.onnx_engine import (
    CPU_PROVIDER,
    CUDA_PROVIDER,
    OnnxEngine,
    OnnxUnavailableError,
    artifact_onnx_path,
    default_providers,
)


class _TransformedDataset(Dataset):
    def __init__(self, base: Dataset, transform) -> None:
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> torch.Tensor:
        image, _ = self.base[index]
        return self.transform(image)


ENGINES: tuple[str, ...] = ("auto", "torch", "onnx", "onnx-int8")
"""Values of ``ImageEncoder(engine=...)``."""


class ImageEncoder:
    """Wraps an :class:`Embedder` with its preprocessing for inference.

    The forward pass runs either in PyTorch or, for a model loaded from an artifact folder
    exported with ``openrecog export MODEL OUT --onnx``, in onnxruntime on that folder's
    ``model.onnx``; both take the same preprocessed batch and give the same embeddings (to
    about 1e-6, checked at export).

    Args:
        model: the embedding model (switched to eval mode).
        batch_size: images per forward pass.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        engine: ``"auto"``: onnxruntime when the model comes unchanged from an artifact with
            a ``model.onnx`` and onnxruntime imports (on a GPU only if onnxruntime has its
            CUDA provider), else PyTorch; ``"torch"``; ``"onnx"``: the artifact's
            ``model.onnx``; ``"onnx-int8"``: its ``model.int8.onnx``.
        threads: onnxruntime intra-op threads (default: one per physical core).
        spinning: whether onnxruntime's idle threads spin-wait (off for a server running
            several requests at once, see :func:`~openrecog.models.onnx_engine.create_session`).

    Attributes:
        engine_name: what runs the model: ``"torch"``, ``"onnxruntime"`` or
            ``"onnxruntime-int8"``.
        onnx_engine: the :class:`~openrecog.models.onnx_engine.OnnxEngine`, or None.

    Raises:
        ValueError: unknown ``engine``; ``"onnx"``/``"onnx-int8"`` for a model without that
            ONNX file (or changed since loading), or ``device="cuda"`` without onnxruntime's
            CUDA provider.
        ArtifactError: the artifact's ONNX file does not match its recorded checksum (also
            with ``"auto"``: a tampered file is reported, not skipped).
    """

    def __init__(
        self,
        model: Embedder,
        batch_size: int = 32,
        device: str = "auto",
        engine: str = "auto",
        threads: int | None = None,
        spinning: bool = True,
    ) -> None:
        if engine not in ENGINES:
            raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
        requested = device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.batch_size = batch_size
        pre = resolve_preprocessing(model.config)
        self.preprocessing = pre
        self.transform = build_eval_transform(pre["image_size"], pre["mean"], pre["std"])
        # JPEGs decode at reduced scale down to twice the input size: the antialiased resize
        # still has twice the pixels it keeps (no visible change to the embeddings, see
        # tests/test_images.py), and large photos decode many times faster.
        self.decode_min_side = 2 * pre["image_size"]
        self.onnx_engine: OnnxEngine | None = None
        if engine != "torch":
            self.onnx_engine = self._onnx_engine(model, engine, requested, threads, spinning)
        if self.onnx_engine is None:
            self.model = model.to(self.device).eval()
            self.engine_name = "torch"
        else:
            # The PyTorch model stays where it is: onnxruntime has its own copy of the weights.
            self.model = model.eval()
            self.engine_name = "onnxruntime-int8" if engine == "onnx-int8" else "onnxruntime"
            on_gpu = self.onnx_engine.providers[0] == CUDA_PROVIDER
            self.device = torch.device("cuda" if on_gpu else "cpu")

    def _onnx_engine(
        self, model: Embedder, engine: str, device: str, threads: int | None, spinning: bool
    ) -> OnnxEngine | None:
        """The onnxruntime engine for ``engine``, or None where ``"auto"`` means PyTorch."""
        variant = "int8" if engine == "onnx-int8" else "fp32"
        try:
            path = artifact_onnx_path(model, variant)
            providers = default_providers()
        except OnnxUnavailableError as exc:
            if engine == "auto":
                return None
            raise ValueError(f"engine={engine!r} is not available: {exc}") from exc
        has_cuda = CUDA_PROVIDER in providers
        if self.device.type == "cuda" and not has_cuda:
            if engine == "auto":
                return None  # PyTorch on the GPU beats onnxruntime on the CPU
            if device != "auto":
                raise ValueError(
                    f"engine={engine!r} on device={device!r}: this onnxruntime has no CUDA "
                    "provider; use engine='torch' or device='cpu'"
                )
        if self.device.type == "cpu":
            providers = [CPU_PROVIDER]
        return OnnxEngine(path, providers=providers, threads=threads, spinning=spinning)

    @property
    def embedding_dim(self) -> int:
        """Length of the embeddings."""
        return self.model.embedding_dim

    @torch.inference_mode()
    def encode_tensors(self, batch: torch.Tensor) -> np.ndarray:
        """Embed an already preprocessed batch ``(B, 3, H, W)`` → ``(B, D)`` float32."""
        if self.onnx_engine is not None:
            return self.onnx_engine.run(batch.detach().cpu().float().numpy())
        return self.model(batch.to(self.device)).float().cpu().numpy()

    def load(self, image: ImageInput) -> Image.Image:
        """Decode one input as this encoder needs it (see :func:`load_image`, ``min_side``).

        Raises:
            ImageLoadError: if ``image`` is not a usable image.
        """
        return load_image(image, min_side=self.decode_min_side)

    def encode(self, images: Sequence[ImageInput], progress: bool = False) -> np.ndarray:
        """Embed images given as paths, bytes or PIL images → ``(N, D)`` float32.

        Raises:
            ImageLoadError: if any input is not a usable image (nothing is returned then).
        """
        out = np.zeros((len(images), self.embedding_dim), dtype=np.float32)
        starts = range(0, len(images), self.batch_size)
        for start in tqdm(starts, desc="embedding", disable=not progress, unit="batch"):
            chunk = images[start : start + self.batch_size]
            batch = torch.stack([self.transform(self.load(item)) for item in chunk])
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
