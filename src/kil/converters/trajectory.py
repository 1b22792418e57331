"""ActionChunk <-> trajectory_msgs/MultiDOFJointTrajectory, and -> nav_msgs/Path for RViz.

The trajectory has two "joints": `ee` (the EE pose as a Transform) and `gripper` (the
opening in metres as translation.x). Its header stamp is the observation stamp, and point
i has time_from_start = i * dt, so waypoint times survive the round trip exactly.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kil.converters.factory import MessageFactory, duration_msg, header_msg, time_ns
from kil.converters.pose import point_msg, pose_msg, quaternion_msg, quaternion_of, vector_of
from kil.errors import MessageError
from kil.msgs import ActionChunk

JOINT_NAMES = ("ee", "gripper")
_IDENTITY = np.array([0.0, 0.0, 0.0, 1.0])


def _transform(factory: MessageFactory, translation: np.ndarray, rotation: np.ndarray) -> Any:
    return factory.new(
        "geometry_msgs/msg/Transform",
        translation=point_msg(factory, translation, "geometry_msgs/msg/Vector3"),
        rotation=quaternion_msg(factory, rotation),
    )


def chunk_to_ros(factory: MessageFactory, chunk: ActionChunk) -> Any:
    """MultiDOFJointTrajectory with joints (ee, gripper)."""
    offsets = chunk.waypoint_stamps_ns() - chunk.stamp_ns
    points = [
        factory.new(
            "trajectory_msgs/msg/MultiDOFJointTrajectoryPoint",
            transforms=[
                _transform(factory, chunk.positions[i], chunk.orientations[i]),
                _transform(factory, np.array([chunk.gripper[i], 0.0, 0.0]), _IDENTITY),
            ],
            time_from_start=duration_msg(factory, int(offsets[i])),
        )
        for i in range(len(chunk))
    ]
    return factory.new(
        "trajectory_msgs/msg/MultiDOFJointTrajectory",
        header=header_msg(factory, chunk.stamp_ns, chunk.frame_id),
        joint_names=list(JOINT_NAMES),
        points=points,
    )


def chunk_from_ros(msg: Any) -> ActionChunk:
    """ActionChunk from a MultiDOFJointTrajectory written by `chunk_to_ros` (or any publisher
    using joints `ee` and `gripper` with uniformly spaced points)."""
    names = [str(n) for n in msg.joint_names]
    if any(n not in names for n in JOINT_NAMES):
        raise MessageError(f"MultiDOFJointTrajectory.joint_names: expected {list(JOINT_NAMES)}, got {names}")
    ee, grip = names.index("ee"), names.index("gripper")
    points = list(msg.points)
    if len(points) < 2:
        raise MessageError(f"MultiDOFJointTrajectory.points: need at least 2 to know dt, got {len(points)}")
    offsets = np.array([time_ns(p.time_from_start) for p in points], np.int64)
    steps = np.diff(offsets)
    if steps[0] <= 0 or np.any(np.abs(steps - steps[0]) > 1000) or offsets[0] != 0:
        raise MessageError("MultiDOFJointTrajectory.points.time_from_start: expected 0, dt, 2 dt, ... with dt > 0")
    for i, p in enumerate(points):
        if len(p.transforms) != len(names):
            raise MessageError(f"MultiDOFJointTrajectory.points[{i}].transforms: {len(p.transforms)} for {len(names)} joints")
    # dt is recovered from the overall span to avoid nanosecond rounding of single steps.
    dt = (offsets[-1] - offsets[0]) / (len(points) - 1) / 1e9
    return ActionChunk(
        stamp_ns=time_ns(msg.header.stamp),
        frame_id=str(msg.header.frame_id),
        dt=float(dt),
        positions=np.array([vector_of(p.transforms[ee].translation) for p in points]),
        orientations=np.array([quaternion_of(p.transforms[ee].rotation) for p in points]),
        gripper=np.array([float(p.transforms[grip].translation.x) for p in points]),
    )


def chunk_to_path(factory: MessageFactory, chunk: ActionChunk) -> Any:
    """nav_msgs/Path of the chunk's EE poses, each stamped with its waypoint time (for RViz)."""
    poses = [
        factory.new(
            "geometry_msgs/msg/PoseStamped",
            header=header_msg(factory, int(stamp), chunk.frame_id),
            pose=pose_msg(factory, chunk.positions[i], chunk.orientations[i]),
        )
        for i, stamp in enumerate(chunk.waypoint_stamps_ns())
    ]
    return factory.new("nav_msgs/msg/Path", header=header_msg(factory, chunk.stamp_ns, chunk.frame_id), poses=poses)


def path_from_ros(msg: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(stamps_ns (T,) int64, positions (T, 3), orientations (T, 4)) from a Path."""
    poses = list(msg.poses)
    return (
        np.array([time_ns(p.header.stamp) for p in poses], np.int64),
        np.array([vector_of(p.pose.position) for p in poses]).reshape(-1, 3),
        np.array([quaternion_of(p.pose.orientation) for p in poses]).reshape(-1, 4),
    )
