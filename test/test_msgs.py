"""The message model validates on construction with one-line errors naming class and field."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from helpers import BASE, OPTICAL, STAMP, sample_chunk, sample_keypoints, sample_rgbd, sample_state

from kil.errors import MessageError
from kil.msgs import (
    MESSAGE_TYPES, RGBD, ActionChunk, Buttons, EpisodeControl, FeatureMap, GripperCommand, HandInputs, Keypoints, PoseCommand,
    RobotState, Twist,
)


@pytest.fixture
def rng():
    return np.random.default_rng(3)


def check(error_pattern, build):
    with pytest.raises(MessageError, match=error_pattern) as info:
        build()
    assert "\n" not in str(info.value)


def test_all_types_are_registered():
    assert set(MESSAGE_TYPES) == {"RGBD", "FeatureMap", "Keypoints", "Image", "RobotState", "ActionChunk", "PoseCommand", "GripperCommand", "EStop",
                                 "HandPose", "HandInputs", "Twist", "Buttons", "EpisodeControl", "TaskProgress"}


def test_teleop_messages_are_validated():
    check(r"^EpisodeControl\.command: expected one of start, save, discard, got 'pause'$", lambda: EpisodeControl(STAMP, "pause"))
    check(r"^HandInputs\.button_upper: expected a bool", lambda: HandInputs(STAMP, 1, False, [0, 0], 0.0, 0.0))
    check(r"^HandInputs\.thumb_stick: expected shape \(2,\)", lambda: HandInputs(STAMP, True, False, [0, 0, 0], 0.0, 0.0))
    check(r"^Twist\.angular: contains NaN or inf$", lambda: Twist(STAMP, [0, 0, 0], [0, np.nan, 0]))
    check(r"^Buttons\.pressed\[1\]: expected a bool", lambda: Buttons(STAMP, (True, 2)))


@pytest.mark.parametrize("position", [[np.nan, 0, 0], [0, np.inf, 0]])
def test_non_finite_pose_is_rejected(position):
    check(r"^PoseCommand\.position: contains NaN or inf$", lambda: PoseCommand(STAMP, BASE, position, [0, 0, 0, 1]))


def test_quaternion_must_be_unit_and_is_renormalised():
    check(r"^PoseCommand\.orientation: quaternion norm 2 is not 1", lambda: PoseCommand(STAMP, BASE, [0, 0, 0], [0, 0, 0, 2]))
    check(r"^PoseCommand\.orientation: contains NaN", lambda: PoseCommand(STAMP, BASE, [0, 0, 0], [0, 0, np.nan, 1]))
    command = PoseCommand(STAMP, BASE, [0, 0, 0], [0, 0, 0, 1.0004])
    assert np.linalg.norm(command.orientation) == pytest.approx(1.0, abs=1e-15)


def test_stamps_and_frames():
    check(r"^PoseCommand\.stamp_ns: expected integer nanoseconds, got 1\.5", lambda: PoseCommand(1.5, BASE, [0, 0, 0], [0, 0, 0, 1]))
    check(r"^PoseCommand\.stamp_ns: must be >= 0", lambda: PoseCommand(-1, BASE, [0, 0, 0], [0, 0, 0, 1]))
    check(r"^PoseCommand\.frame_id: expected a non-empty frame id", lambda: PoseCommand(STAMP, "", [0, 0, 0], [0, 0, 0, 1]))
    assert PoseCommand(np.int64(STAMP), BASE, [0, 0, 0], [0, 0, 0, 1]).stamp_ns == STAMP


def test_rgbd_shapes_dtypes_and_calibration(rng):
    good = sample_rgbd(rng)
    fields = {f.name: getattr(good, f.name) for f in dataclasses.fields(RGBD)}
    check(r"^RGBD\.rgb: expected dtype uint8, got float32", lambda: RGBD(**{**fields, "rgb": good.rgb.astype(np.float32)}))
    check(r"^RGBD\.rgb: expected shape \(\*, \*, 3\), got \(12, 16, 4\)", lambda: RGBD(**{**fields, "rgb": np.zeros((12, 16, 4), np.uint8)}))
    check(r"^RGBD\.depth: expected shape \(12, 16\), got \(12, 15\)", lambda: RGBD(**{**fields, "depth": good.depth[:, :15]}))
    check(r"^RGBD\.K: expected positive focal lengths", lambda: RGBD(**{**fields, "K": np.diag([0.0, 1.0, 1.0])}))
    bent = good.T_base_camera.copy()
    bent[0, 0] = 2.0
    check(r"^RGBD\.T_base_camera: not a rigid transform", lambda: RGBD(**{**fields, "T_base_camera": bent}))
    check(r"^RGBD\.depth: expected a real float32 array, got dtype <U1", lambda: RGBD(**{**fields, "depth": np.full((12, 16), "a")}))


def test_arrays_are_frozen_copies(rng):
    rgb = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    rgbd = RGBD(STAMP, OPTICAL, rgb, np.ones((4, 4), np.float32), np.eye(3), BASE, np.eye(4))
    rgb[0, 0, 0] = 7
    assert rgbd.rgb[0, 0, 0] != 7 or rgb is not rgbd.rgb
    assert not rgbd.rgb.flags.writeable and not rgbd.depth.flags.writeable
    with pytest.raises(ValueError):
        rgbd.rgb[0, 0, 0] = 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        rgbd.stamp_ns = 0


def test_keypoints_rules(rng):
    kps = sample_keypoints(rng)
    fields = {f.name: getattr(kps, f.name) for f in dataclasses.fields(Keypoints)}
    check(r"^Keypoints\.names: names must be unique", lambda: Keypoints(**{**fields, "names": ("a", "a", "b", "c", "d")}))
    check(r"^Keypoints\.uv: expected shape \(5, 2\), got \(4, 2\)", lambda: Keypoints(**{**fields, "uv": kps.uv[:4]}))
    check(r"^Keypoints\.visible: expected dtype bool, got int64", lambda: Keypoints(**{**fields, "visible": kps.visible.astype(np.int64)}))
    xyz = np.array(kps.xyz)
    xyz[0] = np.nan  # keypoint 0 is visible
    check(r"^Keypoints\.xyz: contains NaN or inf for a visible keypoint", lambda: Keypoints(**{**fields, "xyz": xyz}))
    assert Keypoints(**{**fields, "instance": None}).instance.tolist() == [0] * 5


def test_feature_map_robot_state_chunk_and_gripper(rng):
    check(r"^FeatureMap\.features: expected shape \(\*, \*, \*\), got \(3, 4\)", lambda: FeatureMap(STAMP, OPTICAL, np.zeros((3, 4))))
    check(r"^FeatureMap\.features: contains NaN", lambda: FeatureMap(STAMP, OPTICAL, np.full((2, 2, 2), np.nan)))
    state = sample_state(rng)
    check(r"^RobotState\.joint_positions: expected shape \(7,\)", lambda: RobotState(STAMP, BASE, state.position, state.orientation, 0.0, state.joint_names, np.zeros(6)))
    check(r"^RobotState\.gripper: must be >= 0\.0", lambda: RobotState(STAMP, BASE, state.position, state.orientation, -0.01))
    chunk = sample_chunk(rng)
    check(r"^ActionChunk\.dt: must be > 0 seconds", lambda: ActionChunk(STAMP, BASE, 0.0, chunk.positions, chunk.orientations, chunk.gripper))
    check(r"^ActionChunk\.positions: needs at least 2 waypoints", lambda: ActionChunk(STAMP, BASE, 0.1, chunk.positions[:1], chunk.orientations[:1], chunk.gripper[:1]))
    check(r"^ActionChunk\.orientations: expected shape \(8, 4\)", lambda: ActionChunk(STAMP, BASE, 0.1, chunk.positions, chunk.orientations[:7], chunk.gripper))
    check(r"^GripperCommand\.position: must be finite", lambda: GripperCommand(STAMP, float("nan")))
    np.testing.assert_array_equal(chunk.waypoint_stamps_ns() - STAMP, np.arange(8) * 100_000_000)
