"""Rigid-body helpers. Quaternions are (x, y, z, w) as in ROS; poses are 4x4 matrices."""

from __future__ import annotations

import numpy as np


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """(4,) unit quaternion (x, y, z, w) -> (3, 3) rotation matrix."""
    x, y, z, w = np.asarray(q, dtype=np.float64)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def matrix_to_quat(R: np.ndarray) -> np.ndarray:
    """(3, 3) rotation matrix -> (4,) unit quaternion (x, y, z, w) with w >= 0."""
    R = np.asarray(R, dtype=np.float64)
    trace = np.trace(R)
    if trace > 0:
        s = 2.0 * np.sqrt(trace + 1.0)
        q = [(R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s, 0.25 * s]
    else:
        i = int(np.argmax(np.diag(R)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * np.sqrt(1.0 + R[i, i] - R[j, j] - R[k, k])
        q = [0.0, 0.0, 0.0, (R[k, j] - R[j, k]) / s]
        q[i] = 0.25 * s
        q[j] = (R[j, i] + R[i, j]) / s
        q[k] = (R[k, i] + R[i, k]) / s
    q = np.asarray(q)
    q /= np.linalg.norm(q)
    return -q if q[3] < 0 else q


def pose_to_matrix(position: np.ndarray, orientation: np.ndarray) -> np.ndarray:
    """Position (3,) metres and quaternion (x, y, z, w) -> (4, 4) homogeneous transform."""
    T = np.eye(4)
    T[:3, :3] = quat_to_matrix(orientation)
    T[:3, 3] = position
    return T


def matrix_to_pose(T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(4, 4) homogeneous transform -> (position (3,), quaternion (x, y, z, w))."""
    T = np.asarray(T, dtype=np.float64)
    return T[:3, 3].copy(), matrix_to_quat(T[:3, :3])


def invert(T: np.ndarray) -> np.ndarray:
    """Inverse of a (4, 4) rigid transform."""
    inv = np.eye(4)
    R = T[:3, :3]
    inv[:3, :3] = R.T
    inv[:3, 3] = -R.T @ T[:3, 3]
    return inv


def is_rigid(T: np.ndarray, atol: float = 1e-5) -> bool:
    """True for a finite (4, 4) matrix with an orthonormal, right-handed rotation block."""
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4) or not np.all(np.isfinite(T)):
        return False
    R = T[:3, :3]
    return (
        np.allclose(R.T @ R, np.eye(3), atol=atol)
        and abs(np.linalg.det(R) - 1.0) < atol
        and np.allclose(T[3], [0, 0, 0, 1], atol=atol)
    )


def project(K: np.ndarray, T_base_camera: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixels of base-frame points: ((N, 2) (u, v) pixels, (N,) depth along the optical axis
    in metres). `T_base_camera` is the (4, 4) optical-frame pose in the base frame."""
    points = np.asarray(points, dtype=float).reshape(-1, 3)
    cam = (points - T_base_camera[:3, 3]) @ T_base_camera[:3, :3]
    z = cam[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = (cam[:, :2] / z[:, None]) * [K[0, 0], K[1, 1]] + [K[0, 2], K[1, 2]]
    return uv, z


def unproject(K: np.ndarray, T_base_camera: np.ndarray, uv: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """(N, 3) base-frame points seen at pixels `uv` (N, 2) with optical-axis depth (N,) metres."""
    uv = np.asarray(uv, dtype=float).reshape(-1, 2)
    depth = np.asarray(depth, dtype=float).reshape(-1)
    cam = np.stack([(uv[:, 0] - K[0, 2]) / K[0, 0] * depth, (uv[:, 1] - K[1, 2]) / K[1, 1] * depth, depth], axis=1)
    return cam @ T_base_camera[:3, :3].T + T_base_camera[:3, 3]


def look_at_pose(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(4, 4) pose of an optical frame (z forward, x right, y down) at `eye` facing `target`;
    image rows run downwards in the world (x stays horizontal)."""
    z = np.asarray(target, float) - np.asarray(eye, float)
    z /= np.linalg.norm(z)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    T = np.eye(4)
    T[:3, :3] = np.stack([x, np.cross(z, x), z], axis=1)
    T[:3, 3] = eye
    return T
