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

RATE_SLACK = 0.1  # of a period: a frame this much early still counts as due


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
        self._last_ns: int | None = None  # stamp of the newest frame taken
        self._next_ns: int | None = None  # when the next frame is due
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
            self._last_ns = self._next_ns = None
        # Frames are taken on a schedule of rate_hz (a 15 Hz camera gives 10 Hz, not every
        # other frame's 7.5 Hz), with a little slack so a camera at exactly rate_hz is not
        # halved by stamp jitter; after a gap the schedule restarts from the frame.
        if self._next_ns is not None and frame.stamp_ns < self._next_ns - RATE_SLACK * self._period_ns:
            return
        due = frame.stamp_ns if self._next_ns is None else self._next_ns
        self._next_ns = due + self._period_ns if frame.stamp_ns < due + self._period_ns else frame.stamp_ns + self._period_ns
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
