"""The safety node against the faults a real rig produces, in the local runtime on the stepped
clock, with an arm (toy_stages.arm) that follows its commands with a lag: a start pose
outside the workspace, bursts and gaps of targets, a blocked arm, future-stamped keypoints,
states in an unknown frame, an e-stop cleared while still engaged. Limits are the Franka
rig's; every command stream is measured between its output stamps (kil.bench.safety.check)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from kil.bench.safety import Outcome, check
from kil.geometry import pose_to_matrix
from kil.graph import load_graph
from kil.msgs import ActionChunk, EStop, Keypoints, PoseCommand
from kil.rigs import load_rig
from kil.runtimes.local import LocalRuntime

RIG = load_rig("franka")
LIMITS, BASE = RIG.safety, RIG.base_frame
PERIOD_NS = int(1e9 / LIMITS.rate_hz)
DOWN = np.array([1.0, 0.0, 0.0, 0.0])
INSIDE = (0.5, 0.0, 0.3)

GRAPH = """
name: safety_faults
topics:
  /state: {type: RobotState}
  /target: {type: PoseCommand}
  /chunk: {type: ActionChunk}
  /gripper: {type: GripperCommand}
  /keypoints: {type: Keypoints}
  /estop: {type: EStop}
  /command: {type: PoseCommand}
  /gripper_command: {type: GripperCommand}
nodes:
  arm: {stage: toy_stages.arm, params: %(arm)s, subscribe: {command: /command}, publish: {state: /state}}
  safety:
    stage: safety
    params: %(safety)s
    subscribe: {target: /target, gripper: /gripper, state: /state, estop: /estop %(keypoints)s}
    publish: {command: /command, gripper: /gripper_command}
  %(interpolator)s
  sink: {stage: toy_stages.sink, subscribe: {command: /command, target: /target}}
