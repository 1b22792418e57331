"""The project's message model: what flows between stages, independent of ROS.

Every message carries `stamp_ns` (integer nanoseconds, the stamp of the camera frame it
derives from, or of the sensor reading) and the frame its geometry is expressed in.
Arrays are numpy, validated on construction (shape, dtype, finite where required) and
made read-only, so one message object can be handed to many subscribers safely.
A violation raises `MessageError` naming the class and field, on one line.

Conventions: positions in metres, quaternions (x, y, z, w), pixels (u, v) with u along
the image width, gripper openings in metres between the fingers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kil.errors import ConfigError, MessageError
from kil.geometry import is_rigid

QUAT_TOLERANCE = 1e-3  # accepted |‖q‖ - 1|; quaternions are renormalised exactly


def _fail(owner: str, name: str, problem: str) -> MessageError:
    return MessageError(f"{owner}.{name}: {problem}")


def _check_stamp(owner: str, stamp_ns: Any) -> int:
    if isinstance(stamp_ns, (bool, float)) or not isinstance(stamp_ns, (int, np.integer)):
        raise _fail(owner, "stamp_ns", f"expected integer nanoseconds, got {stamp_ns!r}")
    if stamp_ns < 0:
        raise _fail(owner, "stamp_ns", f"must be >= 0, got {stamp_ns}")
    return int(stamp_ns)


def _check_frame(owner: str, name: str, frame: Any) -> str:
    if not isinstance(frame, str) or not frame or frame.strip() != frame:
        raise _fail(owner, name, f"expected a non-empty frame id without spaces, got {frame!r}")
    return frame


def _shape_text(shape: tuple) -> str:
    text = ", ".join("*" if d is None else str(d) for d in shape)
    return f"({text},)" if len(shape) == 1 else f"({text})"


def _check_array(
    owner: str,
    name: str,
    value: Any,
    dtype: Any,
    shape: tuple[int | None, ...],
    *,
    finite: bool = False,
) -> np.ndarray:
    """Validate and freeze an array field.

    Floating fields accept any real numeric input and are cast to `dtype`; integer, bool
    and uint8 fields must already have exactly that dtype (a silent cast would hide bugs
    such as float images). `None` in `shape` is a free dimension.
    """
    dtype = np.dtype(dtype)
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as err:
        raise _fail(owner, name, f"not an array ({err})") from err
    if dtype.kind == "f":
        if arr.dtype.kind not in "fiu":
            raise _fail(owner, name, f"expected a real {dtype.name} array, got dtype {arr.dtype}")
        arr = arr.astype(dtype, copy=False)
    elif arr.dtype != dtype:
        raise _fail(owner, name, f"expected dtype {dtype.name}, got {arr.dtype}")
    if arr.ndim != len(shape) or any(d is not None and d != s for d, s in zip(shape, arr.shape)):
        raise _fail(owner, name, f"expected shape {_shape_text(shape)}, got {tuple(arr.shape)}")
    if finite and not np.all(np.isfinite(arr)):
        raise _fail(owner, name, "contains NaN or inf")
    if arr.flags.writeable:
        if arr is value or np.may_share_memory(arr, value):
            arr = arr.copy()
        arr.flags.writeable = False
    return arr


def _check_quaternions(owner: str, name: str, value: Any, leading: tuple[int | None, ...]) -> np.ndarray:
    q = np.array(_check_array(owner, name, value, np.float64, (*leading, 4), finite=True))
    norms = np.linalg.norm(q, axis=-1)
    bad = np.abs(norms - 1.0) > QUAT_TOLERANCE
    if np.any(bad):
        first = float(np.atleast_1d(norms)[np.flatnonzero(np.atleast_1d(bad))[0]])
        raise _fail(owner, name, f"quaternion norm {first:.4g} is not 1 (order x, y, z, w)")
    q /= norms[..., None]
    q.flags.writeable = False
    return q


def _check_scalar(owner: str, name: str, value: Any, *, minimum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise _fail(owner, name, f"expected a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise _fail(owner, name, f"must be finite, got {value}")
    if minimum is not None and value < minimum:
        raise _fail(owner, name, f"must be >= {minimum}, got {value}")
    return value


def _check_bool(owner: str, name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise _fail(owner, name, f"expected a bool, got {value!r}")
    return bool(value)


def _set(obj: Any, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)


def _check_header_and_pose(obj: Any, owner: str) -> None:
    """Validate stamp_ns, frame_id, position (3,) and orientation (4,) of a pose message."""
    _set(obj, "stamp_ns", _check_stamp(owner, obj.stamp_ns))
    _set(obj, "frame_id", _check_frame(owner, "frame_id", obj.frame_id))
    _set(obj, "position", _check_array(owner, "position", obj.position, np.float64, (3,), finite=True))
    _set(obj, "orientation", _check_quaternions(owner, "orientation", obj.orientation, ()))


@dataclass(frozen=True, eq=False)
class RGBD:
    """One registered colour + depth frame with its calibration.

    rgb: (H, W, 3) uint8, RGB channel order.
    depth: (H, W) float32 metres along the optical axis, registered to rgb; NaN, ±inf
        and 0 mean no reading.
    K: (3, 3) float64 pinhole intrinsics in pixels.
    T_base_camera: (4, 4) float64 pose of the optical frame `frame_id` in `base_frame_id`.
    distortion: (k,) float64 coefficients of `distortion_model` (empty: rectified).
    """

    stamp_ns: int
    frame_id: str
    rgb: np.ndarray
    depth: np.ndarray
    K: np.ndarray
    base_frame_id: str
    T_base_camera: np.ndarray
    distortion: np.ndarray = field(default_factory=lambda: np.zeros(0))
    distortion_model: str = "plumb_bob"

    def __post_init__(self) -> None:
        o = "RGBD"
        _set(self, "stamp_ns", _check_stamp(o, self.stamp_ns))
        _set(self, "frame_id", _check_frame(o, "frame_id", self.frame_id))
        _set(self, "base_frame_id", _check_frame(o, "base_frame_id", self.base_frame_id))
        rgb = _check_array(o, "rgb", self.rgb, np.uint8, (None, None, 3))
        _set(self, "rgb", rgb)
        _set(self, "depth", _check_array(o, "depth", self.depth, np.float32, rgb.shape[:2]))
        K = _check_array(o, "K", self.K, np.float64, (3, 3), finite=True)
        if K[0, 0] <= 0 or K[1, 1] <= 0 or K[2, 2] != 1.0:
            raise _fail(o, "K", "expected positive focal lengths and K[2, 2] == 1")
        _set(self, "K", K)
        T = _check_array(o, "T_base_camera", self.T_base_camera, np.float64, (4, 4), finite=True)
        if not is_rigid(T):
            raise _fail(o, "T_base_camera", "not a rigid transform (rotation must be orthonormal)")
        _set(self, "T_base_camera", T)
        _set(self, "distortion", _check_array(o, "distortion", self.distortion, np.float64, (None,), finite=True))
        if not isinstance(self.distortion_model, str):
            raise _fail(o, "distortion_model", f"expected a string, got {self.distortion_model!r}")

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        return self.rgb.shape[0], self.rgb.shape[1]


@dataclass(frozen=True, eq=False)
class FeatureMap:
    """Dense patch features of one camera image.

    features: (C, h, w) float32. The grid covers the whole image of the same stamp: patch
    (i, j) is centred on pixel ((j + 0.5) * W / w, (i + 0.5) * H / h).
    """

    stamp_ns: int
    frame_id: str
    features: np.ndarray

    def __post_init__(self) -> None:
        o = "FeatureMap"
        _set(self, "stamp_ns", _check_stamp(o, self.stamp_ns))
        _set(self, "frame_id", _check_frame(o, "frame_id", self.frame_id))
        feats = _check_array(o, "features", self.features, np.float32, (None, None, None), finite=True)
        if 0 in feats.shape:
            raise _fail(o, "features", f"empty feature map {tuple(feats.shape)}")
        _set(self, "features", feats)


@dataclass(frozen=True, eq=False)
class Keypoints:
    """Named keypoints found in one camera frame, lifted to the robot base frame.

    uv: (N, 2) float32 pixels (u, v) in the camera image.
    xyz: (N, 3) float32 metres in `frame_id` (the base frame); finite where visible.
    score: (N,) float32 matching score (cosine similarity for image matching).
    visible: (N,) bool, false where no valid depth or the keypoint is not found.
    instance: (N,) int32 object instance each keypoint belongs to (0 for single objects).
    similarity: optional (N, N) float32; [i, j] is the cosine similarity of keypoint i's
        matched pixel to reference keypoint j (paper 000's similarity vectors).
    """

    stamp_ns: int
    frame_id: str
    names: tuple[str, ...]
    uv: np.ndarray
    xyz: np.ndarray
    score: np.ndarray
    visible: np.ndarray
    instance: np.ndarray | None = None
    similarity: np.ndarray | None = None

    def __post_init__(self) -> None:
        o = "Keypoints"
        _set(self, "stamp_ns", _check_stamp(o, self.stamp_ns))
        _set(self, "frame_id", _check_frame(o, "frame_id", self.frame_id))
        names = tuple(self.names) if isinstance(self.names, (list, tuple)) else None
        if names is None or not all(isinstance(n, str) and n for n in names):
            raise _fail(o, "names", f"expected a sequence of non-empty strings, got {self.names!r}")
        if len(set(names)) != len(names):
            raise _fail(o, "names", f"names must be unique, got {list(names)}")
        _set(self, "names", names)
        n = len(names)
        _set(self, "uv", _check_array(o, "uv", self.uv, np.float32, (n, 2), finite=True))
        visible = _check_array(o, "visible", self.visible, np.bool_, (n,))
        _set(self, "visible", visible)
        xyz = _check_array(o, "xyz", self.xyz, np.float32, (n, 3))
        if not np.all(np.isfinite(xyz[visible])):
            raise _fail(o, "xyz", "contains NaN or inf for a visible keypoint")
        _set(self, "xyz", xyz)
        _set(self, "score", _check_array(o, "score", self.score, np.float32, (n,), finite=True))
        instance = np.zeros(n, np.int32) if self.instance is None else self.instance
        _set(self, "instance", _check_array(o, "instance", instance, np.int32, (n,)))
        if self.similarity is not None:
            _set(self, "similarity", _check_array(o, "similarity", self.similarity, np.float32, (n, n), finite=True))

    def __len__(self) -> int:
        return len(self.names)


@dataclass(frozen=True, eq=False)
class Image:
    """A colour image for people to look at (keypoints drawn on the camera frame, say).

    rgb: (H, W, 3) uint8, RGB channel order.
    """

    stamp_ns: int
    frame_id: str
    rgb: np.ndarray

    def __post_init__(self) -> None:
        o = "Image"
        _set(self, "stamp_ns", _check_stamp(o, self.stamp_ns))
        _set(self, "frame_id", _check_frame(o, "frame_id", self.frame_id))
        _set(self, "rgb", _check_array(o, "rgb", self.rgb, np.uint8, (None, None, 3)))


@dataclass(frozen=True, eq=False)
class RobotState:
    """End-effector pose, gripper opening and joint positions at one instant.

    position: (3,) float64 metres, EE in `frame_id` (the base frame).
    orientation: (4,) float64 unit quaternion (x, y, z, w).
    gripper: opening between the fingers in metres.
    joint_positions: (J,) float64 radians (or metres) for `joint_names`.
    """

    stamp_ns: int
    frame_id: str
    position: np.ndarray
    orientation: np.ndarray
    gripper: float
    joint_names: tuple[str, ...] = ()
    joint_positions: np.ndarray | None = None

    def __post_init__(self) -> None:
        o = "RobotState"
        _check_header_and_pose(self, o)
        _set(self, "gripper", _check_scalar(o, "gripper", self.gripper, minimum=0.0))
        names = tuple(self.joint_names)
        if not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
            raise _fail(o, "joint_names", f"expected unique non-empty strings, got {list(names)}")
        _set(self, "joint_names", names)
        joints = np.zeros(0) if self.joint_positions is None else self.joint_positions
        _set(self, "joint_positions", _check_array(o, "joint_positions", joints, np.float64, (len(names),), finite=True))


@dataclass(frozen=True, eq=False)
class ActionChunk:
    """A predicted trajectory of EE poses and gripper openings.

    Waypoint i is meant for time stamp_ns + i * dt, where stamp_ns is the stamp of the
    observation the chunk was predicted from.
    positions: (T, 3) float64 metres in `frame_id` (the base frame), T >= 2.
    orientations: (T, 4) float64 unit quaternions (x, y, z, w).
    gripper: (T,) float64 openings in metres.
    dt: waypoint spacing in seconds.
    """

    stamp_ns: int
    frame_id: str
    dt: float
    positions: np.ndarray
    orientations: np.ndarray
    gripper: np.ndarray

    def __post_init__(self) -> None:
        o = "ActionChunk"
        _set(self, "stamp_ns", _check_stamp(o, self.stamp_ns))
        _set(self, "frame_id", _check_frame(o, "frame_id", self.frame_id))
        dt = _check_scalar(o, "dt", self.dt)
        if dt <= 0:
            raise _fail(o, "dt", f"must be > 0 seconds, got {dt}")
        _set(self, "dt", dt)
        positions = _check_array(o, "positions", self.positions, np.float64, (None, 3), finite=True)
        if len(positions) < 2:
            raise _fail(o, "positions", f"needs at least 2 waypoints (dt is their spacing), got {len(positions)}")
        _set(self, "positions", positions)
        n = len(positions)
        _set(self, "orientations", _check_quaternions(o, "orientations", self.orientations, (n,)))
        gripper = _check_array(o, "gripper", self.gripper, np.float64, (n,), finite=True)
        if np.any(gripper < 0):
            raise _fail(o, "gripper", "openings must be >= 0 metres")
        _set(self, "gripper", gripper)

    def __len__(self) -> int:
        return len(self.positions)

    def waypoint_stamps_ns(self) -> np.ndarray:
        """(T,) int64 nanosecond times the waypoints are meant for."""
        return self.stamp_ns + np.round(np.arange(len(self)) * self.dt * 1e9).astype(np.int64)


@dataclass(frozen=True, eq=False)
class _StampedPose:
    """A pose in a frame at a time. position: (3,) float64 metres in `frame_id`;
    orientation: (4,) float64 unit quaternion (x, y, z, w)."""

    stamp_ns: int
    frame_id: str
    position: np.ndarray
    orientation: np.ndarray

    def __post_init__(self) -> None:
        _check_header_and_pose(self, type(self).__name__)


class PoseCommand(_StampedPose):
    """An absolute EE pose target for the robot's Cartesian controller, in the robot base frame."""


@dataclass(frozen=True, eq=False)
class GripperCommand:
    """Target opening in metres and maximum effort in newtons (0: the driver's default)."""

    stamp_ns: int
    position: float
    max_effort: float = 0.0

    def __post_init__(self) -> None:
        o = "GripperCommand"
        _set(self, "stamp_ns", _check_stamp(o, self.stamp_ns))
        _set(self, "position", _check_scalar(o, "position", self.position, minimum=0.0))
        _set(self, "max_effort", _check_scalar(o, "max_effort", self.max_effort, minimum=0.0))


@dataclass(frozen=True, eq=False)
class EStop:
    """An emergency stop request: `engaged` true stops the robot until the safety node's
    clear service is called (false is only a report; it clears nothing)."""

    stamp_ns: int
    engaged: bool

    def __post_init__(self) -> None:
        _set(self, "stamp_ns", _check_stamp("EStop", self.stamp_ns))
        _set(self, "engaged", _check_bool("EStop", "engaged", self.engaged))


class HandPose(_StampedPose):
    """A tracked pose of a teleoperation device (a VR controller) in its tracking frame."""


@dataclass(frozen=True, eq=False)
class HandInputs:
    """A VR controller's buttons and analogue inputs (Quest2ROS): the two face buttons, the
    thumb stick (horizontal, vertical in [-1, 1]) and the index / middle (grip) triggers in [0, 1]."""

    stamp_ns: int
    button_upper: bool
    button_lower: bool
    thumb_stick: np.ndarray
    index: float
    middle: float

    def __post_init__(self) -> None:
        o = "HandInputs"
        _set(self, "stamp_ns", _check_stamp(o, self.stamp_ns))
        for name in ("button_upper", "button_lower"):
            _set(self, name, _check_bool(o, name, getattr(self, name)))
        _set(self, "thumb_stick", _check_array(o, "thumb_stick", self.thumb_stick, np.float64, (2,), finite=True))
        for name in ("index", "middle"):
            _set(self, name, _check_scalar(o, name, getattr(self, name)))


@dataclass(frozen=True, eq=False)
class Twist:
    """A velocity command from a 6-DoF input device (SpaceMouse): linear and angular, each
    (3,) and scaled by the device driver (spacenav: about [-1, 1] at full deflection)."""

    stamp_ns: int
    linear: np.ndarray
    angular: np.ndarray

    def __post_init__(self) -> None:
        _set(self, "stamp_ns", _check_stamp("Twist", self.stamp_ns))
        for name in ("linear", "angular"):
            _set(self, name, _check_array("Twist", name, getattr(self, name), np.float64, (3,), finite=True))


@dataclass(frozen=True, eq=False)
class Buttons:
    """The buttons of an input device (sensor_msgs/Joy), pressed or not, by index."""

    stamp_ns: int
    pressed: tuple[bool, ...]

    def __post_init__(self) -> None:
        _set(self, "stamp_ns", _check_stamp("Buttons", self.stamp_ns))
        _set(self, "pressed", tuple(_check_bool("Buttons", f"pressed[{i}]", b) for i, b in enumerate(self.pressed)))


EPISODE_COMMANDS = ("start", "save", "discard")


@dataclass(frozen=True)
class EpisodeControl:
    """An operator's recording command: start an episode, save it (the operator judged it a
    success), or discard it."""

    stamp_ns: int
    command: str

    def __post_init__(self) -> None:
        _set(self, "stamp_ns", _check_stamp("EpisodeControl", self.stamp_ns))
        if self.command not in EPISODE_COMMANDS:
            raise _fail("EpisodeControl", "command", f"expected one of {', '.join(EPISODE_COMMANDS)}, got {self.command!r}")


@dataclass(frozen=True, eq=False)
class TaskProgress:
    """A simulator's verdict on its task: completion in [0, 1] (1: success; 0.5: one of two
    objects placed). A recorder saves the newest one into the episode's metadata."""

    stamp_ns: int
    completion: float

    def __post_init__(self) -> None:
        _set(self, "stamp_ns", _check_stamp("TaskProgress", self.stamp_ns))
        _set(self, "completion", _check_scalar("TaskProgress", "completion", self.completion, minimum=0.0))
        if self.completion > 1.0:
            raise _fail("TaskProgress", "completion", f"must be in [0, 1], got {self.completion}")

    @property
    def success(self) -> bool:
        return self.completion >= 1.0


MESSAGE_TYPES: dict[str, type] = {
    cls.__name__: cls
    for cls in (RGBD, FeatureMap, Keypoints, Image, RobotState, ActionChunk, PoseCommand, GripperCommand, EStop,
                HandPose, HandInputs, Twist, Buttons, EpisodeControl, TaskProgress)
}


def message_type(name: str, where: str) -> type:
    """The message class called `name`; unknown names are a one-line error at `where`."""
    try:
        return MESSAGE_TYPES[name]
    except (KeyError, TypeError):
        known = ", ".join(MESSAGE_TYPES)
        raise ConfigError(f"{where}: unknown message type {name!r} (known: {known})") from None
