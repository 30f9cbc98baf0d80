"""What happens at each training step: stages, learning-rate curves, frozen parts, margin.

Everything here is a pure function of the config and the global step, so a resumed run
recomputes it instead of restoring it from a checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from timm.scheduler import CosineLRScheduler
from torch.optim import Optimizer

from openrecog.config import LossConfig, TrainConfig

Phase = Literal["joint", "head", "backbone"]


@dataclass(frozen=True)
class Stage:
    """One resolved stage: global steps ``[start, end)`` and its settings."""

    index: int
    start: int
    end: int
    lr: float
    image_size: int
    mixup_alpha: float
    cutmix_alpha: float
    warmup_steps: int

    @property
    def steps(self) -> int:
        """Number of steps in this stage."""
        return self.end - self.start


def resolve_stages(tc: TrainConfig, image_size: int, steps_per_epoch: int) -> list[Stage]:
    """The stages of a run; without ``train.stages`` one stage of ``max_steps`` (or epochs)."""
    if not tc.stages:
        total = tc.max_steps or tc.epochs * steps_per_epoch
        return [
            Stage(0, 0, total, tc.lr, image_size, tc.mixup_alpha, tc.cutmix_alpha, tc.warmup_steps)
        ]
    stages, start = [], 0
    for index, s in enumerate(tc.stages):
        stages.append(
            Stage(
                index=index,
                start=start,
                end=start + s.steps,
                lr=s.lr if s.lr is not None else tc.lr,
                image_size=s.image_size or image_size,
                mixup_alpha=s.mixup_alpha if s.mixup_alpha is not None else tc.mixup_alpha,
                cutmix_alpha=s.cutmix_alpha if s.cutmix_alpha is not None else tc.cutmix_alpha,
                # Warm up once, at the start of the run, unless a stage asks for its own.
                warmup_steps=s.warmup_steps
                if s.warmup_steps is not None
                else (tc.warmup_steps if index == 0 else 0),
            )
        )
        start += s.steps
    return stages


def stage_at(stages: list[Stage], step: int) -> Stage:
    """The stage that runs ``step`` (the last one once training is over)."""
    for stage in stages:
        if step < stage.end:
            return stage
    return stages[-1]


def build_lr_scheduler(
    optimizer: Optimizer, tc: TrainConfig, stage: Stage, base_lrs: list[float]
) -> CosineLRScheduler:
    """The timm scheduler of one stage, stepped with the step *inside* the stage.

    ``base_lrs`` are the groups' learning rates at ``train.lr``; a stage with another
    ``lr`` scales all of them. ``onecycle`` is the cosine scheduler with a 30 % linear warmup
    from lr/25 and an end at lr/25/1e4 (torch's OneCycleLR defaults, cosine annealing).
    """
    scale = stage.lr / tc.lr
    for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
        # timm reads each group's starting value from initial_lr once; set it per stage.
        group["initial_lr"] = base * scale
    if tc.schedule == "onecycle":
        warmup = max(1, int(0.3 * stage.steps))
        return CosineLRScheduler(
            optimizer,
            t_initial=max(1, stage.steps - warmup),
            lr_min=stage.lr / 25 / 1e4,
            warmup_t=warmup,
            warmup_lr_init=stage.lr / 25,
            warmup_prefix=True,
            t_in_epochs=False,
        )
    return CosineLRScheduler(
        optimizer,
        t_initial=max(1, stage.steps),
        lr_min=stage.lr * tc.min_lr_ratio,
        warmup_t=stage.warmup_steps,
        warmup_lr_init=stage.lr * 0.01,
        t_in_epochs=False,
    )


def phase_at(tc: TrainConfig, step: int) -> Phase:
    """Which parts train at ``step``: ``joint`` (all), ``head`` (neck + heads) or ``backbone``.

    The first ``freeze_backbone_steps`` are head-only (LP-FT). With ``alternate_steps = N``
    the rest alternates N head-only steps and N backbone-only steps (GUIE), head first.
    """
    if step < tc.freeze_backbone_steps:
        return "head"
    if tc.alternate_steps:
        block = (step - tc.freeze_backbone_steps) // tc.alternate_steps
        return "head" if block % 2 == 0 else "backbone"
    return "joint"


def margin_at(lc: LossConfig, cap: float, step: int, steps_per_epoch: int) -> float | None:
    """Dynamic margin at ``step`` (None when the margin is fixed).

    ``margin_start + margin_step · ⌊step / every⌋``, capped at the loss's configured margin;
    ``every`` defaults to one epoch.
    """
    if lc.margin_start is None:
        return None
    every = lc.margin_every or max(1, steps_per_epoch)
    return min(cap, lc.margin_start + lc.margin_step * (step // every))
