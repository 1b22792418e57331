"""Publishes one RGB image file (and a flat depth, optionally with holes) as RGBD frames."""

from dataclasses import dataclass

import numpy as np
from PIL import Image

from kil.msgs import RGBD
from kil.stage import Stage, every


@dataclass(frozen=True)
class StillCameraConfig:
    image: str = ""
    depth_m: float = 1.0
    invalid_depth: bool = False  # every depth pixel NaN
    rate_hz: float = 15.0


class StillCamera(Stage):
    Config = StillCameraConfig
    outputs = {"rgbd": RGBD}

    def __init__(self, config, io):
        super().__init__(config, io)
        self.rgb = np.asarray(Image.open(config.image).convert("RGB"))
        h, w = self.rgb.shape[:2]
        self.depth = np.full((h, w), np.nan if config.invalid_depth else config.depth_m, np.float32)
        self.K = np.array([[500.0, 0, (w - 1) / 2], [0, 500.0, (h - 1) / 2], [0, 0, 1]])

    @every(hz="rate_hz")
    def tick(self):
        T = np.eye(4)
        T[:3, 3] = [0.4, 0.0, 1.2]
        T[:3, :3] = np.diag([1.0, -1.0, -1.0])  # looking straight down
        self.io.publish("rgbd", RGBD(self.io.now_ns(), "camera", self.rgb, self.depth, self.K, "base", T))


STAGE = StillCamera
