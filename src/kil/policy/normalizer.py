"""Min-max normalisation of every policy input and action to [-1, 1] (paper 001).

Statistics are fitted once on the training store and ship inside the checkpoint as tensors;
nothing is recomputed at run time. A dimension that never varies maps to 0 (its range is
widened to avoid a division by zero) and maps back to its constant.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

_MIN_RANGE = 1e-6


@dataclass
class MinMax:
    """Per-dimension bounds of one field: low, high (D,) float32."""

    low: torch.Tensor
    high: torch.Tensor

    @classmethod
    def fit(cls, data: np.ndarray | torch.Tensor) -> MinMax:
        """Bounds over all leading axes of (..., D) data (NaN ignored, e.g. invisible keypoints)."""
        x = torch.as_tensor(np.asarray(data, np.float32)).reshape(-1, np.shape(data)[-1])
        finite = torch.isfinite(x)
        if not finite.any(dim=0).all():
            raise ValueError("normaliser: a dimension has no finite value to fit")
        low = torch.where(finite, x, torch.full_like(x, float("inf"))).min(dim=0).values
        high = torch.where(finite, x, torch.full_like(x, -float("inf"))).max(dim=0).values
        return cls(low, high)

    def _scale(self) -> tuple[torch.Tensor, torch.Tensor]:
        centre = (self.high + self.low) / 2
        half = ((self.high - self.low) / 2).clamp(min=_MIN_RANGE)
        return centre, half

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D) -> [-1, 1] over the fitted range."""
        centre, half = self._scale()
        return (x - centre.to(x)) / half.to(x)

    def unnormalize(self, y: torch.Tensor) -> torch.Tensor:
        centre, half = self._scale()
        return y * half.to(y) + centre.to(y)


class Normalizer:
    """Named MinMax fields (e.g. "keypoints", "proprio", "action"), as safetensors-ready state."""

    def __init__(self, fields: dict[str, MinMax]) -> None:
        self.fields = dict(fields)

    def __getitem__(self, name: str) -> MinMax:
        return self.fields[name]

    def state_dict(self) -> dict[str, torch.Tensor]:
        out = {}
        for name, mm in self.fields.items():
            out[f"{name}.low"], out[f"{name}.high"] = mm.low.contiguous(), mm.high.contiguous()
        return out

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> Normalizer:
        names = sorted({k.rsplit(".", 1)[0] for k in state})
        missing = [n for n in names if f"{n}.low" not in state or f"{n}.high" not in state]
        if missing:
            raise ValueError(f"normaliser state: fields {missing} lack low/high")
        return cls({n: MinMax(state[f"{n}.low"], state[f"{n}.high"]) for n in names})
