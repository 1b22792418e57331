"""RADIO (C-RADIO / RADIOv2.5) spatial features through `transformers`' RadioModel, which
standardises its input itself."""

from __future__ import annotations

import torch

from kil.perception.features.base import tokens_to_grid
from kil.perception.features.hf import TransformersExtractor


class RadioExtractor(TransformersExtractor):
    title = "RADIO"
    mean = None
    std = None
    default_input_size = (384, 512)

    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return tokens_to_grid(self.model(pixel_values=pixels).features, self._grid(pixels))


BACKEND = RadioExtractor
