"""Pyramidal Lucas-Kanade (OpenCV) with a forward-backward check: a point whose track back
to the previous frame misses where it came from by more than `max_fb_error_px`, or that
leaves the image, is lost. Needs no weights; runs anywhere."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kil.config import require
from kil.perception.trackers.base import PointTracker, TrackedPoints, TrackerConfig


@dataclass(frozen=True)
class LucasKanadeConfig(TrackerConfig):
    window_px: int = 21
    levels: int = 3
    max_fb_error_px: float = 1.5

    def __post_init__(self) -> None:
        require(self.window_px >= 3 and self.window_px % 2 == 1, "window_px", f"an odd size >= 3, got {self.window_px}")
        require(self.levels >= 0, "levels", f"must be >= 0, got {self.levels}")
        require(self.max_fb_error_px > 0, "max_fb_error_px", f"must be > 0, got {self.max_fb_error_px}")


class LucasKanadeTracker(PointTracker):
    Config = LucasKanadeConfig
    title = "Lucas-Kanade tracker"
    needs_weights = False

    def start(self, rgb: np.ndarray, uv: np.ndarray) -> None:
        import cv2

        self._grey = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
        self._uv = np.asarray(uv, np.float32).reshape(-1, 2).copy()
        self._tracked = np.ones(len(self._uv), bool)

    def step(self, rgb: np.ndarray) -> TrackedPoints:
        import cv2

        grey = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
        c = self.config
        options = dict(winSize=(c.window_px, c.window_px), maxLevel=c.levels,
                       criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01))
        live = np.flatnonzero(self._tracked)
        if len(live):
            before = self._uv[live].reshape(-1, 1, 2)
            after, ok, _ = cv2.calcOpticalFlowPyrLK(self._grey, grey, before, None, **options)
            back, ok_back, _ = cv2.calcOpticalFlowPyrLK(grey, self._grey, after, None, **options)
            H, W = grey.shape
            fb = np.linalg.norm(back.reshape(-1, 2) - before.reshape(-1, 2), axis=1)
            inside = (after[:, 0, 0] >= 0) & (after[:, 0, 0] <= W - 1) & (after[:, 0, 1] >= 0) & (after[:, 0, 1] <= H - 1)
            good = ok.ravel().astype(bool) & ok_back.ravel().astype(bool) & (fb <= c.max_fb_error_px) & inside
            self._uv[live[good]] = after.reshape(-1, 2)[good]
            self._tracked[live[~good]] = False
        self._grey = grey
        return TrackedPoints(self._uv.astype(np.float64), self._tracked.copy())


BACKEND = LucasKanadeTracker
