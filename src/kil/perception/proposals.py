"""Automatic keypoint proposals on a reference frame, for a spec the annotation page can edit.

Two ways, from the papers the project implements:
- k-means (SKIL, paper 000): the features of every pixel in the object's mask are clustered
  into `count` clusters; each cluster's keypoint is the mask pixel whose feature is nearest
  its centre. Semantic parts, no depth needed.
- farthest points with cross-demonstration consistency (KALM, paper 002): `candidates`
  points spread over the object's surface by farthest point sampling of its lifted mask
  pixels; each is matched in the first frame of every demonstration together with
  `neighbours` points within `radius_m` of it on the reference, and counts as found there
  only when most neighbours land near its own match (KALM's local group consensus). The
  candidates found in at least `consistency` of the demonstrations are kept, in sampling
  order (spread first), up to `count`.

The object is the instance (`kil.perception.segmentation`) under a pixel the user names.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kil.config import require
from kil.geometry import unproject
from kil.msgs import RGBD
from kil.perception.lifting import depth_in_metres, lift
from kil.perception.matching import Matcher, sample_descriptors
from kil.perception.segmentation.base import Instances

METHODS = ("kmeans", "fps")


@dataclass(frozen=True)
class ProposalConfig:
    """count: keypoints per object; candidates: farthest points sampled before the
    consistency check; neighbours / radius_m: KALM's local group (points within radius_m
    of a candidate on the reference, matched with it); consistency: share of
    demonstrations a kept candidate must be found in (KALM's 1 - delta)."""

    count: int = 6
    candidates: int = 24
    neighbours: int = 8
    radius_m: float = 0.02
    consistency: float = 0.7
    seed: int = 0

    def __post_init__(self) -> None:
        require(self.count >= 1, "count", f"must be >= 1, got {self.count}")
        require(self.candidates >= self.count, "candidates", f"must be >= count ({self.count}), got {self.candidates}")
        require(self.neighbours >= 1, "neighbours", f"must be >= 1, got {self.neighbours}")
        require(self.radius_m > 0, "radius_m", f"must be > 0, got {self.radius_m}")
        require(0 < self.consistency <= 1, "consistency", f"a share in (0, 1], got {self.consistency}")


def object_mask(instances: Instances, pixel: tuple[float, float]) -> np.ndarray | None:
    """(H, W) bool mask of the instance under `pixel` (u, v), the best-scoring one where
    several overlap; None when no instance covers it."""
    u, v = int(round(pixel[0])), int(round(pixel[1]))
    _, H, W = instances.masks.shape
    if not (0 <= u < W and 0 <= v < H):
        return None
    hits = np.flatnonzero(instances.masks[:, v, u])
    return None if len(hits) == 0 else instances.masks[hits[0]]  # instances are sorted best first


def _mask_pixels(mask: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(mask)
    return np.stack([cols, rows], 1).astype(np.float64)


def kmeans_keypoints(features: np.ndarray, mask: np.ndarray, config: ProposalConfig) -> np.ndarray:
    """(count, 2) px (u, v): SKIL's cluster centres of the unit features of the mask's
    pixels (`features` (C, h, w) of the frame), each at the mask pixel nearest its centre."""
    from scipy.cluster.vq import kmeans2

    pixels = _mask_pixels(mask)
    if len(pixels) < config.count:
        raise ValueError(f"the object's mask has {len(pixels)} pixels, fewer than the {config.count} keypoints asked for")
    descriptors = sample_descriptors(features, pixels, mask.shape).astype(np.float64)
    descriptors /= np.maximum(np.linalg.norm(descriptors, axis=1, keepdims=True), 1e-12)
    centres, _ = kmeans2(descriptors, config.count, minit="++", seed=np.random.default_rng(config.seed))
    nearest = [int(np.argmin(np.linalg.norm(descriptors - c, axis=1))) for c in centres]
    return pixels[nearest]


def surface_points(frame: RGBD, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(P, 2) px and (P, 3) base-frame points of the mask's pixels with a depth reading."""
    pixels = _mask_pixels(mask)
    depth = depth_in_metres(frame.depth)[pixels[:, 1].astype(int), pixels[:, 0].astype(int)]
    valid = np.isfinite(depth)
    return pixels[valid], unproject(frame.K, frame.T_base_camera, pixels[valid], depth[valid])


def farthest_points(points: np.ndarray, count: int) -> np.ndarray:
    """Indices of `count` of the (P, 3) points by farthest point sampling, from the one
    nearest their centroid (deterministic)."""
    chosen = [int(np.argmin(np.linalg.norm(points - points.mean(0), axis=1)))]
    distance = np.linalg.norm(points - points[chosen[0]], axis=1)
    for _ in range(min(count, len(points)) - 1):
        chosen.append(int(np.argmax(distance)))
        distance = np.minimum(distance, np.linalg.norm(points - points[chosen[-1]], axis=1))
    return np.array(chosen)


@dataclass(frozen=True)
class Candidates:
    """Farthest-point candidates: uv (K, 2) px on the reference, in sampling order; found
    (K, D) bool, consistently matched in each demonstration frame; kept (K,) bool."""

    uv: np.ndarray
    found: np.ndarray
    kept: np.ndarray

    @property
    def share(self) -> np.ndarray:
        return self.found.mean(1) if self.found.shape[1] else np.zeros(len(self.uv))


def consistent_candidates(reference: RGBD, features: np.ndarray, mask: np.ndarray, demos: list[tuple[RGBD, np.ndarray]],
                          config: ProposalConfig) -> Candidates:
    """KALM's farthest-point candidates on the reference object (`features` (C, h, w) of
    the reference frame) checked in `demos` [(frame, its features (C, h, w))]."""
    pixels, points = surface_points(reference, mask)
    if len(points) < config.candidates:
        raise ValueError(f"the object has {len(points)} pixels with depth, fewer than {config.candidates} candidates")
    rng = np.random.default_rng(config.seed)
    picks = farthest_points(points, config.candidates)
    groups = []  # per candidate: its pixel, then its neighbours' pixels
    for k in picks:
        near = np.flatnonzero(np.linalg.norm(points - points[k], axis=1) <= config.radius_m)
        near = near[near != k]
        chosen = rng.choice(near, size=min(config.neighbours, len(near)), replace=False) if len(near) else near
        groups.append(np.concatenate([[k], chosen]))
    flat = np.concatenate(groups)
    matcher = Matcher(sample_descriptors(features, pixels[flat], mask.shape))
    starts = np.cumsum([0] + [len(g) for g in groups])
    found = np.zeros((len(picks), len(demos)), bool)
    for d, (frame, demo_features) in enumerate(demos):
        matches = matcher.match(np.asarray(demo_features)[None], frame.rgb.shape[:2])
        xyz, has_depth = lift(matches.uv[0].astype(np.float64), frame.depth, frame.K, frame.T_base_camera)
        for c in range(len(picks)):
            own, rest = starts[c], np.arange(starts[c] + 1, starts[c + 1])
            if not has_depth[own] or len(rest) == 0:
                continue
            close = has_depth[rest] & (np.linalg.norm(xyz[rest] - xyz[own], axis=1) <= 2 * config.radius_m)
            found[c, d] = close.sum() * 2 > len(rest)  # a majority of the group lands with it
    share = found.mean(1) if demos else np.ones(len(picks))
    kept = share >= config.consistency
    kept &= np.cumsum(kept) <= config.count  # spread first: the earliest consistent ones
    return Candidates(pixels[picks], found, kept)
