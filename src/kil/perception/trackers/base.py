"""The point-tracker interface: points given on one frame, followed through the next frames
(paper 001's T). A backend is a module ``kil.perception.trackers.<name>`` whose ``BACKEND``
class derives from `PointTracker`, configured by ``config/trackers/<name>.yaml``.

`start(rgb, uv)` begins tracking the (N, 2) pixels of one frame; each `step(rgb)` gives the
points in the next frame and whether each is still tracked. A point lost once stays lost
until the next `start` (the keypoints node re-detects it by matching and starts again).
An online tracker that answers in windows reports its newest answer, `lag_frames` old at
most.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from kil.perception.registry import BackendKind, WeightedBackend


@dataclass(frozen=True)
class TrackerConfig:
    """weights: local checkpoint (relative to the YAML file); device: "auto" takes the GPU
    where one is present."""

    backend: str
    weights: str = ""
    device: Literal["auto", "cpu", "cuda"] = "auto"


@dataclass(frozen=True)
class TrackedPoints:
    """uv (N, 2) px in the newest frame; tracked (N,) bool (False: lost, uv its last place)."""

    uv: np.ndarray
    tracked: np.ndarray


class PointTracker(WeightedBackend):
    Config: ClassVar[type[TrackerConfig]] = TrackerConfig
    title: ClassVar[str] = "point tracker"
    lag_frames: ClassVar[int] = 0

    def __init__(self, config: TrackerConfig, source: Path | None = None) -> None:
        self._open(config, source)
        self._load()

    def _load(self) -> None:
        """Build the model (on self.device)."""

    def start(self, rgb: np.ndarray, uv: np.ndarray) -> None:
        """Track the (N, 2) pixels `uv` of the (H, W, 3) uint8 frame `rgb` from now on."""
        raise NotImplementedError

    def step(self, rgb: np.ndarray) -> TrackedPoints:
        """The points in the next frame (H, W, 3) uint8."""
        raise NotImplementedError


TRACKERS = BackendKind("trackers", PointTracker, "point tracker")


def load_tracker(name_or_path: str | Path, overrides: dict[str, Any] | None = None) -> PointTracker:
    """Build the tracker a config names (e.g. "lucas_kanade" or a YAML path)."""
    cls, config, path = TRACKERS.load_config(name_or_path, overrides)
    return cls(config, path)
