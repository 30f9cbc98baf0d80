"""Model size budgets: parameter and multiply-accumulate counts, and the budget check."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


class ParamBudgetError(ValueError):
    """A model with more parameters than its configured budget allows."""


def count_parameters(module: nn.Module) -> int:
    """Number of parameters of ``module`` (trainable or not; buffers excluded)."""
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def count_macs(module: nn.Module, image_size: int, in_chans: int = 3) -> int:
    """Multiply-accumulates of one forward pass of a ``1 × in_chans × image_size²`` image.

    torch's own :class:`~torch.utils.flop_counter.FlopCounterMode` counts the matrix
    products and convolutions (fvcore/thop are not dependencies); it reports FLOPs with a
    multiply-add as 2, hence the halving. Normalisation and activations are not counted, as
    in the MAC figures papers quote.
    """
    was_training = module.training
    module.eval()
    try:
        device = next(module.parameters()).device
        with FlopCounterMode(display=False) as counter:
            module(torch.zeros(1, in_chans, image_size, image_size, device=device))
    finally:
        module.train(was_training)
    return counter.get_total_flops() // 2


def check_param_budget(num_params: int, max_params: int | None, what: str) -> None:
    """Fail if ``num_params`` exceeds ``max_params`` (``None``: no budget).

    Raises:
        ParamBudgetError: naming ``what``, its size and the budget.
    """
    if max_params is not None and num_params > max_params:
        raise ParamBudgetError(
            f"{what} has {num_params:,} parameters, over the budget model.max_params="
            f"{max_params:,}; choose a smaller backbone or width, or raise model.max_params"
        )
