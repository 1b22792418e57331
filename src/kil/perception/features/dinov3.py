"""DINOv3 ViT patch features through `transformers` (CLS and register tokens dropped)."""

from __future__ import annotations

from kil.perception.features.dinov2 import Dinov2Extractor


class Dinov3Extractor(Dinov2Extractor):
    title = "DINOv3"
    patch_size = 16
    default_input_size = (384, 512)


BACKEND = Dinov3Extractor
