"""The segmenter interface: one RGB-D frame and prompts -> instance masks, for instance
matching (paper 001's IN: the keypoint search restricted to each instance of a category).

A backend is a module ``kil.perception.segmentation.<name>`` whose ``BACKEND`` class derives
from `Segmenter`; its YAML config (``config/segmentation/<name>.yaml`` or any file) names it
in ``backend:``. Weights load from a local path named in the config (as the feature
backends'), and a backend that needs none says so. Prompts are what the foundation models
take: a category name (SAM 3's text prompt) or points on an object (SAM / SAM 2); a
class-agnostic backend ignores them and labels its instances with no prompt (-1), leaving
which category each is to the descriptor matching.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from kil.config import require
from kil.msgs import RGBD
from kil.perception.registry import BackendKind, WeightedBackend


@dataclass(frozen=True)
class SegmenterConfig:
    """Settings every segmenter shares.

    weights: local checkpoint directory (relative paths are relative to the YAML file).
    device: "auto" takes the GPU where one is present. min_score: instances scoring lower
    are dropped; min_area_px: so are smaller masks; max_instances: the best this many per
    prompt (per image for a class-agnostic backend) are kept.
    """

    backend: str
    weights: str = ""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    min_score: float = 0.5
    min_area_px: int = 50
    max_instances: int = 8

    def __post_init__(self) -> None:
        require(0.0 <= self.min_score <= 1.0, "min_score", f"a score in [0, 1], got {self.min_score}")
        require(self.min_area_px >= 1, "min_area_px", f"must be >= 1, got {self.min_area_px}")
        require(self.max_instances >= 1, "max_instances", f"must be >= 1, got {self.max_instances}")


@dataclass(frozen=True)
class Prompt:
    """What to segment: `text`, a category name ("block"); `points` (P, 2) px (u, v), each
    on one instance (SAM / SAM 2 give one mask per point)."""

    text: str = ""
    points: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.points is not None:
            points = np.asarray(self.points, dtype=np.float64)
            if points.ndim != 2 or points.shape[1] != 2 or not np.isfinite(points).all():
                raise ValueError(f"Prompt.points: expected (P, 2) finite pixels, got shape {points.shape}")
            object.__setattr__(self, "points", points)
        if not self.text and (self.points is None or len(self.points) == 0):
            raise ValueError("Prompt: give a text, points, or both")


@dataclass(frozen=True)
class Instances:
    """The instances found in one image: masks (K, H, W) bool; score (K,) float in [0, 1];
    prompt (K,) int, the index of the prompt each answers (-1: class-agnostic). Sorted by
    score, best first."""

    masks: np.ndarray
    score: np.ndarray
    prompt: np.ndarray

    def __post_init__(self) -> None:
        K = len(self.score)
        if self.masks.ndim != 3 or len(self.masks) != K or self.masks.dtype != bool or self.prompt.shape != (K,):
            raise ValueError(f"Instances: masks (K, H, W) bool, score (K,), prompt (K,); got {self.masks.shape} {self.masks.dtype}, "
                             f"{self.score.shape}, {self.prompt.shape}")

    def __len__(self) -> int:
        return len(self.score)

    def of(self, prompt: int) -> Instances:
        """The instances answering `prompt`, and the class-agnostic ones."""
        keep = (self.prompt == prompt) | (self.prompt < 0)
        return Instances(self.masks[keep], self.score[keep], self.prompt[keep])

    @staticmethod
    def empty(size: tuple[int, int]) -> Instances:
        return Instances(np.zeros((0, *size), bool), np.zeros(0, np.float32), np.zeros(0, np.int64))


class Segmenter(WeightedBackend):
    """Base class of segmentation backends. Subclasses set `Config`, `title`, `needs_weights`
    and implement `_load` and `_segment`."""

    Config: ClassVar[type[SegmenterConfig]] = SegmenterConfig
    title: ClassVar[str] = "segmenter"

    def __init__(self, config: SegmenterConfig, source: Path | None = None) -> None:
        """`source` is the YAML file the config came from (for relative paths and errors)."""
        self._open(config, source)
        self._load()

    def _load(self) -> None:
        """Build the model (on self.device, eval mode)."""

    def _segment(self, frame: RGBD, prompts: list[Prompt]) -> Instances:
        """Every instance the model finds (unfiltered, any order)."""
        raise NotImplementedError

    @torch.inference_mode()
    def segment(self, frame: RGBD, prompts: list[Prompt]) -> Instances:
        """The instances in `frame` answering `prompts`: at least min_area_px pixels, scoring
        at least min_score, the best max_instances per prompt, best first."""
        found = self._segment(frame, prompts)
        if len(found) == 0:
            return Instances.empty(frame.rgb.shape[:2])
        c = self.config
        keep = (found.score >= c.min_score) & (found.masks.sum(axis=(1, 2)) >= c.min_area_px)
        order = [i for i in np.argsort(-found.score, kind="stable") if keep[i]]
        kept, per_prompt = [], {}
        for i in order:
            p = int(found.prompt[i])
            if per_prompt.get(p, 0) < c.max_instances:
                kept.append(i)
                per_prompt[p] = per_prompt.get(p, 0) + 1
        if not kept:
            return Instances.empty(frame.rgb.shape[:2])
        kept = np.array(kept)
        return Instances(found.masks[kept], found.score[kept].astype(np.float32), found.prompt[kept].astype(np.int64))


SEGMENTERS = BackendKind("segmentation", Segmenter, "segmentation backend", ("__init__", "base", "hf"))


def load_segmenter(name_or_path: str | Path, overrides: dict[str, Any] | None = None) -> Segmenter:
    """Build the segmenter a config names (e.g. "depth_colour" or a YAML path)."""
    cls, config, path = SEGMENTERS.load_config(name_or_path, overrides)
    return cls(config, path)
