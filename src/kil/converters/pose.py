"""Poses, transforms, robot state and gripper commands <-> geometry, sensor, tf2 and control messages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from kil.converters.factory import MessageFactory, header_msg, time_ns
from kil.errors import MessageError
from kil.geometry import matrix_to_pose, pose_to_matrix
from kil.msgs import GripperCommand, PoseCommand, RobotState


def point_msg(factory: MessageFactory, xyz: np.ndarray, typename: str = "geometry_msgs/msg/Point") -> Any:
    """geometry_msgs Point or Vector3 from (3,) metres."""
    x, y, z = (float(v) for v in xyz)
    return factory.new(typename, x=x, y=y, z=z)


def quaternion_msg(factory: MessageFactory, q: np.ndarray) -> Any:
    """geometry_msgs/Quaternion from (4,) (x, y, z, w)."""
    x, y, z, w = (float(v) for v in q)
    return factory.new("geometry_msgs/msg/Quaternion", x=x, y=y, z=z, w=w)


def pose_msg(factory: MessageFactory, position: np.ndarray, orientation: np.ndarray) -> Any:
    """geometry_msgs/Pose."""
    return factory.new(
        "geometry_msgs/msg/Pose", position=point_msg(factory, position), orientation=quaternion_msg(factory, orientation)
    )


def pose_stamped_msg(factory: MessageFactory, stamp_ns: int, frame_id: str, position: np.ndarray, orientation: np.ndarray) -> Any:
    """geometry_msgs/PoseStamped."""
    return factory.new(
        "geometry_msgs/msg/PoseStamped",
        header=header_msg(factory, stamp_ns, frame_id),
        pose=pose_msg(factory, position, orientation),
    )


def vector_of(msg: Any) -> np.ndarray:
    """(3,) float64 from a Point or Vector3."""
    return np.array([msg.x, msg.y, msg.z], np.float64)


def quaternion_of(msg: Any) -> np.ndarray:
    """(4,) float64 (x, y, z, w) from a Quaternion."""
    return np.array([msg.x, msg.y, msg.z, msg.w], np.float64)


def pose_of(msg: Any) -> tuple[np.ndarray, np.ndarray]:
    """(position, orientation) from a geometry_msgs/Pose."""
    return vector_of(msg.position), quaternion_of(msg.orientation)


def pose_command_to_ros(factory: MessageFactory, command: PoseCommand) -> Any:
    """PoseStamped target in the robot base frame (what the Cartesian controllers consume)."""
    return pose_stamped_msg(factory, command.stamp_ns, command.frame_id, command.position, command.orientation)


def pose_command_from_ros(msg: Any) -> PoseCommand:
    position, orientation = pose_of(msg.pose)
    return PoseCommand(
        stamp_ns=time_ns(msg.header.stamp), frame_id=str(msg.header.frame_id), position=position, orientation=orientation
    )


def transform_to_ros(factory: MessageFactory, stamp_ns: int, parent: str, child: str, T: np.ndarray) -> Any:
    """geometry_msgs/TransformStamped: the pose of `child` in `parent` as a (4, 4) matrix."""
    translation, rotation = matrix_to_pose(T)
    return factory.new(
        "geometry_msgs/msg/TransformStamped",
        header=header_msg(factory, stamp_ns, parent),
        child_frame_id=child,
        transform=factory.new(
            "geometry_msgs/msg/Transform",
            translation=point_msg(factory, translation, "geometry_msgs/msg/Vector3"),
            rotation=quaternion_msg(factory, rotation),
        ),
    )


def transform_from_ros(msg: Any) -> tuple[int, str, str, np.ndarray]:
    """(stamp_ns, parent, child, (4, 4) pose of child in parent) from a TransformStamped."""
    q = quaternion_of(msg.transform.rotation)
    norm = np.linalg.norm(q)
    if not np.isfinite(norm) or abs(norm - 1.0) > 1e-3:
        raise MessageError(f"TransformStamped.transform.rotation: quaternion norm {norm:.4g} is not 1 ({msg.child_frame_id})")
    T = pose_to_matrix(vector_of(msg.transform.translation), q / norm)
    return time_ns(msg.header.stamp), str(msg.header.frame_id), str(msg.child_frame_id), T


def tf_message(factory: MessageFactory, transforms: list[Any]) -> Any:
    """tf2_msgs/TFMessage for /tf or /tf_static."""
    return factory.new("tf2_msgs/msg/TFMessage", transforms=list(transforms))


@dataclass(frozen=True)
class GripperJoints:
    """How a rig's JointState encodes the gripper opening: offset + scale * sum(positions).

    Franka: panda_finger_joint1 and 2 are half-openings (scale 1). Robotiq 2F-85: one
    knuckle angle, 0 open to 0.8 rad closed (offset 0.085, scale -0.085 / 0.8).
    The default is kil's own single joint named "gripper" holding the opening in metres.
    """

    names: tuple[str, ...] = ("gripper",)
    scale: float = 1.0
    offset: float = 0.0

    def opening(self, names: list[str], positions: np.ndarray) -> float:
        missing = [n for n in self.names if n not in names]
        if missing:
            raise MessageError(f"JointState.name: gripper joint(s) {missing} missing (got {names})")
        total = sum(float(positions[names.index(n)]) for n in self.names)
        return max(0.0, self.offset + self.scale * total)


def robot_state_to_ros(factory: MessageFactory, state: RobotState, gripper_joint: str = "gripper") -> tuple[Any, Any]:
    """(PoseStamped of the EE in the base frame, JointState of the joints plus `gripper_joint`)."""
    pose = pose_stamped_msg(factory, state.stamp_ns, state.frame_id, state.position, state.orientation)
    joints = factory.new(
        "sensor_msgs/msg/JointState",
        header=header_msg(factory, state.stamp_ns, ""),
        name=[*state.joint_names, gripper_joint],
        position=np.append(state.joint_positions, state.gripper),
    )
    return pose, joints


def robot_state_from_ros(pose: Any, joints: Any, gripper: GripperJoints = GripperJoints()) -> RobotState:
    """RobotState from the EE PoseStamped and a JointState; gripper joints are folded into the opening."""
    names = [str(n) for n in joints.name]
    positions = np.asarray(joints.position, np.float64)
    if len(positions) != len(names):
        raise MessageError(f"JointState.position: {len(positions)} values for {len(names)} names")
    arm = [i for i, n in enumerate(names) if n not in gripper.names]
    position, orientation = pose_of(pose.pose)
    return RobotState(
        stamp_ns=time_ns(pose.header.stamp),
        frame_id=str(pose.header.frame_id),
        position=position,
        orientation=orientation,
        gripper=gripper.opening(names, positions),
        joint_names=tuple(names[i] for i in arm),
        joint_positions=positions[arm],
    )


def gripper_command_to_ros(factory: MessageFactory, command: GripperCommand) -> Any:
    """control_msgs/GripperCommand (the goal of the GripperCommand action; it has no stamp)."""
    return factory.new("control_msgs/msg/GripperCommand", position=command.position, max_effort=command.max_effort)


def gripper_command_from_ros(msg: Any, stamp_ns: int) -> GripperCommand:
    """GripperCommand stamped with `stamp_ns` (the receive or log time: the message has none)."""
    return GripperCommand(stamp_ns=stamp_ns, position=float(msg.position), max_effort=float(msg.max_effort))
