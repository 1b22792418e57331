"""Features node: camera frames -> patch features (FeatureMap) from one feature backend.

Runs at most `rate_hz` (frames arriving sooner after the last one processed are skipped, by
stamp, so a 30 Hz camera feeds a 10 Hz policy without a backlog). The FeatureMap carries the
frame's stamp, so the keypoints node pairs it with the frame it came from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kil.config import require
from kil.msgs import RGBD, FeatureMap
from kil.perception.features.base import load_extractor
from kil.stage import Stage, subscribe
from kil.threads import limit_torch_threads


@dataclass(frozen=True)
class FeaturesConfig:
    model: str = "descriptor_net"  # a config under config/features/ or a YAML path
    rate_hz: float = 10.0
    device: str = "auto"  # overrides the backend config's device: auto, cpu, cuda
    threads: int = 0  # torch CPU threads of this process (0: torch's default; kil.threads)

    def __post_init__(self) -> None:
        require(self.rate_hz > 0, "rate_hz", f"must be > 0, got {self.rate_hz}")
        require(self.threads >= 0, "threads", f"must be >= 0, got {self.threads}")
        require(self.device in ("auto", "cpu", "cuda"), "device", f"expected auto, cpu or cuda, got {self.device!r}")


class Features(Stage):
    Config = FeaturesConfig
    outputs = {"features": FeatureMap}
    live_params = frozenset({"rate_hz"})

    def __init__(self, config: FeaturesConfig, io) -> None:
        super().__init__(config, io)
        limit_torch_threads(config.threads)
        self.extractor = load_extractor(config.model, {"device": config.device})
        self._last_ns: int | None = None
        self._period_ns = int(1e9 / config.rate_hz)
        self._bad_frames = 0

    def reconfigure(self, config: FeaturesConfig) -> None:
        super().reconfigure(config)
        self._period_ns = int(1e9 / config.rate_hz)

    @subscribe(rgbd=RGBD, latest=True)
    def on_frame(self, frame: RGBD) -> None:
        if self._last_ns is not None and frame.stamp_ns < self._last_ns:
            self.io.log.warning("features: frame stamps went back %.3f s (a replayed bag or a clock reset); restarting the rate limit",
                                (self._last_ns - frame.stamp_ns) / 1e9)
            self._last_ns = None
        # A little slack so a camera at exactly rate_hz is not halved by stamp jitter.
        if self._last_ns is not None and frame.stamp_ns - self._last_ns < 0.9 * self._period_ns:
            return
        self._last_ns = frame.stamp_ns
        features = self.extractor.extract(frame.rgb)[0].numpy()
        if not np.isfinite(features).all():
            self._bad_frames += 1
            if self._bad_frames == 1 or self._bad_frames % 100 == 0:
                self.io.log.error("features: %s gave NaN or inf for frame %d (%d such frames); not published",
                                  self.extractor.name, frame.stamp_ns, self._bad_frames)
            return
        self.io.publish("features", FeatureMap(stamp_ns=frame.stamp_ns, frame_id=frame.frame_id, features=features))


STAGE = Features
