"""SAM image-encoder features through `transformers` (SamVisionModel, or the vision tower of
a full SamModel checkpoint). SAM takes a fixed square input: the image is resized to
input_size (its long side at the model's image size), zero-padded to the square, and the
grid is cropped back to the image."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kil.errors import ConfigError
from kil.perception.features.hf import TransformersExtractor


class SamExtractor(TransformersExtractor):
    title = "SAM image encoder"
    default_input_size = (768, 1024)

    def _load(self) -> None:
        import transformers

        super()._load()
        if isinstance(self.model, transformers.SamModel):  # a full SAM checkpoint: keep its vision tower
            self.model = self.model.vision_encoder
        self.square = int(self._model_config().image_size)
        self.default_input_size = (self.square * 3 // 4, self.square)

    def _model_config(self):
        config = self.model.config
        return getattr(config, "vision_config", config)

    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        h, w = pixels.shape[-2:]
        if max(h, w) > self.square:
            raise ConfigError(f"{self.where}input_size: {h}x{w} exceeds SAM's {self.square}x{self.square} input")
        padded = F.pad(self._standardise(pixels), (0, self.square - w, 0, self.square - h))
        out = self.model(pixel_values=padded)
        embeddings = getattr(out, "image_embeds", None)
        if embeddings is None:
            embeddings = out.last_hidden_state
        gh, gw = self._grid(pixels)
        return embeddings[:, :, :gh, :gw]


BACKEND = SamExtractor
