"""The closed loop and recording over ROS 2, every node its own process over DDS, as the
README runs them: the simulated rig (`rig.launch.py rig:=sim`, driving /clock slower than
real time) plus `bringup.launch.py rig:=sim drivers:=false` with a trained policy; and
`record_demos.launch.py rig:=sim teleop:=expert` writing episodes with `ros2 bag record`,
which `kil build-dataset` then reads."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from ros_graph import Launch, Probe, ros2, ros_env

pytestmark = [pytest.mark.ros, pytest.mark.sim, pytest.mark.slow]

REAL_TIME_FACTOR = 0.3  # this 2-core machine renders and runs seven nodes well below real time
REACHED_M = 0.03  # EE within this of the block's centre: the arm reached the block
STARTUP_S = 180.0  # wall seconds for every node to load its models
SIM_TIMEOUT_S = 300.0  # wall seconds for what the test waits for in simulated time


def _position(msg) -> np.ndarray:
    p = msg.pose.position
    return np.array([p.x, p.y, p.z])


class _Block:
    """The block's position from /tf (sim/obj0, as a motion-capture system would give it)."""

    def __init__(self, probe: Probe) -> None:
        self.probe = probe
        probe.subscribe("/tf", "tf2_msgs/msg/TFMessage", 100)

    def position(self) -> np.ndarray | None:
        for received in reversed(self.probe.get("/tf")):
            for t in received.msg.transforms:
                if t.child_frame_id == "sim/obj0":
                    return np.array([t.transform.translation.x, t.transform.translation.y, t.transform.translation.z])
        return None


def test_policy_closes_the_loop_over_ros2_with_estop_parameters_and_shutdown(replay_policy, tmp_path):
    from rclpy.qos import DurabilityPolicy, QoSProfile

    from kil.converters.wire import wire_format
    from kil.msgs import Keypoints

    policy, _, seed = replay_policy
    probe = Probe()
    probe.watch_clock()
    for topic, ros_type in (("/kil/keypoints", "sensor_msgs/msg/PointCloud2"), ("/kil/chunk", "trajectory_msgs/msg/MultiDOFJointTrajectory"),
                            ("/kil/pose_target", "geometry_msgs/msg/PoseStamped"), ("/sim/ee_pose", "geometry_msgs/msg/PoseStamped")):
        probe.subscribe(topic, ros_type, 100)
    probe.subscribe("/kil/keypoints/names", "std_msgs/msg/String", QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL))
    block = _Block(probe)
    rig = Launch(["kil", "rig.launch.py", "rig:=sim", f"rig_set:=rig.seed={seed} rig.real_time_factor={REAL_TIME_FACTOR}"], tmp_path / "rig.log")
    bringup = Launch(["kil", "bringup.launch.py", "rig:=sim", "drivers:=false", "rviz:=false", f"policy:={policy}"], tmp_path / "bringup.log")
    try:
        rig.wait_for(r"running SimRig .*\(drives /clock\)", STARTUP_S)
        bringup.wait_for(r"\]: running \w+ from .*\(simulated time\)", STARTUP_S, count=6)

        # keypoints (named by their latched companion), chunks and pose targets flow
        probe.wait_until(lambda: probe.count("/kil/chunk") >= 3 and probe.count("/kil/keypoints/names") >= 1, SIM_TIMEOUT_S, "chunks")
        wire = wire_format(Keypoints)
        cloud, names = probe.get("/kil/keypoints")[-1].msg, probe.get("/kil/keypoints/names")[-1].msg
        keypoints = wire.from_ros({"": cloud, "names": names}, wire.options_class(), None, 0)
        assert {"block/top_center", "tray/center"} <= set(keypoints.names) and keypoints.visible.any()
        keypoint_stamps = {(m.msg.header.stamp.sec, m.msg.header.stamp.nanosec) for m in probe.get("/kil/keypoints")}
        chunks = probe.get("/kil/chunk")
        assert all((c.msg.header.stamp.sec, c.msg.header.stamp.nanosec) in keypoint_stamps for c in chunks)  # stamped with their frame
        # made from fresh frames, not a queue of old ones: on simulated time a slow machine
        # only stretches the run, so a chunk is a few control ticks younger than its frame
        lag_s = [(c.sim_ns - (c.msg.header.stamp.sec * 1e9 + c.msg.header.stamp.nanosec)) / 1e9 for c in chunks if c.sim_ns]
        assert np.median(lag_s) < 0.5, lag_s

        # the arm reaches the block
        def distance() -> float:
            ee, target = probe.get("/sim/ee_pose"), block.position()
            return np.inf if not ee or target is None else float(np.linalg.norm(_position(ee[-1].msg) - target))

        closest = [np.inf]
        probe.wait_until(lambda: closest.__setitem__(0, min(closest[0], distance())) or closest[0] < REACHED_M, SIM_TIMEOUT_S,
                         f"the EE within {REACHED_M} m of the block")

        # ros2 topic pub /kil/estop holds the robot; the clear service resumes it, once the
        # e-stop source says it is released (refused with the reason before)
        pub = ros2("topic", "pub", "--once", "-w", "1", "/kil/estop", "std_msgs/msg/Bool", "{data: true}")
        assert pub.returncode == 0, pub.stdout
        bringup.wait_for(r"E-STOP engaged", 60)
        probe.wait_sim(0.5, SIM_TIMEOUT_S)  # braking within the acceleration cap
        start = probe.count("/kil/pose_target")
        probe.wait_sim(1.0, SIM_TIMEOUT_S)
        held = np.array([_position(m.msg) for m in probe.get("/kil/pose_target")[start:]])
        assert len(held) >= 50 and np.ptp(held, axis=0).max() == 0.0, np.ptp(held, axis=0)
        refused = ros2("service", "call", "/safety/clear_estop", "std_srvs/srv/Trigger")
        assert "success=False" in refused.stdout and "still reports engaged" in refused.stdout, refused.stdout
        released = ros2("topic", "pub", "--once", "-w", "1", "/kil/estop", "std_msgs/msg/Bool", "{data: false}")
        assert released.returncode == 0, released.stdout
        cleared = ros2("service", "call", "/safety/clear_estop", "std_srvs/srv/Trigger")
        assert "success=True" in cleared.stdout, cleared.stdout
        probe.wait_until(lambda: np.abs(_position(probe.get("/kil/pose_target")[-1].msg) - held[-1]).max() > 1e-4, SIM_TIMEOUT_S,
                         "commands move again after the e-stop is cleared")

        # invalid parameter changes are refused with the reason; a valid one takes effect
        bad = ros2("param", "set", "--no-daemon", "/safety", "keypoint_max_age_s", "-5.0")
        assert "Setting parameter failed" in bad.stdout and "must be >= 0" in bad.stdout, bad.stdout
        fixed = ros2("param", "set", "--no-daemon", "/rig", "camera_rate_hz", "fast")
        assert "Setting parameter failed" in fixed.stdout, fixed.stdout
        assert "0.5" in ros2("param", "get", "--no-daemon", "/safety", "keypoint_max_age_s").stdout
        tight = ros2("param", "set", "--no-daemon", "/safety", "keypoint_max_age_s", "0.001")
        assert "Set parameter successful" in tight.stdout, tight.stdout
        bringup.wait_for(r"safety: keypoints older than 0\.001 s: holding", 60)
        assert "Set parameter successful" in ros2("param", "set", "--no-daemon", "/safety", "keypoint_max_age_s", "0.5").stdout
        bringup.wait_for(r"safety: inputs fresh again, resuming", 60, count=2)
    finally:
        probe.close()
        results = [launch.stop() for launch in (bringup, rig)]
    # Ctrl-C ends every process cleanly
    for result, nodes in zip(results, (6, 1)):
        assert result.returncode == 0 and not result.died and len(result.clean) == nodes, result.log[-3000:]
        assert "Traceback" not in result.log and "RCLError" not in result.log, result.log[-3000:]


