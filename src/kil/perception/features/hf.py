"""Shared loading and token handling for the `transformers` vision backbones (DINOv2, DINOv3,
RADIO, SAM): each backend file names its model class and how to turn outputs into a grid."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch

from kil.errors import ConfigError
from kil.perception.features.base import IMAGENET_MEAN, IMAGENET_STD, FeatureExtractor, normalise, preprocessor_stats


class TransformersExtractor(FeatureExtractor):
    """A ViT-style `transformers` model whose patch tokens are the features."""

    model_class: ClassVar[str] = "AutoModel"
    mean: ClassVar[tuple[float, ...] | None] = IMAGENET_MEAN  # None: the model standardises itself
    std: ClassVar[tuple[float, ...] | None] = IMAGENET_STD

    def _load(self) -> None:
        import transformers

        weights = self.weights_path()
        local = isinstance(weights, Path)
        try:
            model = getattr(transformers, self.model_class).from_pretrained(
                str(weights), dtype=self.dtype, local_files_only=local
            )
        except (OSError, ValueError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(f"{self.where}weights: cannot load {self.title} from {weights} ({first})") from None
        self.model = model.to(self.device).eval()
        self.patch_size = int(self._model_config().patch_size)
        if self.mean is not None:
            self.stats = preprocessor_stats(weights, self.mean, self.std)

    def _model_config(self):
        return self.model.config

    def _standardise(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels if self.mean is None else normalise(pixels, *self.stats)

    def _grid(self, pixels: torch.Tensor) -> tuple[int, int]:
        return pixels.shape[-2] // self.patch_size, pixels.shape[-1] // self.patch_size


def prefix_tokens(config) -> int:
    """CLS + register tokens ahead of the patch tokens of a DINO-style model."""
    return 1 + int(getattr(config, "num_register_tokens", 0) or 0)
