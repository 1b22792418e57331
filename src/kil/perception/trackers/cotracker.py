"""CoTracker3 online (facebookresearch/co-tracker, not on PyPI: install it from its
repository on the robot PC) through its windowed online protocol: the points are queried
as (t, x, y) on the first frame; the first call, once `step` frames are in, passes
`is_first_step=True` with the queries and answers nothing; from then on every `step`
frames the last 2·`step` frames go in and the newest frame's tracks and visibility come
out. Until the first answer the points stand where they were given, and between calls the
newest answer stands, so results lag up to 2·step - 1 frames at the start and step - 1
after. The checkpoint is a local
file (`weights`), e.g. scaled_online.pth."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from kil.config import require
from kil.errors import ConfigError
from kil.perception.trackers.base import PointTracker, TrackedPoints, TrackerConfig


@dataclass(frozen=True)
class CoTrackerConfig(TrackerConfig):
    window_len: int = 16  # the online model's window; it is called every window_len // 2 frames

    def __post_init__(self) -> None:
        require(self.window_len >= 2 and self.window_len % 2 == 0, "window_len", f"an even number >= 2, got {self.window_len}")


class CoTrackerOnline(PointTracker):
    Config = CoTrackerConfig
    title = "CoTracker3 online"
    weights_expect = None  # a checkpoint file

    def _load(self) -> None:
        try:
            from cotracker.predictor import CoTrackerOnlinePredictor
        except ImportError:
            raise ConfigError(f"{self.where}backend: cotracker needs the co-tracker package (not on PyPI; "
                              "pip install git+https://github.com/facebookresearch/co-tracker on the robot PC)") from None
        self.model = CoTrackerOnlinePredictor(checkpoint=str(self.weights_path()), window_len=self.config.window_len).to(self.device)
        self.step_frames = int(self.model.step)
        self.lag_frames = 2 * self.step_frames - 1

    def start(self, rgb: np.ndarray, uv: np.ndarray) -> None:
        uv = np.asarray(uv, np.float64).reshape(-1, 2)
        self._frames = [rgb]
        self._seen = 1  # frames since start
        self._queries = torch.tensor(np.concatenate([np.zeros((len(uv), 1)), uv], 1), dtype=torch.float32, device=self.device)[None]
        self._first = True
        self._answer = TrackedPoints(uv.copy(), np.ones(len(uv), bool))

    def _chunk(self) -> torch.Tensor:
        """(1, T, 3, H, W) float 0-255: the last 2·step frames."""
        frames = np.stack(self._frames[-2 * self.step_frames:])
        return torch.from_numpy(frames).to(self.device).permute(0, 3, 1, 2)[None].float()

    @torch.inference_mode()
    def step(self, rgb: np.ndarray) -> TrackedPoints:
        self._frames = [*self._frames[-(2 * self.step_frames - 1):], rgb]
        self._seen += 1
        if self._seen % self.step_frames == 0:
            if self._first:  # the first call only takes the queries (the official online demo's protocol)
                self.model(video_chunk=self._chunk(), is_first_step=True, queries=self._queries)
                self._first = False
                return self._answer
            tracks, visible = self.model(video_chunk=self._chunk())
            if tracks is not None:
                uv = tracks[0, -1].float().cpu().numpy().astype(np.float64)
                seen = visible[0, -1].cpu().numpy().astype(bool).reshape(-1)
                tracked = self._answer.tracked & seen  # lost once, lost until started again
                self._answer = TrackedPoints(np.where(tracked[:, None], uv, self._answer.uv), tracked)
        return self._answer


BACKEND = CoTrackerOnline
