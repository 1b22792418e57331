"""Policy representations: 6-D rotations, Euler angles, min-max normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from kil.policy.normalizer import MinMax, Normalizer
from kil.policy.rotation import euler_to_quat, matrix_to_rot6d, quat_to_euler, quat_to_rot6d, rot6d_to_matrix, rot6d_to_quat


def test_rot6d_round_trip_numpy_and_torch():
    R = Rotation.random(200, random_state=0).as_matrix()
    r6 = matrix_to_rot6d(R)
    assert r6.shape == (200, 6)
    np.testing.assert_allclose(rot6d_to_matrix(r6), R, atol=1e-12)
    back = rot6d_to_matrix(torch.from_numpy(r6))
    np.testing.assert_allclose(back.numpy(), R, atol=1e-12)
    q = Rotation.random(50, random_state=1).as_quat()
    q2 = rot6d_to_quat(quat_to_rot6d(q))
    assert np.allclose(np.abs((q * q2).sum(-1)), 1.0)  # same rotation (q and -q)


def test_rot6d_of_a_noisy_vector_is_a_proper_rotation():
    noisy = matrix_to_rot6d(Rotation.random(20, random_state=2).as_matrix()) + np.random.default_rng(0).normal(0, 0.1, (20, 6))
    R = rot6d_to_matrix(noisy)
    np.testing.assert_allclose(R @ np.swapaxes(R, -1, -2), np.broadcast_to(np.eye(3), R.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-12)


def test_euler_round_trip():
    q = Rotation.random(100, random_state=3).as_quat()
    q2 = euler_to_quat(quat_to_euler(q))
    assert np.allclose(np.abs((q * q2).sum(-1)), 1.0)


def test_min_max_round_trip_constant_dims_and_nan():
    rng = np.random.default_rng(4)
    data = rng.uniform(-3, 7, (100, 16, 4)).astype(np.float32)
    data[..., 2] = 0.5  # a dimension that never varies
    data[0, 0, 0] = np.nan  # an invisible keypoint
    mm = MinMax.fit(data)
    y = mm.normalize(torch.from_numpy(np.nan_to_num(data[1:])))
    assert float(y.min()) >= -1 - 1e-6 and float(y.max()) <= 1 + 1e-6
    assert torch.all(y[..., 2] == 0)
    torch.testing.assert_close(mm.unnormalize(y), torch.from_numpy(np.nan_to_num(data[1:])), atol=1e-5, rtol=0)
    norm = Normalizer({"action": mm, "proprio": MinMax.fit(rng.normal(size=(10, 7)))})
    again = Normalizer.from_state_dict(norm.state_dict())
    torch.testing.assert_close(again["action"].low, mm.low)
    with pytest.raises(ValueError, match="no finite value"):
        MinMax.fit(np.full((3, 2), np.nan))
