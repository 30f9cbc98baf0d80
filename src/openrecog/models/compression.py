"""Compact weight storage for model artifacts: float16 and weight-only int8.

Only the *stored* weights are compressed; :func:`dequantize_state_dict` turns them back into
float32 before they are loaded, so the :class:`~openrecog.models.embedder.Embedder` always
computes in float32.

Why weight-only, per-output-channel int8: the goal is artifact *size* (a trained model that
ships in <= 5 MB), not inference speed. Conv and linear weights hold nearly all the bytes, so
only they are quantised; one symmetric scale per output channel (dim 0) follows the very
different ranges of different filters (per-tensor scales lose depthwise convolutions), and
activations are never quantised, so no calibration data is needed and every other operation
(biases, norms, activations) stays exact float32 at run time.
"""

from __future__ import annotations

import torch

WEIGHTS_DTYPES: tuple[str, ...] = ("float32", "float16", "int8")
"""Allowed values of ``weights_dtype``; ``float32`` is lossless and the default."""

INT8_SCALE_SUFFIX = ".__int8_scale__"
"""Key suffix of the float32 per-channel scale vector stored next to an int8 tensor."""

INT8_MIN_NUMEL = 1024
"""Floating tensors with ``ndim >= 2`` and at least this many elements are stored as int8."""

INT8_QMAX = 127
"""Symmetric int8 range ``[-127, 127]`` (``-128`` unused, so ``q`` and ``-q`` both fit)."""

_FP16_MAX = torch.finfo(torch.float16).max


def check_weights_dtype(dtype: str) -> str:
    """Return ``dtype`` if it is one of :data:`WEIGHTS_DTYPES`.

    Raises:
        ValueError: any other value, naming the allowed ones.
    """
    if dtype not in WEIGHTS_DTYPES:
        raise ValueError(f"unknown weights_dtype {dtype!r}; allowed: {', '.join(WEIGHTS_DTYPES)}")
    return dtype


def _is_int8_candidate(tensor: torch.Tensor) -> bool:
    return tensor.is_floating_point() and tensor.ndim >= 2 and tensor.numel() >= INT8_MIN_NUMEL


def _to_float16(tensor: torch.Tensor) -> torch.Tensor:
    # A tensor outside the float16 range (e.g. a huge BatchNorm running_var) would become inf;
    # it stays float32 instead: it costs a few bytes, and loading casts every float anyway.
    if tensor.numel() and tensor.abs().max().item() > _FP16_MAX:
        return tensor.float().contiguous()
    return tensor.half().contiguous()


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8 quantisation of ``weight`` (dim 0 = output channels).

    ``scale[c] = max|weight[c]| / 127`` (1 for an all-zero channel) and
    ``q = round(weight / scale).clamp(-127, 127)``.

    Returns:
        ``(q, scale)``: int8 tensor of ``weight``'s shape and a float32 ``[out_channels]`` vector.

    Raises:
        ValueError: ``weight`` contains NaN or infinity.
    """
    w = weight.detach().float()
    if not torch.isfinite(w).all():
        raise ValueError("cannot quantise a tensor with NaN or infinite values")
    max_abs = w.abs().reshape(w.shape[0], -1).amax(dim=1)
    scale = torch.where(max_abs > 0, max_abs / INT8_QMAX, torch.ones_like(max_abs))
    view = (-1,) + (1,) * (w.ndim - 1)
    q = torch.round(w / scale.view(view)).clamp(-INT8_QMAX, INT8_QMAX).to(torch.int8)
    return q.contiguous(), scale.contiguous()


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Float32 ``q * scale``, ``scale`` broadcast along dim 0 (inverse of :func:`quantize_int8`).

    Raises:
        ValueError: ``scale`` does not have one entry per output channel of ``q``.
    """
    if scale.ndim != 1 or q.ndim < 1 or scale.shape[0] != q.shape[0]:
        raise ValueError(
            f"int8 scale of shape {tuple(scale.shape)} does not fit a tensor of shape "
            f"{tuple(q.shape)}"
        )
    view = (-1,) + (1,) * (q.ndim - 1)
    return q.float() * scale.float().view(view)


def quantize_state_dict(state: dict[str, torch.Tensor], dtype: str) -> dict[str, torch.Tensor]:
    """Convert a float32 state dict to its stored form for ``dtype`` (a new dict, CPU tensors).

    * ``float32``: unchanged (detached, contiguous).
    * ``float16``: every floating tensor as float16.
    * ``int8``: floating tensors with ``ndim >= 2`` and ``>= INT8_MIN_NUMEL`` elements as int8
      plus ``<key>.__int8_scale__`` (float32, ``[out_channels]``); other floating tensors as
      float16.

    Integer tensors (``num_batches_tracked``) are always kept as they are.

    Raises:
        ValueError: unknown ``dtype``, a key already ending in the scale suffix, or a
            non-finite tensor to quantise.
    """
    check_weights_dtype(dtype)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        tensor = value.detach().cpu()
        if key.endswith(INT8_SCALE_SUFFIX):
            raise ValueError(f"state dict key {key!r} clashes with the int8 scale suffix")
        if dtype == "float32" or not tensor.is_floating_point():
            out[key] = tensor.contiguous()
        elif dtype == "int8" and _is_int8_candidate(tensor):
            out[key], out[key + INT8_SCALE_SUFFIX] = quantize_int8(tensor)
        else:
            out[key] = _to_float16(tensor)
    return out


def dequantize_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`quantize_state_dict`: every floating tensor back to float32.

    int8 tensors are multiplied by their ``<key>.__int8_scale__`` vector (the scale keys are
    dropped); integer tensors of other types are kept as they are.

    Raises:
        ValueError: an int8 tensor without its scale, or a scale without its int8 tensor.
    """
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if key.endswith(INT8_SCALE_SUFFIX):
            base = key[: -len(INT8_SCALE_SUFFIX)]
            if base not in state or state[base].dtype != torch.int8:
                raise ValueError(f"int8 scale {key!r} has no int8 tensor {base!r}")
            continue
        if tensor.dtype == torch.int8:
            scale = state.get(key + INT8_SCALE_SUFFIX)
            if scale is None:
                raise ValueError(f"int8 tensor {key!r} has no scale {key + INT8_SCALE_SUFFIX!r}")
            out[key] = dequantize_int8(tensor, scale)
        elif tensor.is_floating_point():
            out[key] = tensor.float()
        else:
            out[key] = tensor
    return out


@torch.no_grad()
def embedding_min_cosine(
    reference: torch.nn.Module,
    candidate: torch.nn.Module,
    image_size: int,
    num_images: int = 8,
    seed: int = 0,
) -> float:
    """Smallest cosine between two embedders' outputs on deterministic random images.

    Both models are run in eval mode (their mode is restored afterwards) on the same
    ``num_images`` standard-normal images of ``image_size`` pixels drawn from ``seed``; the
    outputs are L2-normalised here, so unnormalised models work too.
    """
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(num_images, 3, image_size, image_size, generator=generator)
    outputs = []
    for model in (reference, candidate):
        was_training = model.training
        model.eval()
        try:
            device = next(model.parameters()).device
            out = model(images.to(device)).float().cpu()
            outputs.append(torch.nn.functional.normalize(out, dim=-1))
        finally:
            model.train(was_training)
    return float((outputs[0] * outputs[1]).sum(dim=-1).min())
