"""Classical dense descriptor: SIFT computed by OpenCV on a regular grid of upright keypoints,
one per patch, so it fits the same patch-feature interface as the learned backends."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from kil.config import require
from kil.perception.features.base import BackendConfig, FeatureExtractor


@dataclass(frozen=True)
class SiftConfig(BackendConfig):
    """stride: pixels between descriptor centres at input_size; support: SIFT keypoint
    diameter in pixels (the descriptor covers about 1.5x this)."""

    stride: int = 8
    support: float = 16.0

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.stride >= 1, "stride", f"must be >= 1, got {self.stride}")
        require(self.support > 0, "support", f"must be > 0, got {self.support}")


class DenseSift(FeatureExtractor):
    Config = SiftConfig
    title = "dense SIFT"
    default_input_size = (480, 640)
    needs_weights = False
    gpu_dtype = torch.float32  # OpenCV runs on the CPU on 8-bit grey; bf16 would shift grey levels

    def __init__(self, config: SiftConfig, source=None) -> None:
        self.patch_size = config.stride  # the descriptor grid is the patch grid
        super().__init__(config, source)

    def _load(self) -> None:
        self.sift = cv2.SIFT_create()

    @functools.lru_cache(maxsize=4)  # noqa: B019 - one grid per input size, for the extractor's life
    def _grid(self, height: int, width: int) -> tuple[tuple[int, int], list]:
        """The patch grid and one upright SIFT keypoint at each patch centre (pixel-index
        coordinates: patch (i, j) is centred on ((j + .5) s - .5, (i + .5) s - .5))."""
        s = self.config.stride
        h, w = height // s, width // s
        keypoints = [cv2.KeyPoint(float((j + 0.5) * s - 0.5), float((i + 0.5) * s - 0.5), self.config.support, 0.0)
                     for i in range(h) for j in range(w)]
        return (h, w), keypoints

    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        grid, keypoints = self._grid(*pixels.shape[-2:])
        out = []
        for image in pixels.float().cpu():
            gray = cv2.cvtColor((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), cv2.COLOR_RGB2GRAY)
            kps, desc = self.sift.compute(gray, keypoints)
            if desc is None or len(kps) != len(keypoints):  # OpenCV drops none for in-image points
                raise RuntimeError(f"dense SIFT returned {0 if desc is None else len(kps)} of {len(keypoints)} descriptors")
            out.append(torch.from_numpy(desc).T.reshape(-1, *grid))
        return torch.stack(out)


BACKEND = DenseSift