def test_expert_demonstrations_recorded_with_ros2_bag_become_a_dataset(tmp_path):
    """record_demos.launch.py rig:=sim teleop:=expert: the scripted expert as a ROS 2 node,
    `ros2 bag record -s mcap` writing the episode, the sim's verdict in its metadata; the
    launch ends by itself once the episode is saved. kil build-dataset reads it."""
    from kil.data.bag import EpisodeReader
    from kil.data.episode import read_metadata
    from kil.rigs import load_rig

    out = tmp_path / "demos"
    for seed in (3, 4):
        launch = Launch(["kil", "record_demos.launch.py", "rig:=sim", "teleop:=expert", "task:=pick_place", f"seed:={seed}", f"out:={out}",
                         f"rig_set:=rig.real_time_factor={REAL_TIME_FACTOR + 0.2}"], tmp_path / f"record_{seed}.log")
        result = launch.wait_exit(SIM_TIMEOUT_S + STARTUP_S)
        assert result.returncode == 0 and not result.died, result.log[-3000:]
        assert "Traceback" not in result.log, result.log[-3000:]
    episodes = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert episodes == ["episode_0000", "episode_0001"]
    for name, seed in zip(episodes, (3, 4)):
        metadata = read_metadata(out / name)
        assert (metadata.task, metadata.rig, metadata.seed, metadata.status) == ("pick_place", "sim", seed, "complete")
        assert metadata.success is True and metadata.extra["completion"] == 1.0  # the sim's verdict
        assert metadata.extra["operator"] == "scripted_expert"
        topics = EpisodeReader(out / name).topics()
        assert set(load_rig("sim").record_topics) - {"/tf"} <= set(topics), sorted(topics)  # as ros2 bag record wrote them
        frames = topics["/camera/image"][1]
        assert frames >= 10 * 8 and topics["/camera/depth"][1] == frames  # 10 Hz for the whole demonstration
    for keypoints in ("image", "oracle"):
        built = subprocess.run([sys.executable, "-m", "kil", "build-dataset", str(out), "--task", "pick_place", "--keypoints", keypoints,
                                "--out", str(tmp_path / f"ds_{keypoints}")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=ros_env(), timeout=600)
        assert built.returncode == 0 and "from 2 episodes: 2 kept" in built.stdout and "0 excluded, 0 broken" in built.stdout, built.stdout
