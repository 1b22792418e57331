"""Rotation representations of the policy's inputs and actions.

Actions carry the 6-D rotation (the first two columns of the rotation matrix, continuous,
as diffusion policy uses); the proprioceptive state carries Euler angles (paper 001).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial.transform import Rotation

EULER_ORDER = "xyz"  # extrinsic roll, pitch, yaw about the base axes


def matrix_to_rot6d(R: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotation matrices -> (..., 6): column 0 then column 1."""
    R = np.asarray(R)
    return np.concatenate([R[..., :, 0], R[..., :, 1]], axis=-1)


def rot6d_to_matrix(r6: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """(..., 6) -> (..., 3, 3) rotation matrices by Gram-Schmidt (any 6-vector whose halves
    are not parallel gives a proper rotation; a network's output need not be exact)."""
    if isinstance(r6, torch.Tensor):
        x = torch.nn.functional.normalize(r6[..., :3], dim=-1)
        b = r6[..., 3:]
        y = torch.nn.functional.normalize(b - (x * b).sum(-1, keepdim=True) * x, dim=-1)
        return torch.stack([x, y, torch.cross(x, y, dim=-1)], dim=-1)
    r6 = np.asarray(r6, float)
    x = _unit(r6[..., :3])
    b = r6[..., 3:]
    y = _unit(b - (x * b).sum(-1, keepdims=True) * x)
    return np.stack([x, y, np.cross(x, y)], axis=-1)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def quat_to_rot6d(q: np.ndarray) -> np.ndarray:
    """(..., 4) unit quaternions (x, y, z, w) -> (..., 6)."""
    q = np.asarray(q, float)
    return matrix_to_rot6d(Rotation.from_quat(q.reshape(-1, 4)).as_matrix().reshape(*q.shape[:-1], 3, 3))


def rot6d_to_quat(r6: np.ndarray) -> np.ndarray:
    """(..., 6) -> (..., 4) unit quaternions (x, y, z, w)."""
    r6 = np.asarray(r6, float)
    R = rot6d_to_matrix(r6)
    return Rotation.from_matrix(R.reshape(-1, 3, 3)).as_quat().reshape(*r6.shape[:-1], 4)


def quat_to_euler(q: np.ndarray) -> np.ndarray:
    """(..., 4) quaternions (x, y, z, w) -> (..., 3) Euler angles in radians (EULER_ORDER)."""
    q = np.asarray(q, float)
    return Rotation.from_quat(q.reshape(-1, 4)).as_euler(EULER_ORDER).reshape(*q.shape[:-1], 3)


def euler_to_quat(e: np.ndarray) -> np.ndarray:
    e = np.asarray(e, float)
    return Rotation.from_euler(EULER_ORDER, e.reshape(-1, 3)).as_quat().reshape(*e.shape[:-1], 4)
