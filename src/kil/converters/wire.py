"""How each project message travels over ROS 2: its topics ("roles"), types and converters.

One project message may need several ROS 2 topics: an `RGBD` is a colour Image, a depth
Image and a CameraInfo sharing one stamp, plus the camera pose on TF. A wire format names
those roles, converts both ways and says how far apart the header stamps of role messages
may be to belong together (`sync_slop_s`: 0 for roles published together). The ROS 2
shell, the bag recorder and the bag reader all go through these, so a live graph, a
recording and a dataset see the same messages on the same topics.

Role topics default to ``<topic>/<role>`` (a role named "" is the topic itself); a graph
description may name them explicitly, e.g. the ZED wrapper's topics for an RGBD.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np

from kil.converters import image, keypoints, pose, teleop, trajectory
from kil.converters.factory import MessageFactory, time_ns
from kil.converters.gripper import GripperCommandOptions
from kil.errors import MessageError
from kil.msgs import (
    RGBD, ActionChunk, Buttons, EpisodeControl, EStop, FeatureMap, GripperCommand, HandInputs, HandPose, Image, Keypoints,
    PoseCommand, RobotState, TaskProgress, Twist,
)
from kil.sync import StampSynchronizer

# (parent frame, child frame, stamp_ns) -> (4, 4) pose of child in parent
TransformLookup = Callable[[str, str, int], np.ndarray]


@dataclass(frozen=True)
class Role:
    """One ROS 2 topic of a wire format. Publish-only roles are companions for RViz. A
    latched role carries what a message needs but rarely changes (the keypoint names): it is
    published transient-local, once per change, and a subscriber hands its newest one to
    `from_ros` with every message of the topic instead of matching it by stamp."""

    name: str
    ros_type: str
    publish_only: bool = False
    latched: bool = False


@dataclass(frozen=True)
class Packet:
    """The ROS 2 side of one project message: role -> message, plus TF it implies."""

    messages: dict[str, Any]
    transforms: tuple[Any, ...] = ()


@dataclass(frozen=True)
class NoOptions:
    """Wire formats without options."""


class WireFormat:
    """Base class: subclasses set the class attributes and implement the two conversions."""

    message_type: ClassVar[type]
    roles: ClassVar[tuple[Role, ...]]
    options_class: ClassVar[type] = NoOptions
    sync_slop_s: ClassVar[float] = 0.0
    # Roles a live subscriber holds instead of matching by stamp: they come from publishers of
    # their own (rates, stamps, several on one topic), and each message of the other roles
    # takes the newest usable one (`completes`) stamped at most held_max_age_s before it (`pick_held`).
    held: ClassVar[tuple[str, ...]] = ()
    held_max_age_s: ClassVar[float] = 0.1
    stamped: ClassVar[bool] = True  # its ROS messages carry a header stamp (can be matched by time)

    def to_ros(self, msg: Any, factory: MessageFactory, options: Any) -> Packet:
        raise NotImplementedError

    def from_ros(self, messages: Mapping[str, Any], options: Any, lookup: TransformLookup | None, receive_ns: int) -> Any:
        raise NotImplementedError

    def completes(self, role: str, msg: Any, options: Any) -> bool:
        """Whether `msg` of `role` can complete a message of this format (a topic with
        several publishers carries some that cannot: e.g. /joint_states without the gripper)."""
        return True

    @classmethod
    def input_roles(cls) -> tuple[Role, ...]:
        """Roles a subscriber matches by stamp (publish-only and latched companions excluded)."""
        return tuple(r for r in cls.roles if not (r.publish_only or r.latched))

    @classmethod
    def latched_roles(cls) -> tuple[Role, ...]:
        return tuple(r for r in cls.roles if r.latched)

    @classmethod
    def role_topics(cls, topic: str, overrides: Mapping[str, str] | None = None) -> dict[str, str]:
        """role -> ROS topic name for a graph topic."""
        overrides = overrides or {}
        return {r.name: overrides.get(r.name) or (topic if not r.name else f"{topic.rstrip('/')}/{r.name}") for r in cls.roles}


@dataclass(frozen=True)
class RGBDOptions:
    rgb_encoding: Literal["rgb8", "bgr8", "bgra8", "rgba8", "mono8"] = "rgb8"
    depth_encoding: Literal["32FC1", "16UC1"] = "32FC1"
    # Robot base frame the camera pose is looked up in (TF base <- optical frame).
    base_frame: str = ""


class RGBDWire(WireFormat):
    message_type = RGBD
    options_class = RGBDOptions
    roles = (
        Role("image", "sensor_msgs/msg/Image"),
        Role("depth", "sensor_msgs/msg/Image"),
        Role("camera_info", "sensor_msgs/msg/CameraInfo"),
    )
    # The ZED stamps colour, depth and camera_info with one grab stamp; a RealSense's aligned
    # depth carries its depth sensor's stamp, a few ms off the colour's. Well below a frame period.
    sync_slop_s = 0.01

    def to_ros(self, msg: RGBD, factory: MessageFactory, options: RGBDOptions) -> Packet:
        rgb, depth, info = image.rgbd_to_ros(factory, msg, options.rgb_encoding, options.depth_encoding)
        camera = pose.transform_to_ros(factory, msg.stamp_ns, msg.base_frame_id, msg.frame_id, msg.T_base_camera)
        return Packet({"image": rgb, "depth": depth, "camera_info": info}, (camera,))

    def from_ros(self, messages: Mapping[str, Any], options: RGBDOptions, lookup: TransformLookup | None, receive_ns: int) -> RGBD:
        if not options.base_frame or lookup is None:
            raise MessageError("options.base_frame: needed to look up the camera pose of an RGBD on TF")
        rgb = messages["image"]
        T = lookup(options.base_frame, str(rgb.header.frame_id), time_ns(rgb.header.stamp))
        return image.rgbd_from_ros(rgb, messages["depth"], messages["camera_info"], options.base_frame, T)


class FeatureMapWire(WireFormat):
    message_type = FeatureMap
    roles = (Role("", "sensor_msgs/msg/Image"),)

    def to_ros(self, msg: FeatureMap, factory: MessageFactory, options: NoOptions) -> Packet:
        return Packet({"": image.features_to_image(factory, msg)})

    def from_ros(self, messages: Mapping[str, Any], options: NoOptions, lookup: TransformLookup | None, receive_ns: int) -> FeatureMap:
        return image.image_to_features(messages[""])


class ImageWire(WireFormat):
    message_type = Image
    roles = (Role("", "sensor_msgs/msg/Image"),)

    def to_ros(self, msg: Image, factory: MessageFactory, options: NoOptions) -> Packet:
        return Packet({"": image.rgb_to_image(factory, msg.rgb, msg.stamp_ns, msg.frame_id)})

    def from_ros(self, messages: Mapping[str, Any], options: NoOptions, lookup: TransformLookup | None, receive_ns: int) -> Image:
        msg = messages[""]
        return Image(stamp_ns=time_ns(msg.header.stamp), frame_id=str(msg.header.frame_id), rgb=image.image_to_rgb(msg))


@dataclass(frozen=True)
class KeypointsOptions:
    # Keypoint names by index, for clouds from a publisher that sends no names of its own
    # (kil's publishers send them on the latched `names` role).
    names: tuple[str, ...] = ()
    marker_diameter: float = 0.02  # metres, RViz spheres


class KeypointsWire(WireFormat):
    """The cloud, RViz markers, and the names its `index` field refers to (latched
    ``<topic>/names``, std_msgs/String holding a JSON list; the cloud's `layout` field is
    the names' CRC, so a cloud is never read with another layout's names)."""

    message_type = Keypoints
    options_class = KeypointsOptions
    roles = (
        Role("", "sensor_msgs/msg/PointCloud2"),
        Role("markers", "visualization_msgs/msg/MarkerArray", publish_only=True),
        Role("names", "std_msgs/msg/String", latched=True),
    )

    def to_ros(self, msg: Keypoints, factory: MessageFactory, options: KeypointsOptions) -> Packet:
        return Packet(
            {
                "": keypoints.keypoints_to_ros(factory, msg),
                "markers": keypoints.keypoints_to_markers(factory, msg, diameter=options.marker_diameter),
                "names": factory.new("std_msgs/msg/String", data=keypoints.names_text(msg.names)),
            }
        )

    def from_ros(self, messages: Mapping[str, Any], options: KeypointsOptions, lookup: TransformLookup | None, receive_ns: int) -> Keypoints:
        names = options.names
        if not names and "names" in messages:
            names = keypoints.names_from_text(str(messages["names"].data))
        return keypoints.keypoints_from_ros(messages[""], names)


@dataclass(frozen=True)
class RobotStateOptions:
    # JointState names whose positions make up the gripper opening (see GripperJoints).
    gripper_joints: tuple[str, ...] = ("gripper",)
    gripper_scale: float = 1.0
    gripper_offset: float = 0.0

    @property
    def gripper(self) -> pose.GripperJoints:
        return pose.GripperJoints(self.gripper_joints, self.gripper_scale, self.gripper_offset)


class RobotStateWire(WireFormat):
    message_type = RobotState
    options_class = RobotStateOptions
    roles = (Role("pose", "geometry_msgs/msg/PoseStamped"), Role("joints", "sensor_msgs/msg/JointState"))
    sync_slop_s = 0.005  # a recording's pose and joint states of one control loop (kil's own, the UR's)
    # Live, /joint_states comes from its own publisher(s): a joint_state_publisher at 30 Hz
    # with stamps of its own (Franka), or the arm's broadcaster and the gripper's node on one topic.
    held = ("joints",)

    def to_ros(self, msg: RobotState, factory: MessageFactory, options: RobotStateOptions) -> Packet:
        if len(options.gripper_joints) != 1 or options.gripper_scale != 1.0 or options.gripper_offset != 0.0:
            raise MessageError("options.gripper_joints: writing RobotState needs a single plain gripper joint")
        ee, joints = pose.robot_state_to_ros(factory, msg, options.gripper_joints[0])
        return Packet({"pose": ee, "joints": joints})

    def from_ros(self, messages: Mapping[str, Any], options: RobotStateOptions, lookup: TransformLookup | None, receive_ns: int) -> RobotState:
        return pose.robot_state_from_ros(messages["pose"], messages["joints"], options.gripper)

    def completes(self, role: str, msg: Any, options: RobotStateOptions) -> bool:
        # /joint_states may have several publishers (the arm's broadcaster, the gripper's node)
        return role != "joints" or set(options.gripper_joints) <= {str(n) for n in msg.name}


class ActionChunkWire(WireFormat):
    message_type = ActionChunk
    roles = (Role("", "trajectory_msgs/msg/MultiDOFJointTrajectory"), Role("path", "nav_msgs/msg/Path", True))

    def to_ros(self, msg: ActionChunk, factory: MessageFactory, options: NoOptions) -> Packet:
        return Packet({"": trajectory.chunk_to_ros(factory, msg), "path": trajectory.chunk_to_path(factory, msg)})

    def from_ros(self, messages: Mapping[str, Any], options: NoOptions, lookup: TransformLookup | None, receive_ns: int) -> ActionChunk:
        return trajectory.chunk_from_ros(messages[""])


class PoseCommandWire(WireFormat):
    message_type = PoseCommand
    roles = (Role("", "geometry_msgs/msg/PoseStamped"),)

    def to_ros(self, msg: PoseCommand, factory: MessageFactory, options: NoOptions) -> Packet:
        return Packet({"": pose.pose_command_to_ros(factory, msg)})

    def from_ros(self, messages: Mapping[str, Any], options: NoOptions, lookup: TransformLookup | None, receive_ns: int) -> PoseCommand:
        return pose.pose_command_from_ros(messages[""])


class GripperCommandWire(WireFormat):
    """The topic; on a real rig the ROS 2 shell also sends each command as an action goal
    (options.interface, see kil.converters.gripper)."""

    message_type = GripperCommand
    options_class = GripperCommandOptions
    roles = (Role("", "control_msgs/msg/GripperCommand"),)
    stamped = False

    def to_ros(self, msg: GripperCommand, factory: MessageFactory, options: GripperCommandOptions) -> Packet:
        return Packet({"": pose.gripper_command_to_ros(factory, msg)})

    def from_ros(self, messages: Mapping[str, Any], options: GripperCommandOptions, lookup: TransformLookup | None, receive_ns: int) -> GripperCommand:
        return pose.gripper_command_from_ros(messages[""], receive_ns)


class EStopWire(WireFormat):
    message_type = EStop
    roles = (Role("", "std_msgs/msg/Bool"),)
    stamped = False

    def to_ros(self, msg: EStop, factory: MessageFactory, options: NoOptions) -> Packet:
        return Packet({"": factory.new("std_msgs/msg/Bool", data=msg.engaged)})

    def from_ros(self, messages: Mapping[str, Any], options: NoOptions, lookup: TransformLookup | None, receive_ns: int) -> EStop:
        return EStop(stamp_ns=receive_ns, engaged=bool(messages[""].data))


class HandPoseWire(WireFormat):
    message_type = HandPose
    roles = (Role("", "geometry_msgs/msg/PoseStamped"),)

    def to_ros(self, msg: HandPose, factory: MessageFactory, options: NoOptions) -> Packet:
        return Packet({"": teleop.hand_pose_to_ros(factory, msg)})

    def from_ros(self, messages: Mapping[str, Any], options: NoOptions, lookup: TransformLookup | None, receive_ns: int) -> HandPose:
        return teleop.hand_pose_from_ros(messages[""])


class HandInputsWire(WireFormat):
    message_type = HandInputs
    roles = (Role("", "quest2ros/msg/OVR2ROSInputs"),)
    stamped = False

    def to_ros(self, msg: HandInputs, factory: MessageFactory, options: NoOptions) -> Packet:
        return Packet({"": teleop.hand_inputs_to_ros(factory, msg)})

    def from_ros(self, messages: Mapping[str, Any], options: NoOptions, lookup: TransformLookup | None, receive_ns: int) -> HandInputs:
        return teleop.hand_inputs_from_ros(messages[""], receive_ns)


class TwistWire(WireFormat):
    message_type = Twist
    roles = (Role("", "geometry_msgs/msg/Twist"),)
    stamped = False

    def to_ros(self, msg: Twist, factory: MessageFactory, options: NoOptions) -> Packet:
        return Packet({"": teleop.twist_to_ros(factory, msg)})

    def from_ros(self, messages: Mapping[str, Any], options: NoOptions, lookup: TransformLookup | None, receive_ns: int) -> Twist:
        return teleop.twist_from_ros(messages[""], receive_ns)


class ButtonsWire(WireFormat):
    message_type = Buttons
    roles = (Role("", "sensor_msgs/msg/Joy"),)

    def to_ros(self, msg: Buttons, factory: MessageFactory, options: NoOptions) -> Packet:
        return Packet({"": teleop.buttons_to_ros(factory, msg)})

    def from_ros(self, messages: Mapping[str, Any], options: NoOptions, lookup: TransformLookup | None, receive_ns: int) -> Buttons:
        return teleop.buttons_from_ros(messages[""])


class EpisodeControlWire(WireFormat):
    message_type = EpisodeControl
    roles = (Role("", "std_msgs/msg/String"),)
    stamped = False

    def to_ros(self, msg: EpisodeControl, factory: MessageFactory, options: NoOptions) -> Packet:
        return Packet({"": teleop.episode_control_to_ros(factory, msg)})

    def from_ros(self, messages: Mapping[str, Any], options: NoOptions, lookup: TransformLookup | None, receive_ns: int) -> EpisodeControl:
        return teleop.episode_control_from_ros(messages[""], receive_ns)


class TaskProgressWire(WireFormat):
    message_type = TaskProgress
    roles = (Role("", "std_msgs/msg/Float32"),)
    stamped = False

    def to_ros(self, msg: TaskProgress, factory: MessageFactory, options: NoOptions) -> Packet:
        return Packet({"": factory.new("std_msgs/msg/Float32", data=float(msg.completion))})

    def from_ros(self, messages: Mapping[str, Any], options: NoOptions, lookup: TransformLookup | None, receive_ns: int) -> TaskProgress:
        value = float(messages[""].data)
        if not 0.0 <= value <= 1.0:
            raise MessageError(f"Float32.data: task completion must be in [0, 1], got {value}")
        return TaskProgress(stamp_ns=receive_ns, completion=value)


WIRE_FORMATS: dict[type, WireFormat] = {
    wire.message_type: wire
    for wire in (
        RGBDWire(),
        FeatureMapWire(),
        KeypointsWire(),
        ImageWire(),
        RobotStateWire(),
        ActionChunkWire(),
        PoseCommandWire(),
        GripperCommandWire(),
        EStopWire(),
        HandPoseWire(),
        HandInputsWire(),
        TwistWire(),
        ButtonsWire(),
        EpisodeControlWire(),
        TaskProgressWire(),
    )
}


def wire_format(message_type: type) -> WireFormat:
    """The wire format of a project message class."""
    return WIRE_FORMATS[message_type]


HELD_LEAD_NS = 5_000_000  # a held message stamped up to 5 ms after the driving one still belongs to it


def pick_held(candidates: Sequence[Any], stamp_ns: int, max_age_ns: int) -> Any | None:
    """The newest of `candidates` (ROS messages with headers) stamped at most `max_age_ns`
    before `stamp_ns` and HELD_LEAD_NS after it; None if there is none."""
    best, best_ns = None, None
    for msg in candidates:
        t = _header_stamp(msg)
        if stamp_ns - max_age_ns <= t <= stamp_ns + HELD_LEAD_NS and (best_ns is None or t > best_ns):
            best, best_ns = msg, t
    return best


class RoleAssembler:
    """Collects the role messages of one topic into complete sets by header stamp (within
    the wire format's slop), as the ROS 2 shell's message_filters synchronizer does live."""

    def __init__(self, wire: WireFormat, queue_size: int = 30) -> None:
        self.roles = [r.name for r in wire.input_roles()]
        self._sync = StampSynchronizer(self.roles, int(round(wire.sync_slop_s * 1e9)), queue_size, _header_stamp)

    def add(self, role: str, msg: Any) -> dict[str, Any] | None:
        if role not in self.roles:
            return None
        if len(self.roles) == 1:
            return {role: msg}
        matched = self._sync.add(role, msg)
        return None if matched is None else dict(zip(self.roles, matched))


def _header_stamp(msg: Any) -> int:
    return time_ns(msg.header.stamp)


@dataclass
class TransformRouter:
    """Decides where a transform goes: /tf_static the first time a frame pair is seen,
    nowhere while it stays the same, /tf once it has ever changed (a moving camera)."""

    tolerance: float = 1e-9
    _last: dict = field(default_factory=dict)
    _moving: set = field(default_factory=set)

    def route(self, transform: Any) -> Literal["static", "dynamic"] | None:
        _, parent, child, T = pose.transform_from_ros(transform)
        key = (parent, child)
        previous = self._last.get(key)
        self._last[key] = T
        if previous is None:
            return "static"
        if key in self._moving or not np.allclose(previous, T, atol=self.tolerance):
            self._moving.add(key)
            return "dynamic"
        return None
