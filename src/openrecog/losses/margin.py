"""Margin-based softmax logits: ArcFace, CosFace, their combination, and NormFace.

All of them take cosine similarities ``cos θ_ij`` between L2-normalised embeddings and class
centres and rewrite only the target column ``y_i`` of each row (insightface formulation)::

    z_iy = s · (cos(m1·θ_iy + m2) − m3)          z_ij = s · cos θ_ij   (j ≠ y_i)

* ArcFace ``(m1, m2, m3) = (1, m, 0)``, CosFace ``(1, 0, m)``, NormFace ``(1, 0, 0)``.
* ``m1·θ + m2 > π`` would make ``cos(m1·θ + m2)`` increase again with ``θ``, so beyond
  ``θ_max = (π − m2) / m1`` the target falls back to ``cos θ − sin(π − m2)·m2`` (the
  "th / mm" trick), or with ``easy_margin`` to ``where(cos θ > 0, cos(m1·θ + m2), cos θ)``.
* Rows whose label is ``-1`` (positive centre not among the columns, as in PartialFC) are
  only scaled.
"""

from __future__ import annotations

import math

import torch
from torch import nn

_EPS = 1e-7  # keeps acos' gradient finite at cos θ = ±1


class CombinedMarginLoss(nn.Module):
    """Turn cosine logits into margin-penalised, scaled logits ready for cross-entropy.

    Args:
        s: Scale applied to every logit.
        m1: Multiplicative angular margin (SphereFace-style; 1 disables it).
        m2: Additive angular margin (ArcFace).
        m3: Additive cosine margin (CosFace).
        easy_margin: Apply the angular margin only where ``cos θ > 0``.
        interclass_filtering_threshold: If > 0, zero the non-target cosines above this value
            in labelled rows (insightface's guard against label noise / duplicate identities).
        margin_attr: Which of ``"m1" | "m2" | "m3"`` :meth:`set_margin` updates; inferred as
            ``m2`` if it is non-zero, else ``m3`` if that is, else none.

    """

    def __init__(
        self,
        s: float,
        m1: float,
        m2: float,
        m3: float,
        easy_margin: bool = False,
        interclass_filtering_threshold: float = 0.0,
        margin_attr: str | None = None,
    ) -> None:
        super().__init__()
        if m1 <= 0:
            raise ValueError(f"m1 must be > 0, got {m1}")
        if margin_attr is None:
            margin_attr = "m2" if m2 != 0 else ("m3" if m3 != 0 else None)
        if margin_attr not in (None, "m1", "m2", "m3"):
            raise ValueError(f"margin_attr must be 'm1', 'm2', 'm3' or None, got {margin_attr!r}")
        self.s, self.m1, self.m2, self.m3 = float(s), float(m1), float(m2), float(m3)
        self.easy_margin = easy_margin
        self.interclass_filtering_threshold = interclass_filtering_threshold
        self.margin_attr = margin_attr

    @property
    def margin(self) -> float:
        """The active margin (the one a dynamic-margin schedule drives); 0 if there is none."""
        return getattr(self, self.margin_attr) if self.margin_attr else 0.0

    @margin.setter
    def margin(self, value: float) -> None:
        self.set_margin(value)

    def set_margin(self, m: float) -> None:
        """Set the active margin (``m2`` for ArcFace, ``m3`` for CosFace) for later calls.

        Raises:
            ValueError: If this loss has no margin to schedule (e.g. NormFace).

        """
        if self.margin_attr is None:
            raise ValueError(f"{type(self).__name__} has no margin to set")
        setattr(self, self.margin_attr, float(m))

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Apply the margin to the target column and scale.

        Args:
            logits: Cosine similarities ``(B, C)`` in ``[-1, 1]``; not modified.
            labels: Target column per row ``(B,)``; ``-1`` means "no target column".

        Returns:
            Scaled logits ``(B, C)``, at least float32.

        """
        # Margins on fp16 cosines lose most of their precision near cos θ ≈ 1.
        with torch.autocast(device_type=logits.device.type, enabled=False):
            if logits.dtype in (torch.float16, torch.bfloat16):
                logits = logits.float()
            labels = labels.reshape(-1).long()
            has_target = labels != -1
            col = labels.clamp_min(0).unsqueeze(1)
            if self.interclass_filtering_threshold > 0:
                with torch.no_grad():
                    dirty = (logits > self.interclass_filtering_threshold) & has_target[:, None]
                    dirty.scatter_(1, col, False)
                logits = logits.masked_fill(dirty, 0.0)
            cos = logits.gather(1, col).squeeze(1)
            target = torch.where(has_target, self._target(cos), cos)
            return logits.scatter(1, col, target.unsqueeze(1)) * self.s

    def _target(self, cos: torch.Tensor) -> torch.Tensor:
        if self.m1 == 1.0 and self.m2 == 0.0:
            return cos - self.m3  # pure CosFace: no acos, no precision loss
        cos = cos.clamp(-1.0 + _EPS, 1.0 - _EPS)
        phi = torch.cos(self.m1 * torch.acos(cos) + self.m2)
        if self.easy_margin:
            phi = torch.where(cos > 0, phi, cos)
        else:
            theta_max = min(max((math.pi - self.m2) / self.m1, 0.0), math.pi)
            mm = math.sin(math.pi - self.m2) * self.m2
            phi = torch.where(cos > math.cos(theta_max), phi, cos - mm)
        return phi - self.m3

    def extra_repr(self) -> str:
        """Summarise the hyper-parameters for ``print(module)``."""
        return (
            f"s={self.s}, m1={self.m1}, m2={self.m2}, m3={self.m3}, "
            f"easy_margin={self.easy_margin}, margin_attr={self.margin_attr!r}"
        )


class ArcFace(CombinedMarginLoss):
    """Additive angular margin: target ``s·cos(θ + m)`` (Deng et al., 2019)."""

    def __init__(self, s: float = 64.0, m: float = 0.5, easy_margin: bool = False) -> None:
        super().__init__(s, 1.0, m, 0.0, easy_margin=easy_margin, margin_attr="m2")


class CosFace(CombinedMarginLoss):
    """Additive cosine margin: target ``s·(cos θ − m)`` (Wang et al., 2018)."""

    def __init__(self, s: float = 64.0, m: float = 0.4) -> None:
        super().__init__(s, 1.0, 0.0, m, margin_attr="m3")


class NormalizedSoftmax(CombinedMarginLoss):
    """No margin, just scaled cosines ``s·cos θ`` (NormFace, Wang et al., 2017)."""

    def __init__(self, s: float = 64.0) -> None:
        super().__init__(s, 1.0, 0.0, 0.0)
