"""Exact pixel correspondences between two rendered views of the simulated scene.

A pixel of view A is lifted with A's depth to a 3D point, expressed in the frame of the
body it lies on (from A's segmentation and that body's pose at A), carried to that body's
pose at B, and projected into B. It corresponds when B sees that same body there at the
same depth (not occluded, inside the image). Camera motion, object motion, or both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kil.geometry import project, unproject


@dataclass(frozen=True)
class View:
    """One rendered view: rgb (H, W, 3) uint8; depth (H, W) float32 metres; bodies (H, W)
    int32 MuJoCo body id per pixel (-1 none); K (3, 3); T_base_camera (4, 4) optical frame
    in the base frame; body_poses: body id -> (4, 4) pose in the base frame at render time."""

    rgb: np.ndarray
    depth: np.ndarray
    bodies: np.ndarray
    K: np.ndarray
    T_base_camera: np.ndarray
    body_poses: dict[int, np.ndarray]


def correspondences(a: View, b: View, uv_a: np.ndarray, depth_tolerance: float = 0.004) -> tuple[np.ndarray, np.ndarray]:
    """Pixels in view B of the integer pixels `uv_a` (N, 2) (u, v) of view A.

    Returns ((N, 2) float (u, v) in B, (N,) bool valid). Invalid: no depth or body at the
    pixel in A, the body not in B, behind B's camera, outside B, or occluded in B (B's depth
    there differs by more than `depth_tolerance` metres or shows another body)."""
    uv_a = np.asarray(uv_a, dtype=int).reshape(-1, 2)
    n = len(uv_a)
    body = a.bodies[uv_a[:, 1], uv_a[:, 0]]
    depth = a.depth[uv_a[:, 1], uv_a[:, 0]].astype(float)
    points = unproject(a.K, a.T_base_camera, uv_a, depth)
    moved = np.full((n, 3), np.nan)
    for body_id in np.unique(body):
        if body_id < 0 or body_id not in a.body_poses or body_id not in b.body_poses:
            continue
        rows = body == body_id
        carry = b.body_poses[body_id] @ np.linalg.inv(a.body_poses[body_id])
        moved[rows] = points[rows] @ carry[:3, :3].T + carry[:3, 3]
    uv_b, z_b = project(b.K, b.T_base_camera, moved)
    h, w = b.depth.shape
    px = np.round(np.nan_to_num(uv_b, nan=-1.0)).astype(int)
    valid = np.isfinite(z_b) & (z_b > 0) & (px[:, 0] >= 0) & (px[:, 0] < w) & (px[:, 1] >= 0) & (px[:, 1] < h)
    valid &= np.isfinite(depth) & (depth > 0)
    seen_depth = np.where(valid, b.depth[np.clip(px[:, 1], 0, h - 1), np.clip(px[:, 0], 0, w - 1)], np.nan)
    seen_body = np.where(valid, b.bodies[np.clip(px[:, 1], 0, h - 1), np.clip(px[:, 0], 0, w - 1)], -1)
    valid &= (np.abs(seen_depth - z_b) < depth_tolerance) & (seen_body == body)
    return uv_b, valid
