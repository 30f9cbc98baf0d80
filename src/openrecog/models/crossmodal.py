"""Two-tower image–text models: the project's image embedder and a sentence encoder.

Both towers end in a projection to a shared ``joint_dim``-d space and L2 normalisation, so
that ``cos(image, text)`` ranks captions for images and images for captions (ALBEF's ITC
space). The image side is stored as an ordinary image-model artifact: its projection is
bias-free and is folded into the :class:`~openrecog.models.embedder.Embedder`'s linear
``pca`` step, so a gallery registered with it holds joint-space embeddings, runs on
onnxruntime like any model, and answers text queries with the same index. The text side
(:class:`TextEncoder`: tower, projection and the optional image–text matching head) is
stored next to it.

A trained model is a folder::

    image/            image-model artifact (config.json + weights.safetensors [+ model.onnx])
    text.json         text model name, dims, checksums, the image artifact it belongs to
    text.safetensors  text projection, temperature, ITM head
    text_tower/       the fine-tuned sentence encoder (only when the text tower was trained)
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from openrecog.models.artifact import (
    ArtifactError,
    load_artifact,
    read_artifact_config,
    save_artifact,
)
from openrecog.models.embedder import Embedder
from openrecog.models.text import TextTower, build_text_tower
from openrecog.storage import replace_dir, sha256_file

IMAGE_DIR = "image"
TEXT_CONFIG = "text.json"
TEXT_WEIGHTS = "text.safetensors"
TEXT_TOWER_DIR = "text_tower"
FORMAT = "openrecog-text-encoder"


class ITMHead(nn.Module):
    """Image–text matching: is this caption the one of this image? (2 logits).

    ALBEF's ITM runs on a multimodal cross-attention encoder; here, to stay cheap on CPU, a
    small MLP over the pair's joint features ``[i, t, i·t, |i − t|]`` scores it, trained with
    in-batch hard negatives and used to re-rank the top-k of the contrastive search.
    """

    def __init__(self, dim: int, hidden: int = 256) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(4 * dim, hidden), nn.GELU(), nn.Linear(hidden, 2))

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, 2)`` (index 1: matched) of the pairs ``(image[b], text[b])``."""
        return self.mlp(torch.cat([image, text, image * text, (image - text).abs()], dim=-1))

    def match_probability(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """``P(matched)`` of each pair, ``(B,)``."""
        return F.softmax(self.forward(image, text), dim=-1)[:, 1]


class ImageTower(nn.Module):
    """An image embedder followed by a bias-free projection to the joint space."""

    def __init__(self, embedder: Embedder, joint_dim: int) -> None:
        super().__init__()
        if embedder.pca is not None:
            raise ValueError(
                "the image model already ends in a PCA projection; start cross-modal "
                "training from its model without it (e.g. 'default', not 'default_64')"
            )
        self.embedder = embedder
        self.proj = nn.Linear(embedder.embedding_dim, joint_dim, bias=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Joint-space embeddings ``(B, joint_dim)``, L2-normalised."""
        return F.normalize(self.proj(self.embedder(images)), dim=-1)

    def to_embedder(self) -> Embedder:
        """One :class:`Embedder` computing :meth:`forward`: the projection as its ``pca``."""
        config = self.embedder.config.model_copy(update={"pca_dim": self.proj.out_features})
        folded = Embedder(config, load_pretrained=False)
        missing, unexpected = folded.load_state_dict(self.embedder.state_dict(), strict=False)
        if unexpected or any(not key.startswith("pca.") for key in missing):
            raise RuntimeError(f"cannot fold the projection: {missing} {unexpected}")
        assert folded.pca is not None
        with torch.no_grad():
            folded.pca.mean.zero_()  # the embedder's output is unit-norm already
            folded.pca.components.copy_(self.proj.weight.detach())
        return folded.eval()


class TextEncoder(nn.Module):
    """The text side: sentence encoder → projection → L2 norm, plus the ITM head.

    Args:
        tower: the sentence encoder.
        joint_dim: size of the joint space.
        temperature: initial contrastive temperature (ALBEF: 0.07).
        itm: add an image–text matching head.
    """

    def __init__(
        self, tower: TextTower, joint_dim: int, temperature: float = 0.07, itm: bool = False
    ) -> None:
        super().__init__()
        self.tower = tower
        self.proj = nn.Linear(tower.dim, joint_dim)
        self.temperature = nn.Parameter(torch.tensor(float(temperature)))
        self.itm = ITMHead(joint_dim) if itm else None
        self.joint_dim = joint_dim
        self.image_artifact_sha256: str | None = None

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        """Joint-space embeddings ``(B, joint_dim)`` of ``texts``, L2-normalised."""
        return F.normalize(self.proj(self.tower(texts)), dim=-1)

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Embed many texts for search (eval mode, no gradients) → ``(N, joint_dim)``."""
        was_training = self.training
        self.eval()
        try:
            chunks = [self(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
        finally:
            self.train(was_training)
        return torch.cat(chunks).float().cpu()


def save_crossmodal(
    path: str | Path,
    image: ImageTower,
    text: TextEncoder,
    text_trained: bool,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write a trained two-tower model to the folder ``path`` (atomically, replacing it).

    Args:
        path: the folder.
        image: the image tower (saved as an image-model artifact with the projection folded).
        text: the text side.
        text_trained: store the sentence encoder's weights too (it was fine-tuned); else the
            folder names it (``text.tower.name``) and loads it from there.
        metadata: free JSON-able data (training summary, ...).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        save_artifact(image.to_embedder(), tmp / IMAGE_DIR, metadata={"crossmodal": True})
        image_sha = read_artifact_config(tmp / IMAGE_DIR)["weights_sha256"]
        state = {"proj.weight": text.proj.weight, "proj.bias": text.proj.bias}
        state["temperature"] = text.temperature.detach().reshape(1)
        if text.itm is not None:
            state.update({f"itm.{k}": v for k, v in text.itm.state_dict().items()})
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp / TEXT_WEIGHTS)
        )
        tower = text.tower.name
        if text_trained:
            text.tower.save(tmp / TEXT_TOWER_DIR)
            tower = TEXT_TOWER_DIR
        config = {
            "format": FORMAT,
            "text_model": tower,
            "max_length": text.tower.max_length,
            "joint_dim": text.joint_dim,
            "itm": text.itm is not None,
            "image_artifact_sha256": image_sha,
            "weights_sha256": sha256_file(tmp / TEXT_WEIGHTS),
            "metadata": metadata or {},
        }
        (tmp / TEXT_CONFIG).write_text(json.dumps(config, indent=2), encoding="utf-8")
        replace_dir(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def is_crossmodal_dir(path: str | Path) -> bool:
    """Whether ``path`` is a folder written by :func:`save_crossmodal`."""
    return (Path(path) / TEXT_CONFIG).is_file()


def load_text_encoder(path: str | Path) -> TextEncoder:
    """The text side of a two-tower folder, checksums verified, in eval mode.

    ``image_artifact_sha256`` on the result names the image model it was trained with.

    Raises:
        ArtifactError: missing or tampered files, or not a two-tower folder.
    """
    path = Path(path)
    config_file = path / TEXT_CONFIG
    if not config_file.is_file():
        raise ArtifactError(f"{path}: not a cross-modal model folder (no {TEXT_CONFIG})")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{config_file}: unreadable ({exc})") from exc
    if config.get("format") != FORMAT:
        raise ArtifactError(f"{config_file}: not an {FORMAT} configuration")
    weights = path / TEXT_WEIGHTS
    if not weights.is_file() or sha256_file(weights) != config.get("weights_sha256"):
        raise ArtifactError(f"{weights}: missing, or checksum mismatch (file changed)")
    tower_name = config["text_model"]
    folder = path / TEXT_TOWER_DIR if tower_name == TEXT_TOWER_DIR else None
    tower = build_text_tower(tower_name, int(config.get("max_length", 64)), folder=folder)
    encoder = TextEncoder(tower, int(config["joint_dim"]), itm=bool(config.get("itm")))
    state = load_file(str(weights))
    encoder.proj.load_state_dict({"weight": state["proj.weight"], "bias": state["proj.bias"]})
    with torch.no_grad():
        encoder.temperature.copy_(state["temperature"].reshape(()))
    if encoder.itm is not None:
        encoder.itm.load_state_dict(
            {k.removeprefix("itm."): v for k, v in state.items() if k.startswith("itm.")}
        )
    encoder.image_artifact_sha256 = config.get("image_artifact_sha256")
    return encoder.eval()


def load_image_side(path: str | Path) -> Embedder:
    """The image model of a two-tower folder (an ordinary image-model artifact)."""
    model = load_artifact(Path(path) / IMAGE_DIR)
    if not isinstance(model, Embedder):
        raise ArtifactError(f"{path}: its image model is not a single embedder")
    return model


def rank_captions(
    image_embeddings: torch.Tensor | Any,
    captions: Sequence[str],
    text_encoder: TextEncoder,
    k: int = 5,
) -> list[list[tuple[str, float]]]:
    """Image→text retrieval over a caption set: the ``k`` best captions for each image.

    Args:
        image_embeddings: ``(N, joint_dim)`` embeddings from the run's image side
            (:func:`load_image_side`, e.g. through an ``ImageEncoder`` or a gallery).
        captions: the candidate captions.
        text_encoder: the run's text side.
        k: captions per image.

    Returns:
        For each image, ``(caption, cosine)`` pairs, best first.

    Raises:
        ValueError: no captions, or embeddings of another size than the joint space.
    """
    if not captions:
        raise ValueError("no captions to rank")
    images = torch.as_tensor(image_embeddings, dtype=torch.float32)
    if images.ndim != 2 or images.shape[1] != text_encoder.joint_dim:
        raise ValueError(
            f"image embeddings of shape {tuple(images.shape)} are not in this text model's "
            f"{text_encoder.joint_dim}-d joint space (use the image side of the same run)"
        )
    texts = text_encoder.encode(list(captions))
    scores = images @ texts.T
    top = scores.topk(min(k, len(captions)), dim=1)
    return [
        [(captions[j], float(v)) for v, j in zip(values.tolist(), indices.tolist(), strict=True)]
        for values, indices in zip(top.values, top.indices, strict=True)
    ]
