"""SAM 3 (`transformers` Sam3Model) with text prompts: every instance of a category (paper
001's instance detector for IN). The image is encoded once and each prompt's text is run
against it; an instance scores its query's probability times the prompt's presence
probability, as Sam3Processor's post-processing does; only queries scoring min_score get
their masks brought to the frame's size."""

from __future__ import annotations

import numpy as np
import torch

from kil.errors import ConfigError
from kil.msgs import RGBD

from kil.perception.segmentation.base import Instances, Prompt
from kil.perception.segmentation.hf import TransformersSegmenter

TEXT_LENGTH = 32  # Sam3Processor pads every prompt to this many tokens
STANDARD = (0.5, 0.5, 0.5)  # SAM 3's image mean and std (transformers' IMAGENET_STANDARD_*)


class Sam3Segmenter(TransformersSegmenter):
    title = "SAM 3 segmenter"
    model_class = "Sam3Model"
    mean = STANDARD
    std = STANDARD

    def _load(self) -> None:
        from transformers import AutoTokenizer

        super()._load()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(self.weights_path()), local_files_only=True)
        except (OSError, ValueError) as err:
            raise ConfigError(f"{self.where}weights: no SAM 3 text tokenizer in {self.weights_path()} ({str(err).splitlines()[0]})") from None

    @torch.inference_mode()
    def _segment(self, frame: RGBD, prompts: list[Prompt]) -> Instances:
        size = frame.rgb.shape[:2]
        texts = [(p, prompt.text) for p, prompt in enumerate(prompts) if prompt.text]
        if not texts:
            raise ValueError(f"{self.where}SAM 3 takes text prompts (a category name); got none")
        vision = self.model.get_vision_features(pixel_values=self.pixels(frame.rgb))
        masks, scores, owners = [], [], []
        for p, text in texts:
            tokens = self.tokenizer([text], return_tensors="pt", padding="max_length", max_length=TEXT_LENGTH)
            out = self.model(vision_embeds=vision, input_ids=tokens["input_ids"].to(self.device),
                             attention_mask=tokens["attention_mask"].to(self.device))
            score = out.pred_logits[0].float().sigmoid()
            if out.presence_logits is not None:
                score = score * out.presence_logits[0].float().sigmoid()
            keep = score >= self.config.min_score  # of ~200 queries a few answer: upsample only those
            masks.append(self.masks(out.pred_masks[0][keep].float().sigmoid(), size, threshold=0.5))
            scores.append(score[keep].cpu().numpy())
            owners.append(np.full(int(keep.sum()), p, np.int64))
        return Instances(np.concatenate(masks), np.concatenate(scores).astype(np.float32), np.concatenate(owners))


BACKEND = Sam3Segmenter
