"""Teleoperation through the live chain, in the local runtime on the stepped clock: the
recording graphs record_demos.launch.py starts (teleop_quest, teleop_spacemouse) and the
keyboard teleop drive the simulated robot through the interpolator and the safety node,
and their buttons start, save and discard episodes. Also: the ros2bag recorder backend's
process handling and the gripper action goals of the real rigs."""

from __future__ import annotations

import os
import pty
import sys
import textwrap
import time

import numpy as np
import pytest

from kil.config import load_yaml
from kil.converters.factory import TypestoreFactory
from kil.converters.gripper import GripperCommandOptions, gripper_goal
from kil.converters.typestore import ros2_typestore
from kil.data.bag import EpisodeReader
from kil.data.episode import EpisodeMetadata, read_metadata
from kil.data.episodes import EpisodeSession, InProcessBag, Ros2BagProcess, next_episode_dir
from kil.graph import load_graph, parse_graph
from kil.msgs import Buttons, GripperCommand, HandInputs, HandPose, Twist
from kil.paths import graph_path
from kil.rigs import load_rig, record_params
from kil.runtimes.local import LocalRuntime

SIM = load_rig("sim")


def sim_teleop_graph(tmp_path, teleop: str):
    """The rig-independent recording graph teleop_<teleop>.yaml on the simulated rig (no
    camera: the motion is what is tested), its recorder writing bags in-process, plus a sink
    of the robot's states."""
    data = load_yaml(graph_path(f"teleop_{teleop}"))
    data["topics"]["/camera"] = {"type": "RGBD"}
    data["nodes"]["rig"] = {"stage": "sim_rig", "params": {"robot": "panda", "task": "pick_place", "seed": 5, "render": False},
                            "subscribe": {"target": "/kil/pose_target", "gripper": "/kil/gripper_command"},
                            "publish": {"state": "/robot_state"}}
    data["nodes"]["states"] = {"stage": "toy_stages.sink", "subscribe": {"state": "/robot_state"}}
    data["nodes"]["recorder"]["subscribe"].update({"state": "/robot_state", "target": "/kil/pose_target"})
    overrides = record_params(SIM, "pick_place", teleop, str(tmp_path / "demos"))
    overrides["recorder"]["backend"] = "rosbags"
    return parse_graph(data, f"teleop_{teleop} on the sim", overrides)


