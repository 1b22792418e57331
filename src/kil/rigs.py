"""Rig descriptions (`config/rigs/<rig>.yaml`): the facts of a robot + camera setup that
the launch files and graphs need (frames, driver topics, controllers, what to record)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from kil.config import load_dataclass, load_yaml, require
from kil.errors import ConfigError
from kil.paths import share_dir
from kil.control.limits import SafetyLimits

RIGS = ("franka", "ur5e", "sim")  # the shipped rigs; a lab adds config/rigs/<name>.yaml


@dataclass(frozen=True)
class CameraRig:
    driver: Literal["zed", "generic", "sim"]
    image: str  # colour image topic
    depth: str  # registered depth topic (32FC1 metres or 16UC1 mm)
    camera_info: str
    optical_frame: str
    rgb_encoding: Literal["rgb8", "bgr8", "bgra8", "rgba8", "mono8"] = "rgb8"
    depth_encoding: Literal["32FC1", "16UC1"] = "32FC1"
    calibration: str = ""  # YAML with the camera pose in the base frame (published as static TF)


@dataclass(frozen=True)
class GripperRig:
    interface: Literal["franka_gripper", "gripper_command", "sim"]
    action: str  # action server (franka: the gripper node's namespace)
    joints: tuple[str, ...]  # JointState names making up the opening
    scale: float = 1.0  # opening = offset + scale * sum(joint positions)
    offset: float = 0.0
    max_opening: float = 0.08  # metres


@dataclass(frozen=True)
class DriverLaunch:
    """A driver's launch file; "{name}" in an argument is replaced by bringup's launch
    argument of that name (robot_ip, fake_hardware)."""

    package: str
    launch_file: str
    arguments: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RigConfig:
    name: str
    robot: Literal["panda", "fr3", "ur5e"]
    base_frame: str
    ee_frame: str
    control_rate_hz: float  # the driver's own loop (1 kHz Franka, 500 Hz UR)
    ee_pose_topic: str
    joint_states_topic: str
    pose_target_topic: str  # geometry_msgs/PoseStamped consumed by the Cartesian controller
    camera: CameraRig
    gripper: GripperRig
    drivers: tuple[DriverLaunch, ...] = ()
    driver_graph: str = ""  # a kil graph whose nodes are this rig's drivers (the simulated rig)
    record_topics: tuple[str, ...] = ()
    safety: SafetyLimits = field(default_factory=SafetyLimits)  # what the safety node enforces
    feature_model: str = "radio"  # the features node's default backend (config/features/); paper 001 matches with RADIO

    def __post_init__(self) -> None:
        require(self.control_rate_hz > 0, "control_rate_hz", "must be > 0")
        require(all(t.startswith("/") for t in self.record_topics), "record_topics", "topics must be absolute (start with /)")
        require(self.safety.gripper_max <= self.gripper.max_opening + 1e-9, "safety.gripper_max",
                f"{self.safety.gripper_max} exceeds the gripper's max_opening {self.gripper.max_opening}")
        require(self.safety.max_step * self.safety.rate_hz <= self.safety.max_speed * 1.5, "safety.max_step",
                "allows far more than max_speed per tick (max_step x rate_hz should be about max_speed)")


def graph_topics(rig: RigConfig) -> dict[str, dict]:
    """The rig's ROS topic names and wire options for the live graph's topics (merged into
    the graph description by `load_graph(..., topics=...)`)."""
    c, g = rig.camera, rig.gripper
    return {
        "/camera": {"roles": {"image": c.image, "depth": c.depth, "camera_info": c.camera_info},
                    "options": {"base_frame": rig.base_frame, "rgb_encoding": c.rgb_encoding, "depth_encoding": c.depth_encoding}},
        "/robot_state": {"roles": {"pose": rig.ee_pose_topic, "joints": rig.joint_states_topic},
                         "options": {"gripper_joints": list(g.joints), "gripper_scale": g.scale, "gripper_offset": g.offset}},
        "/kil/pose_target": {"roles": {"": rig.pose_target_topic}},
        # A real gripper also gets each command as an action goal (kil.converters.gripper).
        "/kil/gripper_command": {"options": {"interface": "topic" if g.interface == "sim" else g.interface,
                                             "action": "" if g.interface == "sim" else g.action,
                                             "scale": g.scale, "offset": g.offset}},
    }


def live_params(rig: RigConfig, task: str, policy: str, extraction: str = "") -> dict[str, dict]:
    """Node parameters of the live graph for a rig, task and trained policy. The keypoints
    are extracted as the policy's dataset was (im, in or t with its segmenter and tracker,
    from the policy's checkpoint; im for a policy not there yet); `extraction` given must
    agree with it."""
    settings = {"extraction": "im"}
    if Path(policy).exists():
        from kil.policy.inference import trained_perception

        settings = trained_perception(policy)[2]
    if extraction and extraction != settings["extraction"]:
        raise ConfigError(f"extraction:={extraction} but the policy {policy} was trained on keypoints extracted by "
                          f"{settings['extraction']} (leave extraction unset to follow it)")
    return {
        "features": {"model": rig.feature_model},
        "keypoints": {"spec": task, "model": rig.feature_model, **settings},
        "policy": {"policy": policy},
        "interpolator": {"max_speed": rig.safety.max_speed, "max_angular_speed": rig.safety.max_angular_speed},
        "safety": {"rig": rig.name},
    }


# record_demos.launch.py teleop:=, graphs config/graphs/teleop_<teleop>.yaml; `expert` is the
# simulated rig's scripted expert (unattended demonstrations).
TELEOPS = ("quest", "spacemouse", "expert")


def record_params(rig: RigConfig, task: str, teleop: str, out: str, variation: str = "in", seed: int = 0,
                  use_sim_time: bool = False) -> dict[str, dict]:
    """Node parameters of a teleop recording graph for a rig: targets in its base frame,
    its gripper's range, its limits, and `ros2 bag record` on its record_topics (stamping
    what it records with /clock where the graph runs on simulated time)."""
    from kil.data.episodes import ROS2_BAG_RECORD

    if teleop not in TELEOPS:
        raise ConfigError(f"teleop: unknown teleop {teleop!r} (choose one of: {', '.join(TELEOPS)})")
    if teleop == "expert" and rig.camera.driver != "sim":
        raise ConfigError(f"teleop: the scripted expert drives the simulated rig only, not rig {rig.name!r}")
    if not rig.record_topics:
        raise ConfigError(f"config/rigs/{rig.name}.yaml: record_topics: empty; name the topics an episode records")
    if teleop == "expert":
        teleop_params = {"base_frame": rig.base_frame, "task": task, "variation": variation, "seed": seed}
    else:
        teleop_params = {"base_frame": rig.base_frame, "gripper_open": rig.gripper.max_opening}
    return {
        "teleop": teleop_params,
        "interpolator": {"max_speed": rig.safety.max_speed, "max_angular_speed": rig.safety.max_angular_speed},
        "safety": {"rig": rig.name},
        "recorder": {"out": out, "task": task, "rig": rig.name, "variation": variation, "operator": "scripted_expert" if teleop == "expert" else teleop,
                     "topics": list(rig.record_topics), "seed": seed if teleop == "expert" else None,
                     "record_command": [*ROS2_BAG_RECORD, *(["--use-sim-time"] if use_sim_time else [])]},
    }


def rig_names() -> list[str]:
    """The rigs with a file in config/rigs/ (the shipped ones and any a lab adds there)."""
    return sorted(p.stem for p in (share_dir() / "config" / "rigs").glob("*.yaml"))


def rig_file(name: str) -> Path:
    """`config/rigs/<name>.yaml`, or `name` itself when it is a path to a YAML file."""
    if name.endswith((".yaml", ".yml")) or "/" in name:
        path = Path(name).expanduser()
        if not path.is_file():
            raise ConfigError(f"rig: no rig file {path}")
        return path
    path = share_dir() / "config" / "rigs" / f"{name}.yaml"
    if not name or not path.is_file():
        raise ConfigError(f"rig: unknown rig {name!r} (rigs: {', '.join(rig_names())}; or the path of a rig file)")
    return path


def load_rig(name: str) -> RigConfig:
    """The rig description `config/rigs/<name>.yaml` (or a rig file's path)."""
    path = rig_file(name)
    return load_dataclass(RigConfig, load_yaml(path), f"{path}:")


@dataclass(frozen=True)
class CameraCalibration:
    """Hand-eye calibration: the pose of the camera's optical frame in the robot base frame."""

    parent: str
    child: str
    translation: tuple[float, float, float]  # metres
    rotation: tuple[float, float, float, float]  # quaternion (x, y, z, w)

    def __post_init__(self) -> None:
        norm = sum(q * q for q in self.rotation) ** 0.5
        require(abs(norm - 1.0) < 1e-3, "rotation", f"quaternion norm {norm:.4g} is not 1 (order x, y, z, w)")


def load_calibration(rig: RigConfig) -> CameraCalibration:
    """The rig's camera calibration file (relative paths are under the share directory)."""
    path = share_dir() / rig.camera.calibration
    if not rig.camera.calibration or not path.is_file():
        raise ConfigError(
            f"config/rigs/{rig.name}.yaml: camera.calibration: no file {path} "
            "(measure the camera pose, see config/rigs/calibration/README.md)"
        )
    calibration = load_dataclass(CameraCalibration, load_yaml(path), f"{path}:")
    if (calibration.parent, calibration.child) != (rig.base_frame, rig.camera.optical_frame):
        raise ConfigError(f"{path}: frames {calibration.parent} -> {calibration.child} do not match the rig's {rig.base_frame} -> {rig.camera.optical_frame}")
    return calibration
