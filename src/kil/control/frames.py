"""Poses re-expressed in another frame through the runtime's TF (a stage's `io`)."""

from __future__ import annotations

import numpy as np

from kil.geometry import matrix_to_pose, pose_to_matrix


def pose_in_frame(io, target_frame: str, frame: str, stamp_ns: int, position: np.ndarray,
                  orientation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(position (3,) m, quaternion (x, y, z, w)) of a pose given in `frame`, expressed in
    `target_frame` with TF at `stamp_ns` (static transforms hold at any stamp).
    Raises kil.errors.TransformError when TF has no such transform."""
    positions, orientations = points_in_frame(io, target_frame, frame, stamp_ns, np.asarray(position, float)[None],
                                              np.asarray(orientation, float)[None])
    return positions[0], orientations[0]


def points_in_frame(io, target_frame: str, frame: str, stamp_ns: int, positions: np.ndarray,
                    orientations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(T, 3) positions and (T, 4) quaternions of poses in `frame`, in `target_frame`."""
    if frame == target_frame:
        return positions, orientations
    T = io.lookup_transform(target_frame, frame, stamp_ns)
    poses = [matrix_to_pose(T @ pose_to_matrix(p, q)) for p, q in zip(positions, orientations)]
    return np.array([p for p, _ in poses]), np.array([q for _, q in poses])