def states(runtime) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(times in s from the start, EE positions, gripper openings) of the robot."""
    received = runtime.stages["states"].of("state")
    t = (np.array([s.stamp_ns for s in received]) - runtime.stats.start_ns) / 1e9
    return t, np.array([s.position for s in received]), np.array([s.gripper for s in received])


def at_time(t, values, time_s):
    return values[np.searchsorted(t, time_s)]


def test_quest_clutch_moves_the_robot_relative_to_the_hand_and_records_an_episode(tmp_path):
    runtime = LocalRuntime(sim_teleop_graph(tmp_path, "quest"), clock="stepped")
    hand_start = np.array([1.0, 2.0, 0.5])  # anywhere in the headset's tracking space
    down = [0.0, 0.0, 0.0, 1.0]

    def hand(time_s: float) -> np.ndarray:
        # +12 cm in x while the grip is held (0.5-1.5 s); then -15 cm in y with the grip released.
        return hand_start + [0.12 * np.clip(time_s - 0.5, 0, 1), -0.15 * np.clip((time_s - 2.5) / 0.5, 0, 1), 0]

    def inputs(time_s: float) -> HandInputs:
        return HandInputs(
            stamp_ns=0, button_lower=0.2 <= time_s < 0.3 or 4.0 <= time_s < 4.1, button_upper=False, thumb_stick=[0, 0],
            index=1.0 if time_s >= 3.2 else 0.0, middle=1.0 if 0.4 <= time_s < 2.2 else 0.0,
        )

    for time_s in np.arange(0.02, 4.5, 0.02):
        runtime.at(time_s, lambda s=time_s: runtime.inject("/q2r_right_hand_pose", HandPose(runtime.clock.now_ns(), "quest", hand(s), down)))
        runtime.at(time_s + 0.01, lambda s=time_s: runtime.inject("/q2r_right_hand_inputs", inputs(s)))
    runtime.run(4.5)
    t, ee, gripper = states(runtime)
    start = at_time(t, ee, 0.4)
    clutched = at_time(t, ee, 2.4) - start
    np.testing.assert_allclose(clutched, [0.12, 0, 0], atol=0.01)  # followed the hand
    released = at_time(t, ee, 3.2) - at_time(t, ee, 2.4)
    assert np.linalg.norm(released) < 0.005  # the hand moved 15 cm without the grip: the robot stayed
    assert at_time(t, gripper, 3.0) > 0.07 and gripper[-1] < 0.01  # the index trigger closed the gripper
    # A started the episode, A again saved it: one episode, with the operator's metadata.
    episode = tmp_path / "demos" / "episode_0000"
    assert sorted(p.name for p in (tmp_path / "demos").iterdir()) == ["episode_0000"]
    metadata = read_metadata(episode)
    assert (metadata.task, metadata.rig, metadata.success, metadata.status) == ("pick_place", "sim", True, "complete")
    assert metadata.extra["operator"] == "quest" and metadata.extra["stop_reason"] == "saved"
    assert 3.6 <= metadata.extra["duration_s"] <= 3.9
    topics = EpisodeReader(episode).topics()
    assert set(topics) >= {"/kil/pose_target", "/sim/ee_pose", "/joint_states"}
    assert 360 <= topics["/kil/pose_target"][1] <= 390  # the 100 Hz commands of the ~3.75 s recorded


def test_quest_discard_button_deletes_the_episode(tmp_path):
    runtime = LocalRuntime(sim_teleop_graph(tmp_path, "quest"), clock="stepped")
    # The app's A+B alignment chord (released one by one) records nothing; then A, then B.
    presses = {0.1: (True, True), 0.15: (True, False), 0.18: (False, False),
               0.2: (True, False), 0.3: (False, False), 1.0: (False, True), 1.1: (False, False)}
    for time_s, (lower, upper) in presses.items():
        runtime.at(time_s, lambda lo=lower, up=upper: runtime.inject(
            "/q2r_right_hand_inputs", HandInputs(runtime.clock.now_ns(), up, lo, [0, 0], 0.0, 0.0)))
    runtime.run(1.5)
    recorder = runtime.stages["recorder"]
    assert recorder.session.discarded == [tmp_path / "demos" / "episode_0000"] and not recorder.session.saved
    assert not (tmp_path / "demos" / "episode_0000").exists()


def test_spacemouse_drives_the_target_velocity_and_toggles_the_gripper(tmp_path):
    runtime = LocalRuntime(sim_teleop_graph(tmp_path, "spacemouse"), clock="stepped")
    config = runtime.stages["teleop"].config
    for time_s in np.arange(0.5, 1.5, 0.05):  # full deflection towards +y for 1 s (spacenav repeats while moved)
        runtime.at(time_s, lambda: runtime.inject("/spacenav/twist", Twist(runtime.clock.now_ns(), [0, config.full_scale, 0], [0, 0, 0])))
    runtime.at(2.0, lambda: runtime.inject("/spacenav/joy", Buttons(runtime.clock.now_ns(), (True, False))))
    runtime.at(2.1, lambda: runtime.inject("/spacenav/joy", Buttons(runtime.clock.now_ns(), (False, False))))
    runtime.run(3.0)
    t, ee, gripper = states(runtime)
    moved = at_time(t, ee, 2.0) - at_time(t, ee, 0.4)
    # 10 cm/s for the 1 s of input and up to the 0.2 s input timeout after its last message
    assert 0.10 <= moved[1] <= 0.125 and np.abs(moved[[0, 2]]).max() < 0.005
    assert np.linalg.norm(ee[-1] - at_time(t, ee, 2.0)) < 0.005  # let go: the robot stops
    assert at_time(t, gripper, 1.9) > 0.07 and gripper[-1] < 0.01  # the left button closed the gripper


def test_teleop_target_stays_on_a_leash_at_the_workspace_wall(tmp_path):
    """Pushed into the safety node's workspace wall for 3 s, the target does not run away:
    pulling back moves the robot at once."""
    runtime = LocalRuntime(sim_teleop_graph(tmp_path, "spacemouse"), clock="stepped")
    config = runtime.stages["teleop"].config
    for time_s in np.arange(0.1, 8.0, 0.05):
        direction = 1.0 if time_s < 7.0 else -1.0  # up (past the 0.40 m ceiling), then down
        runtime.at(time_s, lambda d=direction: runtime.inject("/spacenav/twist", Twist(runtime.clock.now_ns(), [0, 0, d * config.full_scale], [0, 0, 0])))
    runtime.run(8.0)
    t, ee, _ = states(runtime)
    assert at_time(t, ee, 6.9)[2] <= SIM.safety.workspace_max[2] + 0.002  # the commands stop at the wall (tracking error aside)
    assert at_time(t, ee, 7.9)[2] < at_time(t, ee, 7.0)[2] - 0.015  # moving down within the second (unleashed: not for 7 s)


def test_keyboard_teleop_reads_keys_from_a_terminal_and_records(tmp_path):
    master, slave = pty.openpty()
    try:
        overrides = {"rig": {"task": "pick_place", "seed": 5, "render": False},
                     "teleop": {"tty": os.ttyname(slave)},
                     "recorder": {"out": str(tmp_path / "demos"), "stop_after_episodes": 1, "operator": "keyboard"}}
        graph = load_graph(graph_path("sim_demo"), overrides, stages={"teleop": "keyboard_teleop"})
        runtime = LocalRuntime(graph, clock="stepped")
        runtime.at(0.3, lambda: os.write(master, b"\n"))  # start
        runtime.at(0.5, lambda: os.write(master, b"wwwww"))  # 5 cm along +x
        runtime.at(1.5, lambda: os.write(master, b"rr "))  # 2 cm up, close
        runtime.at(2.5, lambda: os.write(master, b"\n"))  # save: the recorder ends the run
        stats = runtime.run(10.0)
    finally:
        os.close(master)
        os.close(slave)
    assert "recorder: 1 episode(s) recorded" in stats.stop_reason and stats.end_ns - stats.start_ns < 3.0e9
    assert runtime.graph.publishers("/kil/pose_target") == ["safety"]
    first = read_metadata(tmp_path / "demos" / "episode_0000")
    assert first.extra["operator"] == "keyboard" and first.success is True
    state = [m for _, _, m in EpisodeReader(tmp_path / "demos" / "episode_0000").messages([graph.topics["/robot_state"]])]
    moved = state[-1].position - state[0].position
    np.testing.assert_allclose(moved, [0.05, 0.0, 0.02], atol=0.01)
    assert state[-1].gripper < 0.05


def test_keyboard_teleop_needs_a_terminal(tmp_path):
    from kil.errors import ConfigError

    not_a_tty = tmp_path / "keys.txt"
    not_a_tty.write_text("www")
    graph = load_graph(graph_path("sim_demo"), {"rig": {"render": False}, "teleop": {"tty": str(not_a_tty)},
                                               "recorder": {"out": str(tmp_path / "demos")}}, stages={"teleop": "keyboard_teleop"})
    with pytest.raises(ConfigError, match=r"^keyboard_teleop.tty: .*keys.txt is not a terminal"):
        LocalRuntime(graph, clock="stepped").run(0.5)
    assert not (tmp_path / "demos").exists()  # nothing was started


# --- recording sessions -----------------------------------------------------------------------

def test_session_numbers_episodes_after_the_highest_and_keeps_interrupted_ones(tmp_path):
    (tmp_path / "episode_0007").mkdir()
    assert next_episode_dir(tmp_path).name == "episode_0008"
    template = EpisodeMetadata(task="pick_place", rig="sim")
    session = EpisodeSession(tmp_path, template, lambda path, metadata: InProcessBag(path, metadata))
    assert session.save(0) == (False, "not recording")
    assert session.start(0)[0] and not session.start(1)[0]  # one at a time
    session.close(2_500_000_000)  # the graph stopped mid-episode
    metadata = read_metadata(tmp_path / "episode_0008")
    assert (metadata.success, metadata.status, metadata.extra["stop_reason"], metadata.extra["duration_s"]) == (False, "complete", "interrupted", 2.5)


FAKE_ROS2_BAG = textwrap.dedent('''
    """Plays `ros2 bag record -s mcap -o DIR TOPIC...` for the process handling: writes a real
    rosbag2 MCAP episode with one message per topic and closes it on SIGINT."""
    import signal, sys, time
    stop = []
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))  # like ros2 bag: Ctrl-C closes the bag
    from kil.data.bag import EpisodeWriter
    from kil.data.episode import EpisodeMetadata
    from kil.converters.factory import TypestoreFactory

    args = sys.argv[1:]
    out, topics = args[args.index("-o") + 1], args[args.index("-o") + 2:]
    writer = EpisodeWriter(out, EpisodeMetadata(task="x", rig="x")).open()
    factory = TypestoreFactory(writer.typestore)
    for i, topic in enumerate(topics):
        writer.write_ros(topic, "std_msgs/msg/String", factory.new("std_msgs/msg/String", data=topic), 1000 + i)
    while not stop:
        time.sleep(0.01)
    writer.close()
''')


def test_ros2bag_backend_starts_stops_and_discards_the_recorder_process(tmp_path):
    script = tmp_path / "fake_ros2_bag.py"
    script.write_text(FAKE_ROS2_BAG)
    command = (sys.executable, str(script))
    metadata = EpisodeMetadata(task="pick_place", rig="franka", extra={"operator": "quest"})
    session = EpisodeSession(tmp_path / "demos", metadata, lambda path, _: Ros2BagProcess(path, ["/a", "/b"], command))
    session.start(0)
    session.save(3_000_000_000)
    session.start(4_000_000_000)
    session.discard()
    episode = tmp_path / "demos" / "episode_0000"
    assert session.saved == [episode] and session.discarded == [tmp_path / "demos" / "episode_0001"]
    assert not session.discarded[0].exists() and not list((tmp_path / "demos").glob(".*.log"))
    assert EpisodeReader(episode).topics() == {"/a": ("std_msgs/msg/String", 1), "/b": ("std_msgs/msg/String", 1)}
    saved = read_metadata(episode)  # ours replaces the recorder's: the operator's outcome
    assert (saved.task, saved.rig, saved.success, saved.extra["operator"], saved.extra["duration_s"]) == ("pick_place", "franka", True, "quest", 3.0)


def test_ros2bag_backend_reports_a_recorder_that_wrote_nothing(tmp_path):
    command = (sys.executable, "-c", "import sys; print('no such topic'); sys.exit(3)")
    session = EpisodeSession(tmp_path, EpisodeMetadata(task="t", rig="franka"), lambda path, _: Ros2BagProcess(path, ["/a"], command))
    session.start(0)
    ok, text = session.save(1)
    assert not ok and "episode_0000: the recorder wrote no bag (exit code 3: no such topic)" in text
    assert session.saved == [] and session.failed == [tmp_path / "episode_0000"]


DYING_ROS2_BAG = textwrap.dedent('''
    """A `ros2 bag record` that dies mid-episode (a crash, the OOM killer): some chunks are
    on disk, the bag is never closed, the process ends on its own with an error."""
    import os, sys, time
    from kil.data.bag import EpisodeWriter
    from kil.data.episode import EpisodeMetadata
    from kil.converters.factory import TypestoreFactory

    args = sys.argv[1:]
    out, topics = args[args.index("-o") + 1], args[args.index("-o") + 2:]
    writer = EpisodeWriter(out, EpisodeMetadata(task="x", rig="x"), flush_interval_s=0.001).open()
    factory = TypestoreFactory(writer.typestore)
    for i in range(20):
        writer.write_ros(topics[0], "std_msgs/msg/String", factory.new("std_msgs/msg/String", data=str(i)), 1000 + i * 10**6)
    print("terminate called after throwing an instance of std::bad_alloc", flush=True)
    os._exit(134)
''')


def test_ros2bag_backend_never_saves_a_recording_whose_recorder_died(tmp_path):
    """A recorder that died before the save: the episode is kept (recovered), marked
    failed with the reason, its log kept, and the save reported as failed."""
    from kil.data.builder import exclusion

    script = tmp_path / "dying_ros2_bag.py"
    script.write_text(DYING_ROS2_BAG)
    metadata = EpisodeMetadata(task="pick_place", rig="franka")
    session = EpisodeSession(tmp_path / "demos", metadata, lambda path, _: Ros2BagProcess(path, ["/a"], (sys.executable, str(script))))
    session.start(0)
    episode = tmp_path / "demos" / "episode_0000"
    deadline = time.monotonic() + 20
    while not (episode.is_dir() and session.current.process.poll() is not None) and time.monotonic() < deadline:
        time.sleep(0.05)
    ok, text = session.save(5_000_000_000)  # the operator saves, not knowing
    assert not ok and "the recorder died during the episode (exit code 134: terminate called" in text
    assert session.saved == [] and session.failed == [episode]
    saved = read_metadata(episode)
    assert saved.status == "failed" and "exit code 134" in saved.extra["recorder_error"]
    assert (tmp_path / "demos" / ".episode_0000.record.log").read_text().strip().endswith("std::bad_alloc")
    assert EpisodeReader(episode).topics()["/a"][1] == 20  # what it wrote is kept, readable
    assert "the recording failed" in exclusion(saved, False, "pick_place")


def test_ros2bag_backend_fails_a_recorder_exiting_with_an_error(tmp_path):
    """Stopped with Ctrl-C, the recorder closed a bag but exited 1: not a saved episode."""
    script = tmp_path / "fake_ros2_bag.py"
    script.write_text(FAKE_ROS2_BAG + "\nsys.exit(1)\n")
    session = EpisodeSession(tmp_path / "demos", EpisodeMetadata(task="t", rig="franka"),
                             lambda path, _: Ros2BagProcess(path, ["/a"], (sys.executable, str(script))))
    session.start(0)
    ok, text = session.save(1_000_000_000)
    assert not ok and "the recorder exited with code 1" in text
    assert read_metadata(tmp_path / "demos" / "episode_0000").status == "failed"


# --- gripper goals ---------------------------------------------------------------------------

@pytest.mark.parametrize("distro", ["humble", "jazzy"])
def test_gripper_goals_for_the_real_grippers(distro):
    store = ros2_typestore(distro)
    factory = TypestoreFactory(store)

    def cdr(goal):
        return store.deserialize_cdr(store.serialize_cdr(goal.goal, f"{goal.action_type}_Goal"), f"{goal.action_type}_Goal")

    ur5e = load_rig("ur5e").gripper
    robotiq = GripperCommandOptions("gripper_command", ur5e.action, ur5e.scale, ur5e.offset)
    goal = gripper_goal(GripperCommand(0, 0.0, 50.0), robotiq, factory)
    assert (goal.action, goal.action_type) == ("/robotiq_gripper_controller/gripper_cmd", "control_msgs/action/GripperCommand")
    assert cdr(goal).command.position == pytest.approx(0.8) and cdr(goal).command.max_effort == 50.0  # closed: 0.8 rad
    assert gripper_goal(GripperCommand(0, 0.085), robotiq, factory).goal.command.position == pytest.approx(0.0)

    franka = GripperCommandOptions("franka_gripper", "/franka_gripper")
    grasp = gripper_goal(GripperCommand(0, 0.0), franka, factory)
    assert (grasp.action, grasp.action_type) == ("/franka_gripper/grasp", "franka_msgs/action/Grasp")
    received = cdr(grasp)
    assert (received.width, received.force, received.epsilon.inner, received.epsilon.outer) == (0.0, 40.0, 0.08, 0.08)
    move = gripper_goal(GripperCommand(0, 0.08), franka, factory)
    assert (move.action, cdr(move).width, cdr(move).speed) == ("/franka_gripper/move", 0.08, 0.1)
    assert gripper_goal(GripperCommand(0, 0.08), GripperCommandOptions(), factory) is None  # the sim: topic only


# --- kil record -------------------------------------------------------------------------------

def test_kil_record_expert_episode_and_real_rig_refusal(tmp_path, capsys):
    from kil.cli import main

    assert main(["record", "--rig", "sim", "--teleop", "expert", "--episodes", "1", "--camera-rate", "10", "--out", str(tmp_path)]) == 0
    assert "1 episodes (expert), success 1/1" in " ".join(capsys.readouterr().out.split())
    metadata = read_metadata(tmp_path / "episode_0000")
    assert (metadata.success, metadata.extra["operator"], metadata.extra["completion"]) == (True, "scripted_expert", 1.0)
    assert {"/camera/image", "/kil/pose_target", "/kil/chunk"} <= set(EpisodeReader(tmp_path / "episode_0000").topics())
    assert main(["record", "--rig", "sim", "--out", str(tmp_path)]) == 1  # a scripted batch never appends
    assert main(["record", "--rig", "franka", "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert "holds episodes already" in err
    assert "kil record: error: --rig: franka is a real rig; record on it with: ros2 launch kil record_demos.launch.py rig:=franka" in err
