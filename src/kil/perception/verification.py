"""Geometric verification of one object's keypoints: they must sit where the reference has
them relative to each other.

Each keypoint comes with a few candidate places in the frame (best first). A hypothesis is
the 2-D similarity transform (scale, rotation, translation) that carries two reference
keypoints onto one candidate each; the other keypoints must then lie within a tolerance of
where it carries them. The hypothesis with the most agreeing score wins; every keypoint
takes its best candidate inside the tolerance, and a keypoint with none is rejected (it is
hidden, or only clutter looks like it). A similarity transform is not exact for an object
turned under a tilted camera or for points at several heights, so the tolerance grows
with the object's size in the image (`tolerance_share` of its keypoints' spread); what it
is for are jumps to clutter and to the gripper, which land far outside it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kil.config import require


@dataclass(frozen=True)
class GeometryConfig:
    """tolerance_px + tolerance_share * scale * spread: how far (px) a keypoint may lie from
    where a hypothesis puts it; scale_range: the object's image scale relative to the
    reference that is plausible (held-out instances, other distances); min_inliers:
    keypoints that must agree (at most the object's keypoint count)."""

    tolerance_px: float = 6.0
    tolerance_share: float = 0.35
    scale_range: tuple[float, float] = (0.4, 2.5)
    min_inliers: int = 3

    def __post_init__(self) -> None:
        require(self.tolerance_px > 0 and self.tolerance_share >= 0, "tolerance_px", "tolerances must be positive")
        require(0 < self.scale_range[0] < self.scale_range[1], "scale_range", f"expected 0 < low < high, got {self.scale_range}")
        require(self.min_inliers >= 2, "min_inliers", f"two keypoints define a hypothesis, got {self.min_inliers}")


def reachable(candidate_uv: np.ndarray, usable: np.ndarray, anchor: np.ndarray | None, radius_px: float) -> np.ndarray:
    """(M, K) usable candidates that lie within radius_px of their keypoint's anchor (M, 2)
    px (NaN or None: no anchor, any place)."""
    if anchor is None:
        return usable
    known = np.isfinite(anchor[:, 0])
    near = np.linalg.norm(candidate_uv - anchor[:, None], axis=2) <= radius_px
    return usable & (near | ~known[:, None])


def verify_object(reference_uv: np.ndarray, candidate_uv: np.ndarray, candidate_score: np.ndarray, usable: np.ndarray,
                  config: GeometryConfig = GeometryConfig(), anchor: np.ndarray | None = None,
                  radius_px: float = np.inf) -> np.ndarray:
    """Which candidate each keypoint of one object takes, or -1 (rejected).

    reference_uv: (M, 2) px in the reference image; candidate_uv: (M, K, 2) px in the frame;
    candidate_score: (M, K) similarity; usable: (M, K) bool (scored high enough to count).
    anchor: (M, 2) px where the object's keypoints were last seen (NaN: unknown), with
    radius_px: only places whose keypoints lie within that mean distance of it count
    (`kil.perception.permanence`). Objects with fewer than 3 keypoints cannot be checked:
    each keeps its first usable candidate (within the radius of its anchor).
    """
    M, K = candidate_score.shape
    usable = reachable(candidate_uv, usable, anchor, radius_px)
    if M < 3:
        return np.where(usable.any(1), usable.argmax(1), -1)
    known = np.zeros(M, bool) if anchor is None else np.isfinite(anchor[:, 0])
    r = reference_uv[:, 0] + 1j * reference_uv[:, 1]  # (M,)
    c = candidate_uv[..., 0] + 1j * candidate_uv[..., 1]  # (M, K)
    spread = float(np.mean(np.abs(r - r.mean())))
    a, b = np.triu_indices(M, 1)
    apart = np.abs(r[b] - r[a]) > 1.0
    a, b = a[apart], b[apart]
    ka, kb = np.meshgrid(np.arange(K), np.arange(K), indexing="ij")
    ka, kb = ka.ravel(), kb.ravel()
    # hypotheses: every pair of keypoints x every pair of their usable candidates
    ha, hb = np.repeat(a, K * K), np.repeat(b, K * K)
    hka, hkb = np.tile(ka, len(a)), np.tile(kb, len(a))
    ok = usable[ha, hka] & usable[hb, hkb]
    ha, hb, hka, hkb = ha[ok], hb[ok], hka[ok], hkb[ok]
    if len(ha) == 0:
        return np.full(M, -1)
    z = (c[hb, hkb] - c[ha, hka]) / (r[hb] - r[ha])  # scale and rotation
    plausible = (np.abs(z) >= config.scale_range[0]) & (np.abs(z) <= config.scale_range[1])
    ha, hka, z = ha[plausible], hka[plausible], z[plausible]
    predicted = c[ha, hka][:, None] + z[:, None] * (r[None, :] - r[ha][:, None])  # (H, M)
    if known.any():  # the object where it can have got to since it was last seen
        last = anchor[known, 0] + 1j * anchor[known, 1]
        within = np.abs(predicted[:, known] - last).mean(1) <= radius_px
        predicted, z = predicted[within], z[within]
    if len(z) == 0:
        return np.full(M, -1)
    tolerance = config.tolerance_px + config.tolerance_share * np.abs(z) * spread  # (H,)
    distance = np.abs(c[None] - predicted[:, :, None])  # (H, M, K)
    inlier = usable[None] & (distance <= tolerance[:, None, None])
    agreeing = np.where(inlier, candidate_score[None], -np.inf).max(2)  # (H, M): best agreeing score per keypoint
    support = np.isfinite(agreeing)
    count = support.sum(1)
    value = count + np.where(support, agreeing, 0).sum(1) / (M + 1)  # more keypoints first, then their scores
    best = int(np.argmax(value))
    if count[best] < min(config.min_inliers, M):
        return np.full(M, -1)
    scores = np.where(inlier[best], candidate_score, -np.inf)
    return np.where(support[best], scores.argmax(1), -1)
