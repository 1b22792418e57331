"""SAM (`transformers` SamModel) with point prompts: one mask per point. The image is
letterboxed as SamProcessor does (long side to the model's input size, padded)."""

from __future__ import annotations

from kil.perception.segmentation.hf import PointPromptSegmenter


class SamSegmenter(PointPromptSegmenter):
    title = "SAM segmenter"
    model_class = "SamModel"
    letterbox = True


BACKEND = SamSegmenter
