"""Builders of valid sample messages and comparison helpers shared by the tests."""

from __future__ import annotations

import math

import numpy as np

from kil.geometry import matrix_to_quat
from kil.msgs import (
    RGBD, ActionChunk, Buttons, EpisodeControl, EStop, FeatureMap, GripperCommand, HandInputs, HandPose, Image, Keypoints,
    PoseCommand, RobotState, TaskProgress, Twist,
)

STAMP = 1_700_000_123_456_789_012
BASE = "panda_link0"
OPTICAL = "zed_left_camera_frame_optical"


def rotation_z(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def camera_pose() -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = rotation_z(0.3) @ np.array([[1.0, 0, 0], [0, -1, 0], [0, 0, -1]])
    T[:3, 3] = [0.5, -0.1, 0.8]
    return T


def sample_rgbd(rng: np.random.Generator, height: int = 12, width: int = 16) -> RGBD:
    depth = rng.uniform(0.3, 2.0, (height, width)).astype(np.float32)
    depth[0, 0], depth[1, 1], depth[2, 2] = np.nan, np.inf, -np.inf
    return RGBD(
        stamp_ns=STAMP,
        frame_id=OPTICAL,
        rgb=rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
        depth=depth,
        K=np.array([[20.0, 0, 7.5], [0, 21.0, 5.5], [0, 0, 1]]),
        base_frame_id=BASE,
        T_base_camera=camera_pose(),
        distortion=np.array([0.01, -0.02, 0.0, 0.0, 0.001]),
    )


def sample_features(rng: np.random.Generator, channels: int = 7) -> FeatureMap:
    return FeatureMap(STAMP, OPTICAL, rng.standard_normal((channels, 3, 5)).astype(np.float32))


def sample_keypoints(rng: np.random.Generator, n: int = 5, similarity: bool = False) -> Keypoints:
    visible = np.array([True, False, True, True, False][:n])
    xyz = rng.uniform(-1, 1, (n, 3)).astype(np.float32)
    xyz[~visible] = np.nan
    return Keypoints(
        stamp_ns=STAMP,
        frame_id=BASE,
        names=tuple(f"point_{i}" for i in range(n)),
        uv=rng.uniform(0, 640, (n, 2)),
        xyz=xyz,
        score=rng.uniform(0, 1, n),
        visible=visible,
        instance=np.arange(n, dtype=np.int32) % 2,
        similarity=rng.uniform(-1, 1, (n, n)).astype(np.float32) if similarity else None,
    )


def sample_image(rng: np.random.Generator) -> Image:
    return Image(STAMP, OPTICAL, rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))


def sample_quaternion(rng: np.random.Generator) -> np.ndarray:
    q = rng.standard_normal(4)
    return q / np.linalg.norm(q)


def sample_state(rng: np.random.Generator) -> RobotState:
    return RobotState(
        stamp_ns=STAMP,
        frame_id=BASE,
        position=rng.uniform(-1, 1, 3),
        orientation=sample_quaternion(rng),
        gripper=0.035,
        joint_names=tuple(f"panda_joint{i}" for i in range(1, 8)),
        joint_positions=rng.uniform(-2, 2, 7),
    )


def sample_chunk(rng: np.random.Generator, horizon: int = 8, dt: float = 0.1) -> ActionChunk:
    return ActionChunk(
        stamp_ns=STAMP,
        frame_id=BASE,
        dt=dt,
        positions=rng.uniform(-1, 1, (horizon, 3)),
        orientations=np.array([sample_quaternion(rng) for _ in range(horizon)]),
        gripper=rng.uniform(0, 0.08, horizon),
    )


def sample_pose_command(rng: np.random.Generator) -> PoseCommand:
    return PoseCommand(STAMP, BASE, rng.uniform(-1, 1, 3), sample_quaternion(rng))


def sample_gripper_command() -> GripperCommand:
    return GripperCommand(STAMP, position=0.02, max_effort=40.0)


def look_down_quaternion(yaw: float = 0.0) -> np.ndarray:
    return matrix_to_quat(rotation_z(yaw) @ np.diag([1.0, -1.0, -1.0]))


def assert_messages_equal(a, b, approx: tuple[str, ...] = ("T_base_camera",)) -> None:
    """Field-by-field equality of two project messages (NaN equals NaN). Fields in `approx`
    agree to 1e-12: the camera pose travels as a TF quaternion, which rounds in the last bit."""
    assert type(a) is type(b)
    for name, value in vars(a).items():
        other = getattr(b, name)
        if name in approx:
            np.testing.assert_allclose(value, other, rtol=0, atol=1e-12, err_msg=name)
        elif isinstance(value, np.ndarray):
            assert value.dtype == other.dtype, name
            np.testing.assert_array_equal(value, other, err_msg=name)
        else:
            assert value == other, name


def sample_of_every_type(rng: np.random.Generator) -> dict[str, object]:
    """One valid message of each project message type, by type name."""
    return {
        "RGBD": sample_rgbd(rng),
        "FeatureMap": sample_features(rng),
        "Keypoints": sample_keypoints(rng, similarity=True),
        "Image": sample_image(rng),
        "RobotState": sample_state(rng),
        "ActionChunk": sample_chunk(rng),
        "PoseCommand": sample_pose_command(rng),
        "GripperCommand": sample_gripper_command(),
        "EStop": EStop(STAMP, engaged=True),
        "HandPose": HandPose(STAMP, "quest", rng.normal(size=3), sample_quaternion(rng)),
        # float32 on the wire: values exactly representable in it
        "HandInputs": HandInputs(STAMP, True, False, np.array([0.5, -0.25]), index=0.75, middle=1.0),
        "Twist": Twist(STAMP, rng.normal(size=3), rng.normal(size=3)),
        "Buttons": Buttons(STAMP, (False, True)),
        "EpisodeControl": EpisodeControl(STAMP, "save"),
        "TaskProgress": TaskProgress(STAMP, 0.5),
    }