"""
INTERPOLATOR = ("interpolator: {stage: interpolator, params: {max_speed: 0.25, max_angular_speed: 1.0},"
                " subscribe: {chunk: /chunk, state: /state, commanded: /command}, publish: {target: /target, gripper: /gripper}}")


def build(tmp_path, arm: dict | None = None, safety: dict | None = None, keypoints: bool = False,
          interpolator: bool = False) -> LocalRuntime:
    arm = {"frame": BASE, "start": list(INSIDE), **(arm or {})}
    safety = {"rig": "franka", **(safety or {})}
    path = tmp_path / "graph.yaml"
    path.write_text(GRAPH % {"arm": arm, "safety": safety, "keypoints": ", keypoints: /keypoints" if keypoints else "",
                             "interpolator": INTERPOLATOR if interpolator else ""})
    return LocalRuntime(load_graph(path), clock="stepped")


def every(runtime: LocalRuntime, start_s: float, end_s: float, period_s: float, fn) -> None:
    for t in np.arange(start_s, end_s, period_s):
        runtime.at(float(t), fn)


def target(runtime: LocalRuntime, position, stamp_offset_s: float = -0.002, frame: str = BASE) -> PoseCommand:
    stamp = max(runtime.clock.now_ns() + int(stamp_offset_s * 1e9), 0)
    return PoseCommand(stamp_ns=stamp, frame_id=frame, position=np.asarray(position, float), orientation=DOWN)


def commands(runtime: LocalRuntime) -> tuple[np.ndarray, np.ndarray, list[PoseCommand]]:
    """(seconds since the start, positions, messages) of every command to the robot."""
    sent = runtime.stages["sink"].of("command")
    t = (np.array([c.stamp_ns for c in sent], np.int64) - runtime.stats.start_ns) / 1e9
    return t, np.array([c.position for c in sent]).reshape(-1, 3), sent


def violations(runtime: LocalRuntime, start) -> dict[str, int]:
    _, _, sent = commands(runtime)
    outcome = Outcome(stamps_ns=np.array([c.stamp_ns for c in sent], np.int64), positions=np.array([c.position for c in sent]),
                      rotations=[Rotation.from_quat(c.orientation) for c in sent], references=[None] * len(sent),
                      start=(np.asarray(start, float), Rotation.from_quat(DOWN)), grippers=[], ticks=0)
    return {kind: n for kind, n in check(outcome, LIMITS, track=False).items() if n}


def messages(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


def test_an_arm_starting_outside_the_box_is_brought_in_along_the_shortest_path(tmp_path, caplog):
    """5 cm below workspace_min[0] and only asked to hold: no jump, no runaway; it moves in
    along the straight line to the nearest point of the box, from rest, within the caps."""
    start = np.array([LIMITS.workspace_min[0] - 0.05, 0.1, 0.3])
    runtime = build(tmp_path, arm={"start": start.tolist()})
    every(runtime, 0.05, 3.0, 0.01, lambda: runtime.inject("/target", target(runtime, start)))
    with caplog.at_level(logging.WARNING, logger="kil.safety"):
        runtime.run(3.0)
    t, p, _ = commands(runtime)
    entry = np.clip(start, LIMITS.workspace_min, LIMITS.workspace_max)
    assert np.linalg.norm(p[0] - start) <= LIMITS.max_step  # the first command is where the arm is
    np.testing.assert_allclose(p[:, 1:], np.tile(start[1:], (len(p), 1)), atol=1e-12)  # on the line to the box
    assert (np.diff(p[:, 0]) >= -1e-12).all()  # never back out
    np.testing.assert_allclose(p[-1], entry, atol=1e-9)  # inside, at rest on the boundary
    assert violations(runtime, start) == {}
    assert len(messages(caplog, "command outside the workspace: moving in")) == 1


def test_bursts_gaps_and_late_targets_give_one_command_per_tick_within_the_caps(tmp_path):
    """Ten targets in one instant (an executor stall), duplicates, a gap, a late target in the
    same tick as the silence watchdog: exactly one command per control tick, caps held
    between output stamps, and the newest target of a burst is the one followed."""
    runtime = build(tmp_path)
    rng = np.random.default_rng(0)
    every(runtime, 0.05, 1.0, 0.01, lambda: runtime.inject("/target", target(runtime, INSIDE)))

    def burst():
        for k in range(10):
            runtime.inject("/target", target(runtime, np.array(INSIDE) + rng.normal(0, 0.1, 3), stamp_offset_s=-0.001 * (10 - k)))
        far = target(runtime, [0.7, 0.2, 0.4])
        runtime.inject("/target", far)
        runtime.inject("/target", far)  # duplicate
    runtime.at(1.0, burst)
    # The interpolator stalls for 80 ms, then a late target and the next one arrive together.
    every(runtime, 1.005, 1.5, 0.01, lambda: runtime.inject("/target", target(runtime, [0.7, 0.2, 0.4])))
    runtime.at(1.6, lambda: [runtime.inject("/target", target(runtime, [0.7, 0.2, 0.4], stamp_offset_s=-0.02)),
                             runtime.inject("/target", target(runtime, [0.7, 0.2, 0.4]))])
    every(runtime, 1.61, 3.0, 0.01, lambda: runtime.inject("/target", target(runtime, [0.7, 0.2, 0.4])))
    runtime.run(3.0)
    t, p, sent = commands(runtime)
    stamps = np.array([c.stamp_ns for c in sent])
    assert (np.diff(stamps) == PERIOD_NS).all()  # one per tick, none skipped, none doubled
    assert violations(runtime, INSIDE) == {}
    assert np.linalg.norm(p[-1] - [0.7, 0.2, 0.4]) < 1e-6  # the newest target of the burst was followed


def test_a_blocked_arm_does_not_wind_up_the_command(tmp_path, caplog):
    """A policy keeps going (chunks along x at 0.1 m/s, whatever the arm does) into an
    obstacle that blocks the arm after 1 s: the command stops within max_tracking_error of
    the arm (not 0.28 m away), says so once, and the interpolator's target stays near it
    without ever jumping."""
    runtime = build(tmp_path, arm={"blocked_after_s": 1.0}, interpolator=True)

    def push():
        now = runtime.clock.now_ns()
        elapsed = (now - runtime.stats.start_ns) / 1e9
        positions = np.array(INSIDE) + np.outer(0.1 * (elapsed + 0.1 * np.arange(16)), [1.0, 0.0, 0.0])
        runtime.inject("/chunk", ActionChunk(now, BASE, 0.1, positions, np.tile(DOWN, (16, 1)), np.full(16, 0.04)))
    every(runtime, 0.05, 5.0, 0.1, push)
    with caplog.at_level(logging.WARNING, logger="kil.safety"):
        runtime.run(5.0)
    t, p, sent = commands(runtime)
    stamps = np.array([c.stamp_ns for c in sent])
    truth = dict(runtime.stages["arm"].poses)
    error = np.array([np.linalg.norm(c.position - truth[s]) for c, s in zip(sent, stamps)])
    bound = LIMITS.max_tracking_error.position
    assert np.ptp(p[t < 1.0][:, 0]) > 0.05  # it was moving before the obstacle
    assert error.max() <= bound + LIMITS.max_step
    assert error[t > 4.0].min() > 0.5 * bound  # and it still pushes (bounded), it did not give up
    assert violations(runtime, INSIDE) == {}
    assert len(messages(caplog, "tracking error at max_tracking_error")) == 1
    targets = runtime.stages["sink"].of("target")
    q = np.array([m.position for m in targets])
    assert np.linalg.norm(np.diff(q, axis=0), axis=1).max() <= 0.25 / 100 + 1e-12
    lead = [np.linalg.norm(m.position - c.position) for m, c in zip(targets[1:], sent)]
    assert max(lead) <= 0.02 + 2 * 0.25 / 100  # the target waits near the command


@pytest.mark.parametrize("case", ["future keypoints", "camera clock ahead", "zero-stamped targets"])
def test_insane_stamps_refresh_no_watchdog_and_drive_nothing(tmp_path, caplog, case):
    """A keypoints message stamped an hour ahead does not keep the watchdog satisfied; a camera
    clock 1 s ahead holds from the start; a target stamped 0 ns is never executed."""
    runtime = build(tmp_path, keypoints=True, safety={"keypoint_max_age_s": 0.5})
    goal = np.array([0.7, 0.2, 0.4])
    zero = case == "zero-stamped targets"
    every(runtime, 0.05, 3.0, 0.01, lambda: runtime.inject("/target", PoseCommand(0, BASE, goal, DOWN) if zero else target(runtime, goal)))
    ahead = 1.0 if case == "camera clock ahead" else 0.0
    last_good = 1.0 if case == "future keypoints" else 3.0

    def frame(offset_s: float) -> Keypoints:
        return Keypoints(stamp_ns=runtime.clock.now_ns() + int(offset_s * 1e9), frame_id=BASE, names=("a",),
                         uv=np.zeros((1, 2), np.float32), xyz=np.zeros((1, 3), np.float32), score=np.ones(1, np.float32),
                         visible=np.ones(1, bool), instance=np.zeros(1, np.int32))
    every(runtime, 0.0, last_good, 0.1, lambda: runtime.inject("/keypoints", frame(ahead - 0.05)))
    if case == "future keypoints":
        runtime.at(1.05, lambda: runtime.inject("/keypoints", frame(3600.0)))
    with caplog.at_level(logging.WARNING, logger="kil.safety"):
        runtime.run(3.0)
    t, p, _ = commands(runtime)
    rejections = runtime.stages["safety"].rejections
    if case == "future keypoints":
        assert np.ptp(p[t < 1.0], axis=0).max() > 0.05  # moving before
        hold_from = 0.95 + 0.5 + 0.3  # newest valid stamp + limit + braking
        assert np.ptp(p[t >= hold_from], axis=0).max() == 0.0
        assert messages(caplog, "keypoints on /keypoints stamped 3600.0")
        assert rejections["keypoints: future stamp"] == 1
    elif case == "camera clock ahead":
        assert len(p) == 0 or np.ptp(p, axis=0).max() <= 1e-12  # never moved
        assert len(messages(caplog, "keypoints on /keypoints stamped 0.95")) == 1  # logged once with the offset
        assert rejections["keypoints: future stamp"] == 30
    else:
        assert len(p) == 0  # no target was ever accepted: nothing sent at all
        assert len(messages(caplog, "target on /target arrived")) == 1
    assert violations(runtime, INSIDE) == {}


def test_states_and_targets_in_other_frames_go_through_tf_or_are_rejected(tmp_path, caplog):
    """A robot state in a camera frame: rejected with both frame names while TF does not know
    the frame (nothing is sent); once the calibration is on TF, transformed, and the first
    command is the arm's pose in the base frame."""
    frame_pose = [0.9, -0.3, 0.6, *Rotation.from_euler("xyz", [2.5, 0.1, -0.7]).as_quat()]
    runtime = build(tmp_path, arm={"frame": "zed_left_camera_frame_optical", "frame_pose": frame_pose})
    goal = np.array([0.6, 0.1, 0.35])
    every(runtime, 0.05, 2.0, 0.01, lambda: runtime.inject("/target", target(runtime, goal)))

    def calibrate():
        runtime.tf.set_transform(BASE, "zed_left_camera_frame_optical", pose_to_matrix(frame_pose[:3], frame_pose[3:]), 0, static=True)
    runtime.at(1.0, calibrate)
    with caplog.at_level(logging.WARNING, logger="kil.safety"):
        runtime.run(2.0)
    t, p, _ = commands(runtime)
    assert t.min() >= 1.0  # nothing before TF knew the frame
    assert len(messages(caplog, "'zed_left_camera_frame_optical': no transform to the base frame 'fr3_link0'")) == 1
    np.testing.assert_allclose(p[0], INSIDE, atol=LIMITS.max_step)  # the arm's pose, not its camera-frame coordinates
    assert np.linalg.norm(p[-1] - goal) < 0.05
    assert violations(runtime, INSIDE) == {}


