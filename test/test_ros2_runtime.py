"""The ROS 2 runtime: parameter mapping, launch descriptions, rig launch pieces (pure, run
everywhere) and the rclpy shell, launch files and ros2 bag interop (marked `ros`: they run
against the ROS 2 that scripts/test.sh finds, and skip, saying why, where there is none)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
from helpers import STAMP, assert_messages_equal, sample_of_every_type

from kil.errors import ConfigError, GraphError
from kil.graph import load_graph
from kil.paths import graph_path
from kil.rigs import RIGS, CameraCalibration, load_calibration, load_rig
from kil.runtimes.ros2.launch import (
    EXECUTABLE,
    driver_arguments,
    graph_nodes,
    static_transform_arguments,
)
from kil.runtimes.ros2.params import config_from_parameters, flatten_config, is_native

ROOT = Path(__file__).resolve().parents[1]
TOY = Path(__file__).parent / "data" / "toy_graph.yaml"
ALL_TYPES = Path(__file__).parent / "data" / "all_types_graph.yaml"
TELEOP_TYPES = Path(__file__).parent / "data" / "teleop_types_graph.yaml"


@dataclass(frozen=True)
class Gains:
    kp: float = 1.0
    axes: tuple[str, ...] = ("x", "y")


@dataclass(frozen=True)
class ShellConfig:
    rate_hz: float = 10.0
    mode: Literal["fast", "slow"] = "fast"
    size: tuple[int, int] = (480, 640)
    seed: int | None = None
    names: tuple[str, ...] = ()
    limits: dict[str, float] = field(default_factory=lambda: {"x": 0.5})
    gains: Gains = Gains()
    model: Path = Path("models/descriptor.safetensors")


def test_config_flattens_to_ros_parameter_values():
    flat = flatten_config(ShellConfig())
    assert flat == {
        "rate_hz": 10.0,
        "mode": "fast",
        "size": [480, 640],
        "seed": "null",
        "names": "[]",
        "limits": "{x: 0.5}",
        "gains.kp": 1.0,
        "gains.axes": ["x", "y"],
        "model": "models/descriptor.safetensors",
    }
    assert is_native(tuple[float, ...]) and not is_native(dict[str, float]) and not is_native(int | None)


def test_parameters_rebuild_and_validate_the_config():
    flat = flatten_config(ShellConfig())
    flat.update({"rate_hz": 30, "seed": "7", "limits": "{x: 0.1, y: 0.2}", "gains.axes": ["z"], "names": ["a"]})
    config = config_from_parameters(ShellConfig, flat, "node policy: parameters:")
    assert config == ShellConfig(30.0, "fast", (480, 640), 7, ("a",), {"x": 0.1, "y": 0.2}, Gains(1.0, ("z",)))
    assert config_from_parameters(ShellConfig, flatten_config(config), "x") == config
    with pytest.raises(ConfigError, match=r"^node policy: parameters: mode: expected one of 'fast', 'slow', got 'medium'$"):
        config_from_parameters(ShellConfig, {**flat, "mode": "medium"}, "node policy: parameters:")
    with pytest.raises(ConfigError, match=r"^node policy: parameters: gains\.kp: expected float, got 'high'$"):
        config_from_parameters(ShellConfig, {**flat, "gains.kp": "high"}, "node policy: parameters:")


def test_graph_nodes_for_launch():
    launches = graph_nodes(TOY, {"counter": {"rate_hz": 25}})
    assert [n.name for n in launches] == ["counter", "scaler", "collector"]
    assert all(n.executable == EXECUTABLE and n.package == "kil" for n in launches)
    counter = launches[0].parameters
    shell = {"kil.graph": str(TOY.resolve()), "kil.rig": "", "use_sim_time": False}
    assert counter == {**shell, "kil.node": "counter", "rate_hz": 25.0, "frame": "base", "limit": 0}
    assert launches[2].parameters == {**shell, "kil.node": "collector"}
    assert graph_nodes(TOY, use_sim_time=True)[0].parameters["use_sim_time"] is True
    with pytest.raises(GraphError, match=r"nodes\.counter\.params\.rate_hz: expected float, got 'x'"):
        graph_nodes(TOY, {"counter": {"rate_hz": "x"}})


@pytest.mark.parametrize("name", RIGS)
def test_rig_files_load(name):
    rig = load_rig(name)
    assert rig.name == name and rig.pose_target_topic.startswith("/")
    assert rig.camera.image in rig.record_topics and "/tf_static" in rig.record_topics


@pytest.mark.parametrize("name", RIGS)
def test_live_graph_takes_each_rigs_topics_limits_and_parameters(name):
    """What bringup.launch.py starts for a rig, validated here: every node of the live graph
    with the rig's ROS topic names, wire options, safety limits and the task and policy."""
    from kil.graph import load_graph
    from kil.paths import graph_path
    from kil.rigs import graph_topics, live_params

    rig = load_rig(name)
    spec = load_graph(graph_path("live"), live_params(rig, "pick_place", "runs/pp"), graph_topics(rig))
    camera = spec.topics["/camera"]
    assert camera.ros_topics == {"image": rig.camera.image, "depth": rig.camera.depth, "camera_info": rig.camera.camera_info}
    assert (camera.options.base_frame, camera.options.rgb_encoding) == (rig.base_frame, rig.camera.rgb_encoding)
    assert spec.topics["/robot_state"].ros_topics == {"pose": rig.ee_pose_topic, "joints": rig.joint_states_topic}
    assert spec.topics["/robot_state"].options.gripper_joints == rig.gripper.joints
    assert spec.topics["/kil/pose_target"].ros_topics == {"": rig.pose_target_topic}  # only the safety node publishes it
    assert spec.publishers("/kil/pose_target") == ["safety"]
    assert spec.nodes["safety"].config.rig == name and spec.nodes["policy"].config.policy == "runs/pp"
    assert spec.nodes["interpolator"].config.max_speed == rig.safety.max_speed
    launches = graph_nodes("live", live_params(rig, "pick_place", "runs/pp"), rig=name)
    assert {n.name for n in launches} == set(spec.nodes) and all(n.parameters["kil.rig"] == name for n in launches)
    limits = rig.safety
    assert all(lo < hi for lo, hi in zip(limits.workspace_min, limits.workspace_max))
    assert limits.max_step * limits.rate_hz <= limits.max_speed * 1.5 and limits.gripper_max <= rig.gripper.max_opening


