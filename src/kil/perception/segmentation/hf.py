"""Shared loading, pre- and post-processing of the SAM family through `transformers`.

The backends prepare images and read masks as the models' own processors do, without them:
SAM 2's and SAM 3's image processors need torchvision, which has no CPU build for this
project's torch (DESIGN §9). SAM resizes the long side to its input size and pads the
square bottom-right ("letterbox"); SAM 2 and SAM 3 stretch to the square. Pixels are
rescaled to [0, 1] and standardised with the checkpoint's processor mean and std; mask
logits are upsampled bilinearly (through the letterbox crop for SAM) to the frame.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from kil.errors import ConfigError
from kil.msgs import RGBD
from kil.perception.features.base import IMAGENET_MEAN, IMAGENET_STD, normalise, preprocessor_stats
from kil.perception.segmentation.base import Instances, Prompt, Segmenter


class TransformersSegmenter(Segmenter):
    """A SAM-family `transformers` model loaded from a local checkpoint directory."""

    model_class: ClassVar[str] = "AutoModel"
    letterbox: ClassVar[bool] = False  # SAM: long side to the input size, padded bottom-right
    mean: ClassVar[tuple[float, ...]] = IMAGENET_MEAN
    std: ClassVar[tuple[float, ...]] = IMAGENET_STD

    def _load(self) -> None:
        import transformers

        weights = self.weights_path()
        if not isinstance(weights, Path):
            raise ConfigError(f"{self.where}weights: a local checkpoint directory is needed, got {weights!r}")
        try:
            model = getattr(transformers, self.model_class).from_pretrained(str(weights), local_files_only=True)
        except (OSError, ValueError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(f"{self.where}weights: cannot load {self.title} from {weights} ({first})") from None
        self.model = model.to(self.device).eval()
        self.stats = preprocessor_stats(weights, self.mean, self.std)
        self.size = int(self._input_size())

    def _input_size(self) -> int:
        """The square input side of the model, in pixels."""
        vision = self.model.config.vision_config
        return getattr(getattr(vision, "backbone_config", None), "image_size", None) or vision.image_size

    def pixels(self, rgb: np.ndarray) -> torch.Tensor:
        """(1, 3, S, S) standardised model input of an (H, W, 3) uint8 image."""
        H, W = rgb.shape[:2]
        image = torch.tensor(rgb).permute(2, 0, 1)[None].float().div_(255.0)  # a copy: frames are read-only
        if self.letterbox:
            h, w = self._resized(H, W)
            image = F.interpolate(image, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
            image = F.pad(normalise(image, *self.stats), (0, self.size - w, 0, self.size - h))
        else:
            image = normalise(F.interpolate(image, size=(self.size, self.size), mode="bilinear", align_corners=False,
                                            antialias=True), *self.stats)
        return image.to(self.device)

    def _resized(self, H: int, W: int) -> tuple[int, int]:
        """The letterboxed image's size inside the square (SAM's rule: long side to S, rounded)."""
        scale = self.size / max(H, W)
        return int(H * scale + 0.5), int(W * scale + 0.5)

    def model_points(self, points: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """(P, 2) frame pixels (u, v) -> the model's input coordinates."""
        H, W = size
        if self.letterbox:
            h, w = self._resized(H, W)
            return points * [w / W, h / H]
        return points * [self.size / W, self.size / H]

    def masks(self, logits: torch.Tensor, size: tuple[int, int], threshold: float = 0.0) -> np.ndarray:
        """(K, h, w) mask logits at the model's resolution -> (K, H, W) bool at the frame's."""
        if len(logits) == 0:
            return np.zeros((0, *size), bool)
        logits = logits[:, None].float()
        if self.letterbox:  # to the padded square, cut the padding, then to the frame
            h, w = self._resized(*size)
            logits = F.interpolate(logits, size=(self.size, self.size), mode="bilinear", align_corners=False)[..., :h, :w]
        return (F.interpolate(logits, size=size, mode="bilinear", align_corners=False)[:, 0] > threshold).cpu().numpy()


class PointPromptSegmenter(TransformersSegmenter):
    """SAM / SAM 2: one mask per prompt point (a positive click on one instance); its score
    is the model's predicted IoU, clipped to [0, 1]."""

    @torch.inference_mode()
    def _segment(self, frame: RGBD, prompts: list[Prompt]) -> Instances:
        size = frame.rgb.shape[:2]
        owners = [(p, point) for p, prompt in enumerate(prompts) if prompt.points is not None for point in prompt.points]
        if not owners:
            raise ValueError(f"{self.where}{self.title} takes point prompts; got none (prompts: {[p.text for p in prompts]})")
        points = self.model_points(np.array([pt for _, pt in owners], np.float64), size)
        out = self.model(pixel_values=self.pixels(frame.rgb),
                         input_points=torch.tensor(points, dtype=torch.float32, device=self.device)[None, :, None],
                         input_labels=torch.ones((1, len(points), 1), dtype=torch.long, device=self.device),
                         multimask_output=False)
        scores = out.iou_scores[0, :, 0].float().clamp(0.0, 1.0).cpu().numpy()
        return Instances(self.masks(out.pred_masks[0, :, 0], size), scores, np.array([p for p, _ in owners], np.int64))