def test_estop_clear_is_refused_while_the_source_still_reports_engaged(tmp_path):
    runtime = build(tmp_path)
    every(runtime, 0.05, 3.0, 0.01, lambda: runtime.inject("/target", target(runtime, [0.7, 0.2, 0.4])))
    answers = {}
    runtime.at(0.3, lambda: runtime.inject("/estop", EStop(runtime.clock.now_ns(), engaged=True)))
    runtime.at(1.0, lambda: answers.setdefault("while engaged", runtime.call_service("safety", "clear_estop")))
    runtime.at(1.1, lambda: runtime.inject("/estop", EStop(runtime.clock.now_ns(), engaged=True)))  # the button keeps reporting
    runtime.at(1.5, lambda: runtime.inject("/estop", EStop(runtime.clock.now_ns(), engaged=False)))
    runtime.at(1.8, lambda: answers.setdefault("released", runtime.call_service("safety", "clear_estop")))
    runtime.run(3.0)
    t, p, _ = commands(runtime)
    ok, why = answers["while engaged"]
    assert not ok and "still reports engaged" in why and "/estop" in why
    assert answers["released"] == (True, "e-stop cleared")
    assert np.ptp(p[(t >= 0.6) & (t < 1.8)], axis=0).max() == 0.0  # held through the refused clear and the release
    assert np.ptp(p[t >= 1.8], axis=0).max() > 0.05  # moves once cleared
    assert violations(runtime, INSIDE) == {}


