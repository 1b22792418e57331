"""SAM 2 (`transformers` Sam2Model) with point prompts: one mask per point, on the image
stretched to the model's square input as Sam2Processor does."""

from __future__ import annotations

from kil.perception.segmentation.hf import PointPromptSegmenter


class Sam2Segmenter(PointPromptSegmenter):
    title = "SAM 2 segmenter"
    model_class = "Sam2Model"


BACKEND = Sam2Segmenter
