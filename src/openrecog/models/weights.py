"""Reading local weight files without executing pickled code."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a ``.safetensors`` file, or a ``.pth``/``.pt``/``.bin`` with ``weights_only=True``.

    A checkpoint that wraps the weights (``{"state_dict": ...}`` or ``{"model": ...}``) is
    unwrapped.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a readable state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            state: object = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # both loaders raise many different types for bad files
        raise ValueError(f"{path}: not a readable weight file ({exc})") from exc
    for wrapper in ("state_dict", "model", "backbone"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: does not contain a state dict of tensors")
    return state


def load_backbone_checkpoint(backbone: nn.Module, path: str | Path) -> None:
    """Load backbone weights from a local file, ignoring a classifier head if present."""
    state = read_state_dict(path)
    state = {k.removeprefix("backbone."): v for k, v in state.items()}
    own = backbone.state_dict()
    state = {k: v for k, v in state.items() if k in own or not _is_head_key(k)}
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    if unexpected or missing:
        raise ValueError(
            f"{path}: does not fit backbone ({len(missing)} missing keys, e.g. {missing[:3]}; "
            f"{len(unexpected)} unexpected, e.g. {unexpected[:3]})"
        )


def _is_head_key(key: str) -> bool:
    return key.split(".")[0] in {"classifier", "fc", "head", "last_linear"}