@pytest.mark.parametrize("teleop", ["quest", "spacemouse"])
@pytest.mark.parametrize("name", RIGS)
def test_record_graph_takes_each_rigs_topics_limits_and_recording(name, teleop):
    """What record_demos.launch.py starts for a rig and a teleop device, validated here."""
    from kil.graph import load_graph
    from kil.paths import graph_path
    from kil.rigs import graph_topics, record_params

    rig = load_rig(name)
    params = record_params(rig, "pick_place", teleop, "demos/pp")
    spec = load_graph(graph_path(f"teleop_{teleop}"), params, graph_topics(rig))
    assert spec.topics["/kil/pose_target"].ros_topics == {"": rig.pose_target_topic}
    assert spec.publishers("/kil/pose_target") == ["safety"]  # the teleop never bypasses it
    assert spec.nodes["teleop"].stage_class.__name__.lower() == f"{teleop}teleop"
    assert spec.nodes["teleop"].config.base_frame == rig.base_frame
    assert spec.nodes["teleop"].config.gripper_open == rig.gripper.max_opening
    recorder = spec.nodes["recorder"].config
    assert (recorder.backend, recorder.out, recorder.rig, recorder.operator) == ("ros2bag", "demos/pp", name, teleop)
    assert recorder.topics == rig.record_topics
    gripper = spec.topics["/kil/gripper_command"].options
    assert gripper.interface == {"franka": "franka_gripper", "ur5e": "gripper_command", "sim": "topic"}[name]
    launches = graph_nodes(f"teleop_{teleop}", params, rig=name)
    assert {n.name for n in launches} == set(spec.nodes)
    with pytest.raises(ConfigError, match=r"teleop: unknown teleop 'glove' \(choose one of: quest, spacemouse, expert\)"):
        record_params(rig, "pick_place", "glove", "demos")
    assert recorder.record_command == ("ros2", "bag", "record", "-s", "mcap")
    sim_time = record_params(rig, "pick_place", teleop, "demos", use_sim_time=True)["recorder"]["record_command"]
    assert sim_time[-1] == "--use-sim-time"  # what it records is stamped with /clock


