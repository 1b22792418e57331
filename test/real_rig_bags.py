"""Episodes as `ros2 bag record -s mcap` writes them on a real rig, written independently of
kil and of rosbags: the `mcap` + `mcap-ros2-support` packages serialise the messages from the
ROS 2 Jazzy message definitions in test/data/ros2_msgs/.

The layouts follow the drivers (their topic names, frames, encodings and rates), not kil's
rig files, so a test reading them through the rig files checks that those match the drivers:

* Franka FR3 (franka_ros2) + ZED 2i: bgra8 colour, 32FC1 depth with NaN / +inf / -inf holes,
  the RGB camera_info, the EE pose from franka_robot_state_broadcaster, /joint_states from a
  joint_state_publisher at 30 Hz with stamps of its own (arm + fingers), the commanded
  equilibrium_pose at 100 Hz, robot_state_publisher's /tf and /tf_static, the hand-eye
  calibration on /tf_static.
* UR5e (ur_robot_driver) + Robotiq 2F-85 + ZED 2i in openni depth mode: 16UC1 millimetre
  depth (0 = no reading), the TCP pose from tcp_pose_broadcaster in frame `base` (rotated
  180 degrees about z from `base_link`, as the UR description has it) and /joint_states from
  the same 500 Hz control loop, the FZI cartesian_motion_controller's target_frame in
  `base_link` at 100 Hz.

Receive (log) times are the header stamps plus a jittered transport delay; latched topics
are recorded when the recorder subscribes. Each stream can start late or end early.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

MSG_DIR = Path(__file__).parent / "data" / "ros2_msgs"
SEPARATOR = "=" * 80
PRIMITIVES = {"bool", "byte", "char", "float32", "float64", "int8", "uint8", "int16", "uint16", "int32", "uint32",
              "int64", "uint64", "string", "wstring"}


def msgdef(typename: str) -> str:
    """The ros2msg schema text of `pkg/msg/Type` with its dependencies, as rosbag2 stores it."""
    pkg, _, name = typename.split("/")
    seen, order, pending = set(), [], [(pkg, name)]
    while pending:
        p, n = pending.pop(0)
        if (p, n) in seen:
            continue
        seen.add((p, n))
        text = (MSG_DIR / p / f"{n}.msg").read_text()
        order.append((p, n, text))
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            field_type = re.sub(r"\[.*\]$", "", line.split()[0])
            field_type = re.sub(r"<=\d+$", "", field_type)
            if field_type in PRIMITIVES or field_type.startswith("string<="):
                continue
            dep = field_type.split("/") if "/" in field_type else (p, field_type)
            pending.append((dep[0], dep[-1]))
    parts = [order[0][2]]
    for p, n, text in order[1:]:
        parts.append(f"{SEPARATOR}\nMSG: {p}/{n}\n{text}")
    return "\n".join(parts)


def _stamp(ns: int) -> dict:
    return {"sec": int(ns // 1_000_000_000), "nanosec": int(ns % 1_000_000_000)}


def _header(ns: int, frame: str) -> dict:
    return {"stamp": _stamp(ns), "frame_id": frame}


def _quat_z(angle: float) -> np.ndarray:
    return np.array([0.0, 0.0, np.sin(angle / 2), np.cos(angle / 2)])


def _quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ax, ay, az, aw = a
    bx, by, bz, bw = b
    return np.array([aw * bx + ax * bw + ay * bz - az * by, aw * by - ax * bz + ay * bw + az * bx,
                     aw * bz + ax * by - ay * bx + az * bw, aw * bw - ax * bx - ay * by - az * bz])


def _pose(position, orientation) -> dict:
    return {"position": dict(zip("xyz", map(float, position))), "orientation": dict(zip("xyzw", map(float, orientation)))}


def _transform(ns: int, parent: str, child: str, translation, rotation) -> dict:
    return {"header": _header(ns, parent), "child_frame_id": child,
            "transform": {"translation": dict(zip("xyz", map(float, translation))), "rotation": dict(zip("xyzw", map(float, rotation)))}}


@dataclass(frozen=True)
class Layout:
    """A rig as its drivers publish (names, frames, encodings, rates in Hz)."""

    rig: str
    base_frame: str
    pose_frame: str  # the frame the EE pose is published in
    base_to_pose_frame: tuple[float, float, float, float]  # rotation (xyzw) of pose_frame in base_frame
    optical_frame: str
    image: str
    depth: str
    camera_info: str
    ee_pose: str
    joint_states: str
    command: str
    gripper_command: str
    arm_joints: tuple[str, ...]
    gripper_joints: tuple[str, ...]
    gripper_scale: float  # opening = gripper_offset + gripper_scale * sum(gripper joint positions)
    gripper_offset: float
    depth_encoding: str
    camera_hz: float = 15.0
    pose_hz: float = 50.0
    joints_hz: float = 30.0
    joints_own_stamps: bool = True  # a separate publisher (joint_state_publisher) with stamps of its own
    split_joint_states: bool = False  # two publishers on joint_states: the arm's broadcaster (pose rate), the gripper's node
    command_hz: float = 100.0
    width: int = 336
    height: int = 188
    depth_stamp_offset_ns: int = 0  # a RealSense's aligned depth: its depth sensor's stamp, a few ms off the colour's
    static_links: tuple[tuple[str, str], ...] = ()  # robot_state_publisher's fixed joints
    moving_link: tuple[str, str] = ("", "")  # one of its moving joints, on /tf


FRANKA = Layout(
    rig="franka", base_frame="fr3_link0", pose_frame="fr3_link0", base_to_pose_frame=(0.0, 0.0, 0.0, 1.0),
    optical_frame="zed_left_camera_frame_optical",
    image="/zed/zed_node/rgb/color/rect/image", depth="/zed/zed_node/depth/depth_registered",
    camera_info="/zed/zed_node/rgb/color/rect/camera_info", ee_pose="/franka_robot_state_broadcaster/current_pose",
    joint_states="/joint_states", command="/cartesian_impedance_example_controller/equilibrium_pose",
    gripper_command="/kil/gripper_command",
    arm_joints=tuple(f"fr3_joint{i}" for i in range(1, 8)), gripper_joints=("fr3_finger_joint1", "fr3_finger_joint2"),
    gripper_scale=1.0, gripper_offset=0.0, depth_encoding="32FC1",
    static_links=(("fr3_link7", "fr3_link8"), ("fr3_link8", "fr3_hand"), ("fr3_hand", "fr3_hand_tcp")),
    moving_link=("fr3_link0", "fr3_link1"),
)

UR5E = Layout(
    rig="ur5e", base_frame="base_link", pose_frame="base", base_to_pose_frame=(0.0, 0.0, 1.0, 0.0),
    optical_frame="zed_left_camera_frame_optical",
    image="/zed/zed_node/rgb/color/rect/image", depth="/zed/zed_node/depth/depth_registered",
    camera_info="/zed/zed_node/rgb/color/rect/camera_info", ee_pose="/tcp_pose_broadcaster/pose",
    joint_states="/joint_states", command="/cartesian_motion_controller/target_frame",
    gripper_command="/kil/gripper_command",
    arm_joints=("shoulder_pan_joint", "shoulder_lift_joint", "elbow_joint", "wrist_1_joint", "wrist_2_joint", "wrist_3_joint"),
    gripper_joints=("robotiq_85_left_knuckle_joint",), gripper_scale=-0.10625, gripper_offset=0.085,  # 0 rad open, 0.8 closed
    depth_encoding="16UC1", pose_hz=500.0, joints_hz=500.0, joints_own_stamps=False,
    static_links=(("wrist_3_link", "flange"), ("flange", "tool0")),
    moving_link=("base_link_inertia", "shoulder_link"),
)


@dataclass
class Episode:
    """What to write: durations in seconds from the first camera frame, stream offsets
    (start late / stop early), the kil metadata (None: a plain `ros2 bag record`)."""

    duration_s: float = 4.0
    state_start_s: float = 0.4  # robot state starts after the camera
    state_end_s: float | None = None
    command_start_s: float = 0.5
    command_end_s: float | None = None
    camera_end_s: float | None = None
    seed: int = 0
    metadata: dict | None = field(default_factory=lambda: {"task": "pick_place", "success": True, "status": "complete"})
    start_ns: int = 1_795_000_000_000_000_000


def command_pose(t: float, layout: Layout) -> tuple[np.ndarray, np.ndarray]:
    """The commanded EE pose at t s (base frame): a slow sweep, turning about z."""
    y0 = -0.45 if layout.rig == "ur5e" else 0.0
    position = np.array([0.45 + 0.1 * np.sin(0.8 * t), y0 + 0.15 * np.sin(0.5 * t), 0.25 + 0.05 * np.cos(0.7 * t)])
    down = np.array([1.0, 0.0, 0.0, 0.0])  # gripper pointing down
    return position, _quat_mul(_quat_z(0.3 * np.sin(0.6 * t)), down)


def command_gripper(t: float) -> float:
    return 0.08 if t < 2.0 else 0.02


def measured_pose(t: float, layout: Layout) -> tuple[np.ndarray, np.ndarray]:
    """The arm follows the command 50 ms late (an impedance controller's lag)."""
    return command_pose(max(t - 0.05, 0.0), layout)


def _frame(rng: np.random.Generator, layout: Layout, t: float) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 RGB and (H, W) float32 metres with holes: a table, a block moving."""
    h, w = layout.height, layout.width
    rgb = np.empty((h, w, 3), np.uint8)
    rgb[:] = (150, 120, 90)
    u = int(w * (0.4 + 0.1 * np.sin(t)))
    rgb[h // 2: h // 2 + 30, u: u + 30] = (200, 30, 30)
    rgb = np.clip(rgb.astype(int) + rng.integers(-8, 9, rgb.shape), 0, 255).astype(np.uint8)
    depth = np.linspace(0.8, 1.3, h, dtype=np.float32)[:, None].repeat(w, 1)
    depth[h // 2: h // 2 + 30, u: u + 30] -= 0.05
    holes = rng.random((h, w))
    depth[holes < 0.03] = np.nan
    depth[(holes >= 0.03) & (holes < 0.035)] = np.inf
    depth[(holes >= 0.035) & (holes < 0.04)] = -np.inf
    depth[:, u + 30: u + 33] = np.nan  # an invalid seam along the block's edge
    return rgb, depth


def _image_msgs(layout: Layout, stamp: int, rgb: np.ndarray, depth: np.ndarray) -> tuple[dict, dict, dict]:
    h, w = rgb.shape[:2]
    bgra = np.concatenate([rgb[..., ::-1], np.full((h, w, 1), 255, np.uint8)], axis=-1)
    image = {"header": _header(stamp, layout.optical_frame), "height": h, "width": w, "encoding": "bgra8",
             "is_bigendian": 0, "step": w * 4, "data": bgra.tobytes()}
    if layout.depth_encoding == "16UC1":
        mm = np.where(np.isfinite(depth) & (depth > 0), np.round(depth * 1000), 0).astype(np.uint16)
        data, step = mm.tobytes(), w * 2
    else:
        data, step = depth.astype(np.float32).tobytes(), w * 4
    depth_msg = {"header": _header(stamp + layout.depth_stamp_offset_ns, layout.optical_frame), "height": h, "width": w,
                 "encoding": layout.depth_encoding,
                 "is_bigendian": 0, "step": step, "data": data}
    fx = 0.55 * w
    info = {"header": _header(stamp, layout.optical_frame), "height": h, "width": w, "distortion_model": "plumb_bob",
            "d": [0.0] * 5, "k": [fx, 0, w / 2, 0, fx, h / 2, 0, 0, 1], "r": [1, 0, 0, 0, 1, 0, 0, 0, 1],
            "p": [fx, 0, w / 2, 0, 0, fx, h / 2, 0, 0, 0, 1, 0], "binning_x": 0, "binning_y": 0,
            "roi": {"x_offset": 0, "y_offset": 0, "height": 0, "width": 0, "do_rectify": False}}
    return image, depth_msg, info


CAMERA_IN_BASE = (np.array([1.1, 0.0, 0.7]), np.array([0.6830127, -0.6830127, 0.1830127, -0.1830127]))  # looking at the table


QOS_RELIABLE = ("- history: 1\n  depth: 10\n  reliability: 1\n  durability: 2\n  deadline:\n    sec: 9223372036\n    nsec: 854775807\n"
                "  lifespan:\n    sec: 9223372036\n    nsec: 854775807\n  liveliness: 1\n  liveliness_lease_duration:\n"
                "    sec: 9223372036\n    nsec: 854775807\n  avoid_ros_namespace_conventions: false")
QOS_LATCHED = QOS_RELIABLE.replace("durability: 2", "durability: 1").replace("depth: 10", "depth: 1")


def write_episode(path: Path, layout: Layout, episode: Episode = Episode()) -> dict:
    """Write one episode directory; returns the true streams {topic: [(stamp_ns, value)]}."""
    rng = np.random.default_rng(episode.seed)
    t0 = episode.start_ns
    records: list[tuple[int, str, str, dict]] = []  # (log time, topic, type, message)

    def ns(t: float) -> int:
        return t0 + int(round(t * 1e9))

    def times(hz: float, start: float, end: float | None, phase: float = 0.0) -> np.ndarray:
        stop = episode.duration_s if end is None else end
        return np.arange(start + phase, stop, 1.0 / hz)

    truth: dict[str, list] = {"command": [], "gripper": [], "state": [], "frames": []}
    start_log = ns(-0.05)  # the recorder subscribed just before the first frame: latched topics now
    calibration = _transform(t0, layout.base_frame, layout.optical_frame, *CAMERA_IN_BASE)
    links = [_transform(t0, parent, child, (0.0, 0.0, 0.1), (0.0, 0.0, 0.0, 1.0)) for parent, child in layout.static_links]
    if layout.pose_frame != layout.base_frame:  # the robot description relates them (UR: base_link -> base)
        links.insert(0, _transform(t0, layout.base_frame, layout.pose_frame, (0, 0, 0), layout.base_to_pose_frame))
    records.append((start_log, "/tf_static", "tf2_msgs/msg/TFMessage", {"transforms": links}))
    records.append((start_log + 1000, "/tf_static", "tf2_msgs/msg/TFMessage", {"transforms": [calibration]}))
    for t in times(layout.camera_hz, 0.0, episode.camera_end_s):
        stamp = ns(t)
        rgb, depth = _frame(rng, layout, t)
        truth["frames"].append((stamp, rgb, depth))
        image, depth_msg, info = _image_msgs(layout, stamp, rgb, depth)
        delay = int(rng.uniform(25e6, 45e6))  # grab -> rectified image on the network
        for topic, typename, msg in ((layout.image, "sensor_msgs/msg/Image", image), (layout.depth, "sensor_msgs/msg/Image", depth_msg),
                                     (layout.camera_info, "sensor_msgs/msg/CameraInfo", info)):
            records.append((stamp + delay + int(rng.uniform(0, 3e6)), topic, typename, msg))
    rot = np.array(layout.base_to_pose_frame)
    rot_inv = rot * np.array([-1, -1, -1, 1])
    for t in times(layout.pose_hz, episode.state_start_s, episode.state_end_s):
        position, orientation = measured_pose(t, layout)
        truth["state"].append((ns(t), position, orientation))
        # in the pose frame: p_frame = R^-1 p_base (a rotation about z through the origin)
        angle = 2 * np.arctan2(rot[2], rot[3])
        c, s = np.cos(-angle), np.sin(-angle)
        p = np.array([c * position[0] - s * position[1], s * position[0] + c * position[1], position[2]])
        q = _quat_mul(rot_inv, orientation)
        msg = {"header": _header(ns(t), layout.pose_frame), "pose": _pose(p, q)}
        records.append((ns(t) + int(rng.uniform(0.2e6, 1.5e6)), layout.ee_pose, "geometry_msgs/msg/PoseStamped", msg))
        if not layout.joints_own_stamps:
            records.append((ns(t) + int(rng.uniform(0.2e6, 1.5e6)), layout.joint_states, "sensor_msgs/msg/JointState",
                            _joints(layout, ns(t), t)))
    if layout.joints_own_stamps:  # joint_state_publisher: its own rate and clock phase
        for t in times(layout.joints_hz, episode.state_start_s + 0.011, episode.state_end_s):
            joints = _joints(layout, ns(t), t)
            if layout.split_joint_states:  # this publisher: the gripper's joints only
                n = len(layout.gripper_joints)
                joints = {**joints, "name": joints["name"][-n:], "position": joints["position"][-n:]}
            records.append((ns(t) + int(rng.uniform(0.2e6, 2e6)), layout.joint_states, "sensor_msgs/msg/JointState", joints))
    if layout.split_joint_states:  # the arm's joint_state_broadcaster, with the pose's control loop
        for t in times(layout.pose_hz, episode.state_start_s, episode.state_end_s):
            joints = _joints(layout, ns(t), t)
            n = len(layout.arm_joints)
            joints = {**joints, "name": joints["name"][:n], "position": joints["position"][:n]}
            records.append((ns(t) + int(rng.uniform(0.2e6, 1.5e6)), layout.joint_states, "sensor_msgs/msg/JointState", joints))
    for t in times(30.0, episode.state_start_s, episode.state_end_s):  # robot_state_publisher
        parent, child = layout.moving_link
        records.append((ns(t) + int(rng.uniform(0.5e6, 3e6)), "/tf", "tf2_msgs/msg/TFMessage",
                        {"transforms": [_transform(ns(t), parent, child, (0, 0, 0.16), _quat_z(0.1 * t))]}))
    last_grip = None
    for t in times(layout.command_hz, episode.command_start_s, episode.command_end_s):
        position, orientation = command_pose(t, layout)
        truth["command"].append((ns(t), position, orientation))
        msg = {"header": _header(ns(t), layout.base_frame), "pose": _pose(position, orientation)}
        records.append((ns(t) + int(rng.uniform(0.1e6, 0.6e6)), layout.command, "geometry_msgs/msg/PoseStamped", msg))
        if command_gripper(t) != last_grip:  # on change (no header: logged when sent)
            last_grip = command_gripper(t)
            truth["gripper"].append((ns(t) + 200_000, last_grip))  # unstamped: it counts from its receive time
            records.append((ns(t) + 200_000, layout.gripper_command, "control_msgs/msg/GripperCommand",
                            {"position": last_grip, "max_effort": 40.0}))
    records.sort(key=lambda r: r[0])
    _write_bag(path, records)
    if episode.metadata is not None:
        metadata = {"rig": layout.rig, "variation": "in", "seed": None, "extra": {"operator": "quest"}, "distro": "jazzy",
                    **episode.metadata}
        (path / "kil_episode.yaml").write_text(yaml.safe_dump(metadata, sort_keys=False))
    return truth


def measured_gripper(t: float) -> float:
    return 0.08 if t < 2.1 else 0.02  # the gripper closes after its command


def _joints(layout: Layout, stamp: int, t: float) -> dict:
    names = [*layout.arm_joints, *layout.gripper_joints]
    n = len(layout.gripper_joints)
    gripper = [(measured_gripper(t) - layout.gripper_offset) / (layout.gripper_scale * n)] * n
    return {"header": _header(stamp, ""), "name": names, "position": [0.1 * i for i in range(len(layout.arm_joints))] + gripper,
            "velocity": [], "effort": []}


def _write_bag(path: Path, records: list[tuple[int, str, str, dict]]) -> None:
    """`<name>_0.mcap` (ros2 profile, zstd chunks, channels with offered_qos_profiles and
    topic_type_hash as rosbag2_storage_mcap writes them) and a version 9 metadata.yaml."""
    from mcap.writer import CompressionType
    from mcap_ros2.writer import Writer

    path.mkdir(parents=True)
    file_name = f"{path.name}_0.mcap"
    schemas, counts = {}, {}
    with open(path / file_name, "wb") as stream:
        writer = Writer(stream, chunk_size=768 * 1024, compression=CompressionType.ZSTD)
        for log_time, topic, typename, msg in records:
            if typename not in schemas:
                schemas[typename] = writer.register_msgdef(typename, msgdef(typename))
            if topic not in counts:
                # mcap_ros2 registers channels without metadata; rosbag2 stores the QoS there.
                qos = QOS_LATCHED if topic == "/tf_static" else QOS_RELIABLE
                writer._channel_ids[topic] = writer._writer.register_channel(
                    topic=topic, message_encoding="cdr", schema_id=schemas[typename].id, metadata={"offered_qos_profiles": qos})
                counts[topic] = 0
            counts[topic] += 1
            writer.write_message(topic, schemas[typename], msg, log_time=log_time, publish_time=log_time, sequence=counts[topic])
        writer.finish()
    start, end = records[0][0], records[-1][0]
    types = {topic: typename for _, topic, typename, _ in records}
    info = {
        "version": 9, "storage_identifier": "mcap", "duration": {"nanoseconds": end - start},
        "starting_time": {"nanoseconds_since_epoch": start}, "message_count": len(records),
        "topics_with_message_count": [
            {"topic_metadata": {"name": topic, "type": types[topic], "serialization_format": "cdr",
                                "offered_qos_profiles": yaml.safe_load(QOS_LATCHED if topic == "/tf_static" else QOS_RELIABLE),
                                "type_description_hash": ""},
             "message_count": count} for topic, count in counts.items()],
        "compression_format": "", "compression_mode": "", "relative_file_paths": [file_name],
        "files": [{"path": file_name, "starting_time": {"nanoseconds_since_epoch": start}, "duration": {"nanoseconds": end - start},
                   "message_count": len(records)}],
        "custom_data": None, "ros_distro": "jazzy",
    }
    (path / "metadata.yaml").write_text(yaml.safe_dump({"rosbag2_bagfile_information": info}))


def write_lab(root: Path) -> dict:
    """A lab's folder after a day of recording (root/episode_NNNN); returns the truth of the
    good episodes {name: (layout, streams)}:

    0000 Franka and 0001 UR5e, robot state starting 0.4 s and commands 0.5 s after the
    camera; 0002 Franka, state 16 ms before the camera, state and commands stopping 0.6 s
    before it; 0003 a partial recording, recovered, success unknown; 0004 a failed one;
    0005 a killed `ros2 bag record` (no metadata.yaml, no kil_episode.yaml, the MCAP cut at
    60%); 0006 another task's; 0007 the arm's driver stopped after 0.5 s; and a
    `calibration` folder that is not a recording.
    """
    truth = {
        "episode_0000": (FRANKA, write_episode(root / "episode_0000", FRANKA, Episode(seed=0))),
        "episode_0001": (UR5E, write_episode(root / "episode_0001", UR5E, Episode(seed=1))),
        "episode_0002": (FRANKA, write_episode(root / "episode_0002", FRANKA, Episode(
            seed=2, state_start_s=-0.016, command_start_s=0.2, state_end_s=3.0, command_end_s=3.0, duration_s=3.6))),
    }
    write_episode(root / "episode_0003", FRANKA, Episode(seed=3, duration_s=1.6, metadata={
        "task": "pick_place", "success": None, "status": "recovered", "extra": {"stop_reason": "interrupted"}}))
    write_episode(root / "episode_0004", UR5E, Episode(seed=4, metadata={"task": "pick_place", "success": False, "status": "complete"}))
    killed = root / "episode_0005"
    write_episode(killed, FRANKA, Episode(seed=5, metadata=None))
    (killed / "metadata.yaml").unlink()
    mcap = next(killed.glob("*.mcap"))
    mcap.write_bytes(mcap.read_bytes()[: int(mcap.stat().st_size * 0.6)])
    write_episode(root / "episode_0006", UR5E, Episode(seed=6, metadata={"task": "place_upright", "success": True, "status": "complete"}))
    write_episode(root / "episode_0007", FRANKA, Episode(seed=7, state_start_s=0.4, state_end_s=0.9))
    (root / "calibration").mkdir()
    (root / "calibration" / "franka_zed.yaml").write_text("parent: fr3_link0\n")
    return truth


if __name__ == "__main__":  # python test/real_rig_bags.py DIR: a lab's folder to try kil build-dataset on
    import sys

    write_lab(Path(sys.argv[1]))
    print(f"{sys.argv[1]}: 8 episodes (Franka + ZED 2i, UR5e + ZED 2i) and a calibration folder")