def test_the_interpolator_target_never_jumps_after_a_hold_or_a_wall(tmp_path):
    """Chunks drive the command into the workspace wall (x beyond workspace_max), the e-stop
    holds it for a second, then chunks lead back inside: the interpolator's own targets never
    move more than its caps per tick, and never run further than its lead ahead of what the
    safety node commands (they used to jump back by up to 14 mm per tick at each chunk, and
    0.37 m after a hold at a wall)."""
    runtime = build(tmp_path, interpolator=True)
    wall = LIMITS.workspace_max[0]

    def chunk_to(goal):
        def send():
            now = runtime.clock.now_ns()
            start = runtime.stages["arm"].position
            positions = np.linspace(start, goal, 16)
            yaw = Rotation.from_euler("z", 0.3) * Rotation.from_quat(DOWN)  # a turn too
            runtime.inject("/chunk", ActionChunk(now, BASE, 0.1, positions, np.tile(yaw.as_quat(), (16, 1)), np.full(16, 0.04)))
        return send
    every(runtime, 0.05, 4.5, 0.1, chunk_to([wall + 0.3, 0.1, 0.3]))
    runtime.at(3.5, lambda: runtime.inject("/estop", EStop(runtime.clock.now_ns(), engaged=True)))
    runtime.at(4.0, lambda: runtime.inject("/estop", EStop(runtime.clock.now_ns(), engaged=False)))
    runtime.at(4.5, lambda: runtime.call_service("safety", "clear_estop"))
    every(runtime, 4.5, 7.0, 0.1, chunk_to([0.45, -0.1, 0.25]))
    runtime.run(7.0)
    t, p, sent = commands(runtime)
    assert p[:, 0].max() == pytest.approx(wall, abs=1e-9)  # the command reached the wall and stopped there
    assert p[-1, 0] < wall - 0.1  # and came back
    targets = runtime.stages["sink"].of("target")
    q = np.array([m.position for m in targets])
    assert np.linalg.norm(np.diff(q, axis=0), axis=1).max() <= 0.25 / 100 + 1e-12
    turns = [(Rotation.from_quat(b.orientation) * Rotation.from_quat(a.orientation).inv()).magnitude() for a, b in zip(targets, targets[1:])]
    assert max(turns) <= 1.0 / 100 + 1e-9
    by_stamp = {c.stamp_ns: c.position for c in sent}
    lead = [np.linalg.norm(m.position - by_stamp[m.stamp_ns - PERIOD_NS]) for m in targets if m.stamp_ns - PERIOD_NS in by_stamp]
    assert max(lead) <= 0.02 + 2 * 0.25 / 100
    assert violations(runtime, INSIDE) == {}