def test_unattended_recording_graph_is_the_sims_expert():
    """record_demos.launch.py rig:=sim teleop:=expert: the scripted expert on the rig's scene,
    the sim's verdict into each episode; real rigs have no scripted expert."""
    from kil.graph import load_graph
    from kil.paths import graph_path
    from kil.rigs import graph_topics, record_params

    rig = load_rig("sim")
    params = record_params(rig, "place_upright", "expert", "demos/pu", "obj", seed=7, use_sim_time=True)
    spec = load_graph(graph_path("teleop_expert"), params, graph_topics(rig))
    teleop, recorder = spec.nodes["teleop"].config, spec.nodes["recorder"].config
    assert (teleop.task, teleop.variation, teleop.seed, teleop.start_delay_s > 0) == ("place_upright", "obj", 7, True)
    assert (recorder.task, recorder.variation, recorder.seed, recorder.operator) == ("place_upright", "obj", 7, "scripted_expert")
    assert spec.nodes["recorder"].subscribe["progress"] == "/sim/progress" and recorder.stop_after_episodes == 1
    assert {"/sim/keypoints", "/sim/keypoints/names"} <= set(recorder.topics)
    with pytest.raises(ConfigError, match=r"^teleop: the scripted expert drives the simulated rig only, not rig 'franka'$"):
        record_params(load_rig("franka"), "pick_place", "expert", "demos")


def test_rig_file_errors_name_the_key(tmp_path, monkeypatch):
    from kil.config import load_dataclass, load_yaml
    from kil.errors import ConfigError
    from kil.paths import share_dir
    from kil.rigs import RigConfig

    data = load_yaml(share_dir() / "config" / "rigs" / "franka.yaml")
    data["safety"]["workspace_min"] = [0.9, -0.45, 0.02]
    with pytest.raises(ConfigError, match=r"franka\.yaml: safety: workspace_min: must be below workspace_max"):
        load_dataclass(RigConfig, data, "franka.yaml:")
    data = load_yaml(share_dir() / "config" / "rigs" / "franka.yaml")
    data["safety"]["gripper_max"] = 0.2
    with pytest.raises(ConfigError, match=r"safety\.gripper_max: 0\.2 exceeds the gripper's max_opening"):
        load_dataclass(RigConfig, data, "franka.yaml:")


def test_driver_arguments_need_an_address_for_real_hardware():
    franka, ur5e = load_rig("franka"), load_rig("ur5e")
    with pytest.raises(ConfigError, match=r"^rig franka: robot_ip:=\.\.\. is required to start franka_bringup"):
        driver_arguments(franka, "", False)
    (bringup, args), (zed, zed_args) = driver_arguments(franka, "172.16.0.2", False)
    assert (bringup.package, bringup.launch_file) == ("franka_bringup", "franka.launch.py")
    assert args == {"robot_ip": "172.16.0.2", "load_gripper": "true", "use_fake_hardware": "false"}
    assert zed_args == {"camera_model": "zed2i", "publish_tf": "false"}
    (ur, ur_args), _ = driver_arguments(ur5e, "", True)
    assert ur_args == {"ur_type": "ur5e", "robot_ip": "", "use_mock_hardware": "true"}
    assert driver_arguments(load_rig("sim"), "", False) == []


def test_calibration():
    calibration = CameraCalibration("fr3_link0", "zed_left_camera_frame_optical", (0.9, 0.0, 0.6), (0.0, 0.0, 0.0, 1.0))
    assert static_transform_arguments(calibration) == [
        "--x", "0.9", "--y", "0.0", "--z", "0.6", "--qx", "0.0", "--qy", "0.0", "--qz", "0.0", "--qw", "1.0",
        "--frame-id", "fr3_link0", "--child-frame-id", "zed_left_camera_frame_optical",
    ]
    with pytest.raises(ValueError, match="quaternion norm"):
        CameraCalibration("a", "b", (0, 0, 0), (0, 0, 0, 2))
    with pytest.raises(ConfigError, match=r"camera\.calibration: no file .*franka_zed\.yaml \(measure the camera pose"):
        load_calibration(load_rig("franka"))


