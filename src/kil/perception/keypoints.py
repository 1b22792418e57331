"""Keypoint extraction by image matching: reference descriptors from the annotated reference
images, matched in each frame's features, lifted to the base frame with depth.

Shared by the keypoints node (one frame at a time) and the dataset builder (batches).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from kil.msgs import RGBD, Keypoints
from kil.perception.features.base import FeatureExtractor
from kil.perception.lifting import lift
from kil.perception.matching import Matcher, sample_descriptors
from kil.perception.spec import LoadedSpec


@dataclass(frozen=True)
class ReferenceSet:
    """The keypoints a spec defines and their descriptors under one feature backend.

    names: N keypoint names; instance: (N,) int32; descriptors: (N, C) float32.
    """

    names: tuple[str, ...]
    instance: np.ndarray
    descriptors: np.ndarray
    backend: str


def reference_set(spec: LoadedSpec, extractor: FeatureExtractor) -> ReferenceSet:
    """Descriptors of every reference keypoint: the reference image's features, upsampled
    (bilinearly, as in matching) and sampled at the annotated pixels."""
    layout = spec.layout()
    rows = []
    for ref, uv in spec.references():
        image = spec.image(ref)
        features = extractor.extract(image)[0]
        rows.append(sample_descriptors(features, uv, image.shape[:2]))
    return ReferenceSet(layout.names, layout.instance, np.concatenate(rows).astype(np.float32), extractor.name)


@dataclass(frozen=True)
class DetectorConfig:
    depth_radius: int = 3  # pixels searched for a valid depth reading around a match
    min_score: float = -1.0  # matches scoring lower are reported not visible
    similarity_vectors: bool = False


class KeypointDetector:
    """Finds the reference keypoints in frames, given their patch features."""

    def __init__(self, references: ReferenceSet, config: DetectorConfig = DetectorConfig()) -> None:
        self.references = references
        self.config = config
        self.matcher = Matcher(references.descriptors)

    @property
    def channels(self) -> int:
        return self.matcher.channels

    def detect(self, frames: list[RGBD], features: np.ndarray | torch.Tensor) -> list[Keypoints]:
        """Keypoints of B frames from their (B, C, h, w) patch features (one image size)."""
        sizes = {f.size for f in frames}
        if len(sizes) != 1:
            raise ValueError(f"frames: one image size per batch, got {sorted(sizes)}")
        matches = self.matcher.match(features, sizes.pop(), similarity_vectors=self.config.similarity_vectors)
        out = []
        for b, frame in enumerate(frames):
            xyz, has_depth = lift(matches.uv[b], frame.depth, frame.K, frame.T_base_camera, self.config.depth_radius)
            visible = has_depth & matches.valid[b] & (matches.score[b] >= self.config.min_score)
            xyz[~visible] = np.nan
            out.append(Keypoints(
                stamp_ns=frame.stamp_ns,
                frame_id=frame.base_frame_id,
                names=self.references.names,
                uv=matches.uv[b],
                xyz=xyz,
                score=matches.score[b],
                visible=visible,
                instance=self.references.instance,
                similarity=None if matches.similarity is None else matches.similarity[b],
            ))
        return out
