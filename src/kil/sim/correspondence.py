"""Exact pixel correspondences between two rendered views of the simulated scene.

A pixel of view A is lifted with A's depth to a 3D point, expressed in the frame of the
body it lies on (from A's segmentation and that body's pose at A), carried to that body's
pose at B, and projected into B. It corresponds when B sees that same body there at the
same depth (not occluded, inside the image). Camera motion, object motion, or both.

Across scenes with different instances of one category, `category_correspondences` relates
points by their object-frame coordinates scaled by the instances' extents (the semantic
keypoints of config/sim/objects.yaml are placed the same way), which is exact for the
scaled box, cylinder and mug shapes of one category.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kil.geometry import project, unproject


@dataclass(frozen=True)
class View:
    """One rendered view: rgb (H, W, 3) uint8; depth (H, W) float32 metres; bodies (H, W)
    int32 MuJoCo body id per pixel (-1 none); K (3, 3); T_base_camera (4, 4) optical frame
    in the base frame; body_poses: body id -> (4, 4) pose in the base frame at render time;
    objects: the category and half extents of each task object's body (and the fixture's);
    robot: the arm's and gripper's bodies; distractors: the clutter's bodies."""

    rgb: np.ndarray
    depth: np.ndarray
    bodies: np.ndarray
    K: np.ndarray
    T_base_camera: np.ndarray
    body_poses: dict[int, np.ndarray]
    objects: dict[int, tuple[str, np.ndarray]] = field(default_factory=dict)  # body id -> (category, (3,) half extents)
    robot: frozenset[int] = frozenset()  # body ids of the arm and its gripper
    distractors: frozenset[int] = frozenset()  # body ids of clutter (scene variation)


def correspondences(a: View, b: View, uv_a: np.ndarray, depth_tolerance: float = 0.004) -> tuple[np.ndarray, np.ndarray]:
    """Pixels in view B of the integer pixels `uv_a` (N, 2) (u, v) of view A.

    Returns ((N, 2) float (u, v) in B, (N,) bool valid). Invalid: no depth or body at the
    pixel in A, the body not in B, behind B's camera, outside B, or occluded in B (B's depth
    there differs by more than `depth_tolerance` metres or shows another body)."""
    carries = {
        body: (body, b.body_poses[body] @ np.linalg.inv(a.body_poses[body]))
        for body in a.body_poses if body in b.body_poses
    }
    return _carry(a, b, uv_a, carries, depth_tolerance)


def category_correspondences(a: View, b: View, uv_a: np.ndarray, depth_tolerance: float = 0.004) -> tuple[np.ndarray, np.ndarray]:
    """Like `correspondences`, between the objects of one category in two different scenes:
    a point of A's instance maps to the point of B's instance with the same object-frame
    coordinates scaled by the ratio of their extents. Only categories with exactly one body
    in each view take part (two of a kind would be ambiguous)."""
    def single(view: View) -> dict[str, int]:
        counts: dict[str, list[int]] = {}
        for body, (category, _) in view.objects.items():
            counts.setdefault(category, []).append(body)
        return {c: bodies[0] for c, bodies in counts.items() if len(bodies) == 1}

    in_b = single(b)
    carries = {}
    for category, body_a in single(a).items():
        body_b = in_b.get(category)
        if body_b is None or body_a not in a.body_poses or body_b not in b.body_poses:
            continue
        scale = np.eye(4)
        scale[:3, :3] = np.diag(b.objects[body_b][1] / a.objects[body_a][1])
        carries[body_a] = (body_b, b.body_poses[body_b] @ scale @ np.linalg.inv(a.body_poses[body_a]))
    return _carry(a, b, uv_a, carries, depth_tolerance)


def _carry(a: View, b: View, uv_a: np.ndarray, carries: dict[int, tuple[int, np.ndarray]],
           depth_tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """Move A's pixels with the per-body transforms `carries` (A body -> (B body, (4, 4)
    base-frame transform)) and keep those B sees unoccluded on the expected body."""
    uv_a = np.asarray(uv_a, dtype=int).reshape(-1, 2)
    n = len(uv_a)
    body = a.bodies[uv_a[:, 1], uv_a[:, 0]]
    depth = a.depth[uv_a[:, 1], uv_a[:, 0]].astype(float)
    points = unproject(a.K, a.T_base_camera, uv_a, depth)
    moved = np.full((n, 3), np.nan)
    target = np.full(n, -2, dtype=np.int64)
    for body_id in np.unique(body):
        if body_id < 0 or int(body_id) not in carries:
            continue
        rows = body == body_id
        target[rows], carry = carries[int(body_id)]
        moved[rows] = points[rows] @ carry[:3, :3].T + carry[:3, 3]
    uv_b, z_b = project(b.K, b.T_base_camera, moved)
    h, w = b.depth.shape
    px = np.round(np.nan_to_num(uv_b, nan=-1.0)).astype(int)
    valid = np.isfinite(z_b) & (z_b > 0) & (px[:, 0] >= 0) & (px[:, 0] < w) & (px[:, 1] >= 0) & (px[:, 1] < h)
    valid &= np.isfinite(depth) & (depth > 0)
    seen_depth = np.where(valid, b.depth[np.clip(px[:, 1], 0, h - 1), np.clip(px[:, 0], 0, w - 1)], np.nan)
    seen_body = np.where(valid, b.bodies[np.clip(px[:, 1], 0, h - 1), np.clip(px[:, 0], 0, w - 1)], -1)
    valid &= (np.abs(seen_depth - z_b) < depth_tolerance) & (seen_body == target)
    return uv_b, valid