@pytest.mark.ros
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_kil_node_stops_cleanly_on_a_signal(signum, tmp_path):
    """kil_node as a launch file or a supervisor starts it: its parameters apart from the
    stage's (the recorder has a `rig` field too); a signal ends it with exit status 0, its
    stage stopped (the open episode closed) before ROS shuts down, and a second one while
    it exits (a terminal's Ctrl-C, then the launch's) changes nothing."""
    from ros_graph import ros2, ros_env

    executable = Path(ros2("pkg", "prefix", "kil").stdout.strip()) / "lib" / "kil" / "kil_node"
    log = tmp_path / "node.log"
    node = subprocess.Popen(
        [str(executable), "--ros-args", "-r", "__node:=recorder", "-p", "kil.graph:=synthetic_record", "-p", f"path:={tmp_path / 'episode'}"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, env=ros_env(), start_new_session=True)
    deadline = time.monotonic() + 60
    while "running Recorder" not in log.read_text() and time.monotonic() < deadline and node.poll() is None:
        time.sleep(0.2)
    assert "running Recorder" in log.read_text(), log.read_text()
    os.kill(node.pid, signum)
    time.sleep(0.05)
    if node.poll() is None:
        os.kill(node.pid, signum)
    assert node.wait(timeout=30) == 0, log.read_text()
    assert "Traceback" not in log.read_text() and "failure" not in log.read_text(), log.read_text()
    assert (tmp_path / "episode" / "metadata.yaml").is_file()  # the bag was closed


def test_importing_the_ros_runtime_needs_no_ros():
    code = (
        "import sys, kil, kil.runtimes.ros2.node, kil.runtimes.ros2.launch, kil.runtimes.ros2.params, kil.runtimes.ros2.sim_clock, kil.bench.live, kil.cli;"
        "assert not {'rclpy', 'launch', 'launch_ros', 'message_filters', 'tf2_ros'} & set(sys.modules), sys.modules.keys()"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- ROS 2 (docker image) -------------------------------------------------------------------


def _samples(path: Path = ALL_TYPES):
    """Graph topic of all_types_graph.yaml (or `path`) -> a sample message of its type."""
    graph = load_graph(path)
    samples = sample_of_every_type(np.random.default_rng(5))
    return {name: samples[topic.type.__name__] for name, topic in graph.topics.items()}


@pytest.mark.ros
def test_rclpy_messages_serialise_like_the_typestore():
    """The same converter through RclpyFactory gives byte-identical CDR to the typestore of
    the running distro (humble or jazzy)."""
    from kil.converters.factory import RclpyFactory, TypestoreFactory
    from kil.converters.typestore import ros2_typestore

    distro = os.environ.get("ROS_DISTRO", "")
    assert distro in ("humble", "jazzy"), f"ROS_DISTRO={distro!r}: kil supports humble and jazzy"
    store = ros2_typestore(distro)
    factory = RclpyFactory()
    for path in (ALL_TYPES, TELEOP_TYPES):
        _check_rclpy_against_typestore(path, factory, TypestoreFactory(store), store)
    # The gripper action goals the ROS shell sends (franka_msgs ships with franka_ros2).
    from kil.converters.gripper import GripperCommandOptions, gripper_goal
    from kil.msgs import GripperCommand

    goal = gripper_goal(GripperCommand(STAMP, 0.0, 30.0), GripperCommandOptions("gripper_command", "/g", -0.10625, 0.085), factory)
    assert type(goal.goal) is factory.action_class(goal.action_type).Goal and goal.goal.command.max_effort == 30.0


def _check_rclpy_against_typestore(path: Path, ours_factory, reference_factory, store) -> None:
    from rclpy.serialization import serialize_message

    graph = load_graph(path)
    for topic, msg in _samples(path).items():
        spec = graph.topics[topic]
        # quest2ros and franka_msgs: test/driver_msgs.sh builds them where this ROS lacks them
        ours = spec.wire.to_ros(msg, ours_factory, spec.options).messages
        reference = spec.wire.to_ros(msg, reference_factory, spec.options).messages
        for role, ros_msg in ours.items():
            typename = reference[role].__msgtype__
            assert bytes(serialize_message(ros_msg)) == bytes(store.serialize_cdr(reference[role], typename)), (topic, role)
        back = spec.wire.from_ros(ours, spec.options, lambda *a: msg.T_base_camera, STAMP)
        assert_messages_equal(back, msg)


@pytest.mark.ros
def test_launch_descriptions():
    from launch.launch_description_sources import get_launch_description_from_python_launch_file
    from launch_ros.actions import Node

    from kil.runtimes.ros2.launch import graph_launch_actions

    actions = graph_launch_actions(TOY)
    assert len(actions) == 3 and all(isinstance(a, Node) for a in actions)
    bringup = get_launch_description_from_python_launch_file(str(ROOT / "launch" / "bringup.launch.py"))
    arguments = {a.name: a for a in bringup.get_launch_arguments()}
    assert {"rig", "graph", "task", "policy", "extraction", "set", "rviz", "drivers", "robot_ip", "fake_hardware"} <= set(arguments)
    # any rig file: the shipped ones, one a lab adds to config/rigs/, or a path (checked by load_rig)
    assert arguments["rig"].choices is None and "franka, ur5e, sim" in arguments["rig"].description
    record = get_launch_description_from_python_launch_file(str(ROOT / "launch" / "record_demos.launch.py"))
    record_arguments = {a.name: a for a in record.get_launch_arguments()}
    assert {"rig", "out", "teleop", "teleop_driver", "task", "variation", "seed", "set", "robot_ip", "use_sim_time"} <= set(record_arguments)
    assert record_arguments["teleop"].choices == ["quest", "spacemouse", "expert"]
    assert arguments["use_sim_time"].choices == ["auto", "true", "false"]


def _ros_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    return env


@pytest.mark.ros
def test_toy_graph_runs_as_ros_nodes():
    """bringup starts one kil_node per graph node; their topics carry the stage outputs."""
    import rclpy
    from rclpy.node import Node

    from kil.converters.factory import RclpyFactory
    from kil.converters.pose import pose_command_from_ros
    from kil.runtimes.ros2.node import qos_profile

    launch = subprocess.Popen(
        ["ros2", "launch", "kil", "bringup.launch.py", "rig:=sim", "drivers:=false", "rviz:=false", "use_sim_time:=false", f"graph:={TOY}", "set:=counter.rate_hz=20"],
        env=_ros_env(), start_new_session=True,
    )
    rclpy.init()
    node = Node("toy_graph_probe")
    received = []
    scaled = load_graph(TOY).topics["/toy/scaled"]  # best_effort: a reliable probe would never match
    node.create_subscription(
        RclpyFactory().message_class("geometry_msgs/msg/PoseStamped"), "/toy/scaled", lambda m: received.append(pose_command_from_ros(m)), qos_profile(scaled.qos)
    )
    try:
        deadline = time.monotonic() + 60
        while len(received) < 10 and time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.1)
    finally:
        node.destroy_node()
        rclpy.shutdown()
        os.killpg(launch.pid, signal.SIGINT)
        launch.wait(timeout=30)
    assert len(received) >= 10
    xs = [m.position[0] for m in received]
    assert all(x % 2 == 0 for x in xs) and xs == sorted(xs)  # counter 1, 2, ... doubled by scaler
    assert all(b.stamp_ns > a.stamp_ns for a, b in zip(received, received[1:]))


@pytest.mark.ros
def test_ros2_bag_record_reads_like_our_bags(tmp_path):
    """Messages published by rclpy and recorded by `ros2 bag record -s mcap` read back equal."""
    import rclpy
    from rclpy.node import Node

    from kil.converters.factory import RclpyFactory
    from kil.data.bag import EpisodeReader
    from kil.runtimes.ros2.node import qos_profile

    graph = load_graph(ALL_TYPES)
    samples = _samples()
    factory = RclpyFactory()
    topics = sorted({t for spec in graph.topics.values() for t in spec.ros_topics.values()} | {"/tf_static"})
    bag = tmp_path / "recorded"
    recorder = subprocess.Popen(["ros2", "bag", "record", "-s", "mcap", "-o", str(bag), *topics], start_new_session=True)
    rclpy.init()
    node = Node("bag_probe")
    from tf2_ros import StaticTransformBroadcaster

    static = StaticTransformBroadcaster(node)
    publishers = {}
    for topic, spec in graph.topics.items():
        for role in spec.wire.roles:
            publishers[(topic, role.name)] = node.create_publisher(factory.message_class(role.ros_type), spec.ros_topics[role.name], qos_profile(spec.qos))
    try:
        deadline = time.monotonic() + 30  # wait until the recorder subscribes to every topic
        while time.monotonic() < deadline and not all(p.get_subscription_count() for p in publishers.values()):
            rclpy.spin_once(node, timeout_sec=0.1)
        assert all(p.get_subscription_count() for p in publishers.values()), "ros2 bag record did not subscribe"
        for topic, msg in samples.items():
            spec = graph.topics[topic]
            packet = spec.wire.to_ros(msg, factory, spec.options)
            if packet.transforms:
                static.sendTransform(list(packet.transforms))
            for role, ros_msg in packet.messages.items():
                publishers[(topic, role)].publish(ros_msg)
        end = time.monotonic() + 3.0
        while time.monotonic() < end:
            rclpy.spin_once(node, timeout_sec=0.1)
    finally:
        os.killpg(recorder.pid, signal.SIGINT)
        recorder.wait(timeout=30)
        node.destroy_node()
        rclpy.shutdown()
    read = {topic: msg for topic, _, msg in EpisodeReader(bag).messages(graph.topics.values())}
    assert set(read) == set(samples)
    for topic, msg in samples.items():
        if topic in ("/kil/gripper_command", "/sim/progress"):  # headerless: stamped with the receive time
            msg = dataclasses.replace(msg, stamp_ns=read[topic].stamp_ns)
        assert_messages_equal(read[topic], msg)


def test_sim_rig_driver_graph_becomes_a_node_with_its_parameters():
    rig = load_rig("sim")
    assert rig.driver_graph == "sim_rig"
    (launch,) = graph_nodes(rig.driver_graph, {"rig": {"task": "place_upright", "robot": "ur5e"}})
    params = launch.parameters
    assert launch.name == "rig" and params["task"] == "place_upright" and params["robot"] == "ur5e"
    assert params["camera.width"] == 640 and params["camera.eye"] == [1.08, -0.38, 0.56]
    from kil.stages.sim_rig import SimRigConfig

    config = config_from_parameters(SimRigConfig, {k: v for k, v in params.items() if not k.startswith("kil.") and k != "use_sim_time"}, "rig")
    assert config.task == "place_upright" and config.camera.fovy_deg == 55.0
    # the sim rig's topics are the ones its rig file names
    spec = load_graph(graph_path("sim_rig"))
    assert spec.topics["/camera"].ros_topics == {"image": rig.camera.image, "depth": rig.camera.depth, "camera_info": rig.camera.camera_info}
    assert spec.topics["/robot_state"].ros_topics["pose"] == rig.ee_pose_topic
    assert rig.pose_target_topic in spec.topics and rig.gripper.action in spec.topics


@pytest.mark.ros
def test_recorder_session_runs_ros2_bag_record(tmp_path):
    """The ros2bag recorder backend with the real `ros2 bag record -s mcap`: one bag per
    episode, our metadata inside, a discarded episode gone."""
    import rclpy
    from rclpy.node import Node

    from kil.converters.factory import RclpyFactory
    from kil.data.bag import EpisodeReader
    from kil.data.episode import EpisodeMetadata, read_metadata
    from kil.data.episodes import EpisodeSession, Ros2BagProcess

    session = EpisodeSession(tmp_path, EpisodeMetadata(task="pick_place", rig="ur5e"), lambda path, _: Ros2BagProcess(path, ["/probe"]))
    rclpy.init()
    node = Node("recorder_probe")
    publisher = node.create_publisher(RclpyFactory().message_class("std_msgs/msg/String"), "/probe", 10)
    try:
        for keep in (True, False):
            session.start(0)
            deadline = time.monotonic() + 30
            while publisher.get_subscription_count() == 0 and time.monotonic() < deadline:
                rclpy.spin_once(node, timeout_sec=0.1)
            for i in range(5):
                publisher.publish(RclpyFactory().new("std_msgs/msg/String", data=str(i)))
            end = time.monotonic() + 1.0
            while time.monotonic() < end:
                rclpy.spin_once(node, timeout_sec=0.1)
            session.save(2_000_000_000) if keep else session.discard()
    finally:
        node.destroy_node()
        rclpy.shutdown()
    assert EpisodeReader(tmp_path / "episode_0000").topics()["/probe"] == ("std_msgs/msg/String", 5)
    assert read_metadata(tmp_path / "episode_0000").success is True
    assert not (tmp_path / "episode_0001").exists()


class _FakeWall:
    """A wall clock that moves only when the simulated clock waits (spin) or works (callbacks)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_sim_clock_paces_simulated_time_and_never_catches_up():
    """The simulator's clock (kil.runtimes.ros2.sim_clock): deadlines in order on simulated
    time, at most real_time_factor x the wall clock; inputs handled before each deadline;
    work slower than the pace stretches simulated time instead of bunching ticks."""
    import threading

    from kil.runtimes.ros2.sim_clock import SimClock

    wall, published, events, waits = _FakeWall(), [], [], []
    pace = {"rtf": 0.5}
    stop = threading.Event()
    clock = SimClock(1_000_000_000, lambda: pace["rtf"], published.append, wall)
    inbox = [3]  # three messages waiting before the first deadline

    def spin(timeout_s: float) -> bool:
        waits.append(timeout_s)
        if inbox[0]:
            inbox[0] -= 1
            events.append(("input", clock.now_ns()))
            return True
        wall.now += timeout_s
        return False

    def control() -> None:
        events.append(("control", clock.now_ns()))
        if clock.now_ns() == 1_050_000_000:
            wall.now += 1.0  # one slow tick (a render): 50 ms of simulated time took a second
        if clock.now_ns() >= 1_200_000_000:
            stop.set()

    clock.every(10_000_000, control)
    clock.call_later(0.025, lambda: events.append(("once", clock.now_ns())))
    clock.run(stop, spin)
    ticks = [t for kind, t in events if kind == "control"]
    assert ticks == [1_000_000_000 + k * 10_000_000 for k in range(1, 21)]  # every period, none skipped
    assert [t for kind, t in events if kind == "once"] == [1_025_000_000]
    assert [kind for kind, _ in events[:4]] == ["input"] * 3 + ["control"]  # inputs first
    assert published[0] == 1_000_000_000 and published == sorted(set(published)) and published[-1] == 1_200_000_000
    assert clock.lag_restarts == 1  # after the slow tick the pace restarts; no burst of ticks follows
    assert max(waits) <= 0.1 and wall.now - 100.0 == pytest.approx(0.2 / 0.5 + 1.0, abs=0.03)


@pytest.mark.ros
@pytest.mark.parametrize("rig", ["franka", "ur5e"])
def test_real_layout_episode_recorded_by_ros2_bag_record_builds(tmp_path, rig, capsys):
    """A Franka/ZED- or UR5e-layout episode (written independently, test/real_rig_bags.py)
    played by `ros2 bag play` and recorded by the real `ros2 bag record -s mcap` through
    the recorder's ros2bag backend on the rig's record_topics: the recorder's exit status
    and bag are checked before the save, and kil build-dataset reads the episode with the
    rig's topic names (real receive times, streams starting when discovery allows)."""
    from kil.cli import main
    from kil.data.episode import EpisodeMetadata, read_metadata
    from kil.data.episodes import EpisodeSession, Ros2BagProcess
    from kil.data.store import Store
    from real_rig_bags import FRANKA, UR5E, Episode, write_episode

    layout = {"franka": FRANKA, "ur5e": UR5E}[rig]
    source = tmp_path / "source"
    truth = write_episode(source, layout, Episode(duration_s=4.0, metadata=None))
    session = EpisodeSession(tmp_path / "demos", EpisodeMetadata(task="pick_place", rig=rig),
                             lambda path, _: Ros2BagProcess(path, load_rig(rig).record_topics))
    session.start(0)
    # --delay: the player's publishers exist while it waits, so the recorder subscribes first
    played = subprocess.run(["ros2", "bag", "play", str(source), "--delay", "2"], capture_output=True, text=True, timeout=120)
    assert played.returncode == 0, played.stderr[-2000:]
    time.sleep(0.5)
    ok, text = session.save(6_000_000_000)
    assert ok, text
    episode = tmp_path / "demos" / "episode_0000"
    assert read_metadata(episode).status == "complete"
    assert main(["build-dataset", str(tmp_path / "demos"), "--task", "pick_place", "--out", str(tmp_path / "ds")]) == 0
    assert "1 kept" in capsys.readouterr().out
    e = Store.open(tmp_path / "ds").read_episode("episode_0000")
    assert len(e) > 20
    cmd_ns = np.array([s for s, _, _ in truth["command"]])
    index = np.searchsorted(cmd_ns, e.stamp_ns[:, None] + np.arange(16)[None] * 100_000_000, side="right") - 1
    expected = np.array([p for _, p, _ in truth["command"]])[index]
    assert np.abs(e.action[..., :3] - expected).max() < 1e-6  # header stamps survive the replay


@pytest.mark.ros
def test_live_robot_state_from_a_real_frankas_joint_state_publishers(tmp_path):
    """A kil node reading the robot state with the Franka rig's names, as franka_ros2 serves it:
    the EE pose at 100 Hz, /joint_states from two publishers (the arm's broadcaster with the
    pose's stamps and no finger joints; the gripper's at 30 Hz with stamps of its own, 7 ms
    off). Every pose is completed with the newest usable finger joints (a held role), as in
    the dataset, instead of being dropped for want of an exact stamp match."""
    import rclpy
    from rclpy.node import Node

    from kil.converters.factory import RclpyFactory
    from kil.converters.factory import header_msg
    from kil.converters.pose import pose_command_from_ros, pose_stamped_msg
    from kil.runtimes.ros2.node import qos_profile

    graph = Path(__file__).parent / "data" / "state_echo_graph.yaml"
    spec = tmp_path / "graphs.json"  # the node as bringup starts it, without the rig's drivers and calibration
    spec.write_text(json.dumps([{"graph": str(graph), "namespace": "probe", "rig": "franka"}]))
    launch = subprocess.Popen(["ros2", "launch", str(Path(__file__).parent / "data" / "graph_nodes.launch.py"), f"spec:={spec}"],
                              env=_ros_env(), start_new_session=True)
    rig = load_rig("franka")
    factory = RclpyFactory()
    rclpy.init()
    node = Node("franka_state_probe")
    echoes = []
    node.create_subscription(factory.message_class("geometry_msgs/msg/PoseStamped"), "/toy/echo",
                             lambda m: echoes.append(pose_command_from_ros(m)), qos_profile(load_graph(graph).topics["/toy/echo"].qos))
    pose_pub = node.create_publisher(factory.message_class("geometry_msgs/msg/PoseStamped"), rig.ee_pose_topic, 10)
    joints_pub = node.create_publisher(factory.message_class("sensor_msgs/msg/JointState"), rig.joint_states_topic, 10)
    arm = [f"fr3_joint{i}" for i in range(1, 8)]
    sent = []
    try:
        deadline = time.monotonic() + 60
        while not pose_pub.get_subscription_count() and time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.1)
        assert pose_pub.get_subscription_count(), "the kil node did not subscribe"
        time.sleep(1.0)
        for i in range(300):
            stamp = node.get_clock().now().nanoseconds
            if i % 3 == 0:
                joints_pub.publish(factory.new("sensor_msgs/msg/JointState", header=header_msg(factory, stamp - 7_000_000, ""),
                                               name=list(rig.gripper.joints), position=[0.04, 0.04]))
            joints_pub.publish(factory.new("sensor_msgs/msg/JointState", header=header_msg(factory, stamp, ""), name=arm, position=[0.1] * 7))
            pose_pub.publish(pose_stamped_msg(factory, stamp, rig.base_frame, np.array([0.5, 0.0, 0.3]), np.array([1.0, 0, 0, 0])))
            sent.append(stamp)
            rclpy.spin_once(node, timeout_sec=0.0)
            time.sleep(0.01)
        end = time.monotonic() + 3
        while time.monotonic() < end:
            rclpy.spin_once(node, timeout_sec=0.1)
    finally:
        node.destroy_node()
        rclpy.shutdown()
        os.killpg(launch.pid, signal.SIGINT)
        launch.wait(timeout=30)
    assert len(echoes) >= 0.8 * len(sent), f"{len(echoes)} of {len(sent)} robot states came through"
    assert {m.stamp_ns for m in echoes} <= set(sent)
    assert all(abs(m.position[0] - 0.08) < 1e-9 for m in echoes)  # the fingers' sum
