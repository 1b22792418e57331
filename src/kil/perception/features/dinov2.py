"""DINOv2 (with or without registers) patch features through `transformers`."""

from __future__ import annotations

import torch

from kil.perception.features.base import tokens_to_grid
from kil.perception.features.hf import TransformersExtractor, prefix_tokens


class Dinov2Extractor(TransformersExtractor):
    title = "DINOv2"
    patch_size = 14
    default_input_size = (336, 448)

    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        hidden = self.model(pixel_values=self._standardise(pixels)).last_hidden_state
        return tokens_to_grid(hidden[:, prefix_tokens(self.model.config):], self._grid(pixels))


BACKEND = Dinov2Extractor
