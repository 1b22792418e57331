"""The safety layer under generated adversarial input: the filter under arbitrary targets,
and the safety node under timed schedules (kil.bench.safety: bursts, duplicates, gaps,
future, stale and zero stamps, arms that start outside the box, follow, lag, freeze or stop
reporting, states and targets in other frames, e-stops): whatever arrives, no command
leaves the workspace or exceeds a cap, measured between output stamps."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from kil.bench.safety import ROBOTS, STATE_FRAMES, Outcome, Schedule, check, run_schedule
from kil.errors import ConfigError
from kil.rigs import load_rig
from kil.control.limits import SafetyLimits
from kil.control.safety_filter import SafetyFilter

LIMITS = SafetyLimits()
DT = 1.0 / LIMITS.rate_hz
EPS = 1e-9
DOWN = np.array([1.0, 0.0, 0.0, 0.0])

finite = st.floats(-3.0, 3.0, allow_nan=False)
wild = st.one_of(finite, st.sampled_from([np.nan, np.inf, -np.inf, 1e9, -1e9]))
positions = st.one_of(st.none(), st.tuples(wild, wild, wild).map(np.array))
quaternions = st.one_of(st.none(), st.tuples(wild, wild, wild, wild).map(np.array))
# A target is held for a few ticks (like interpolated chunks) or changes every tick.
targets = st.lists(st.tuples(positions, quaternions, st.integers(1, 40)), min_size=1, max_size=25)
starts = st.tuples(*(st.floats(lo, hi) for lo, hi in zip(LIMITS.workspace_min, LIMITS.workspace_max))).map(np.array)


def run(start, schedule):
    f = SafetyFilter(LIMITS, start, DOWN)
    poses = [(f.position.copy(), f.rotation)]
    for p, q, ticks in schedule:
        for _ in range(ticks):
            position, orientation, _ = f.step(DT, p, q)
            poses.append((position, Rotation.from_quat(orientation)))
    return poses


def check_caps(poses):
    lo, hi = np.array(LIMITS.workspace_min), np.array(LIMITS.workspace_max)
    p = np.array([x for x, _ in poses])
    assert (p >= lo - EPS).all() and (p <= hi + EPS).all()
    v = np.diff(p, axis=0) / DT
    assert np.linalg.norm(v, axis=1).max(initial=0) <= LIMITS.max_speed + 1e-7
    assert (np.linalg.norm(np.diff(p, axis=0), axis=1).max(initial=0)) <= LIMITS.max_step + 1e-9
    accel = np.diff(np.vstack([np.zeros(3), v]), axis=0) / DT  # from rest
    assert np.linalg.norm(accel, axis=1).max(initial=0) <= LIMITS.max_acceleration + 1e-6
    omega = np.array([(b * a.inv()).as_rotvec() / DT for (_, a), (_, b) in zip(poses, poses[1:])]).reshape(-1, 3)
    assert np.linalg.norm(omega, axis=1).max(initial=0) <= LIMITS.max_angular_speed + 1e-6
    alpha = np.diff(np.vstack([np.zeros(3), omega]), axis=0) / DT
    assert np.linalg.norm(alpha, axis=1).max(initial=0) <= LIMITS.max_angular_acceleration + 1e-4


@settings(max_examples=150, deadline=None)
@given(start=starts, schedule=targets)
def test_no_command_leaves_the_workspace_or_exceeds_a_cap(start, schedule):
    check_caps(run(start, schedule))


@settings(max_examples=60, deadline=None)
@given(start=starts, goal=st.tuples(finite, finite, finite).map(np.array), turn=st.tuples(finite, finite, finite).map(np.array))
def test_a_steady_target_is_reached_exactly(start, goal, turn):
    """Within the caps it still gets there: the clamped goal and the target orientation."""
    q = (Rotation.from_rotvec(turn / 3) * Rotation.from_quat(DOWN)).as_quat()
    poses = run(start, [(goal, q, 800)])
    check_caps(poses)
    position, rotation = poses[-1]
    np.testing.assert_allclose(position, np.clip(goal, LIMITS.workspace_min, LIMITS.workspace_max), atol=1e-6)
    assert (rotation * Rotation.from_quat(q).inv()).magnitude() < 1e-6


def test_bad_targets_hold_and_say_why():
    f = SafetyFilter(LIMITS, np.array([0.5, 0.0, 0.2]), DOWN)
    for target, reason in (((np.array([np.nan, 0, 0]), DOWN), "target not finite: holding"),
                           ((None, None), "no target: holding"),
                           ((np.array([0.5, 0.0, 0.2]), np.zeros(4)), "target not finite: holding")):
        position, orientation, reasons = f.step(DT, *target)
        assert reason in reasons
        np.testing.assert_array_equal(position, [0.5, 0.0, 0.2])
    _, _, reasons = f.step(DT, np.array([5.0, 0.0, 0.2]), DOWN)
    assert "target outside the workspace: clamped" in reasons and "speed limited" in reasons
    assert f.gripper(0.2) == (LIMITS.gripper_max, {"gripper out of range"})
    assert f.gripper(float("nan"))[0] is None and f.gripper(0.03) == (0.03, set())


timed_schedules = st.builds(
    Schedule,
    seed=st.integers(0, 2**31 - 1), duration_s=st.just(2.0), robot=st.sampled_from(ROBOTS),
    robot_tau_s=st.floats(0.01, 0.25), state_delay_s=st.floats(0.0, 0.3), freeze_at_s=st.floats(0.05, 2.0),
    state_rate_hz=st.sampled_from([30.0, 50.0, 100.0, 500.0]), state_frame=st.sampled_from(STATE_FRAMES),
    start_outside=st.tuples(*[st.one_of(st.just(0.0), st.floats(-0.2, 0.2))] * 3),
    start_turn=st.tuples(*[st.floats(-3.0, 3.0)] * 3), target_spread=st.floats(0.0, 0.6), target_hold_s=st.floats(0.01, 1.0),
    burst_rate=st.floats(0.0, 0.5), duplicate_rate=st.floats(0.0, 0.5), gap_rate=st.floats(0.0, 0.1),
    bad_stamp_rate=st.floats(0.0, 0.3), nan_rate=st.floats(0.0, 0.1), frame_rate=st.floats(0.0, 0.3),
    keypoint_future_rate=st.floats(0.0, 0.2), estop_presses=st.integers(0, 3), tick_jitter_s=st.sampled_from([0.0, 0.002, 0.03]),
)


@settings(max_examples=60, deadline=None)
@given(rig=st.sampled_from(["franka", "ur5e", "sim"]), schedule=timed_schedules)
def test_the_safety_node_holds_every_cap_under_timed_adversarial_schedules(rig, schedule):
    """0 violations of the box, step, speed, acceleration and angular caps, stamps, NaN, the
    gripper range, and of the tracking bound (+ one step) against the newest valid measured pose;
    `kil bench safety` runs the same at >= 1e5 ticks per rig."""
    outcome = run_schedule(rig, schedule)
    found = check(outcome, load_rig(rig).safety)
    assert not any(found.values()), {k: n for k, n in found.items() if n}
    assert outcome.ticks >= 190


def test_the_checker_sees_violations():
    """The measurement is not blind: a command stream that jumps into the box, exceeds the
    step and runs away from the arm is counted as such."""
    limits = load_rig("franka").safety
    down = Rotation.from_quat(DOWN)
    arm = np.array([0.20, 0.0, 0.3])  # outside: below workspace_min[0]
    positions = np.array([[0.25, 0.0, 0.3], [0.26, 0.0, 0.3], [0.40, 0.0, 0.3]])
    outcome = Outcome(stamps_ns=np.array([10, 20, 20], np.int64) * 1_000_000, positions=positions, rotations=[down] * 3,
                      references=[(arm, down)] * 3, start=(arm, down), grippers=[0.2], ticks=3)
    found = check(outcome, limits)
    assert found["start jump"] == 1 and found["step"] == 3 and found["speed"] >= 2 and found["stamps"] == 1
    assert found["tracking"] == 2 and found["gripper"] == 1 and found["acceleration"] >= 1  # 5 cm: within the bound + a step


def test_limits_are_validated():
    with pytest.raises(ValueError, match="workspace_min: must be below workspace_max"):
        SafetyLimits(workspace_min=(1.0, 0.0, 0.0), workspace_max=(0.5, 1.0, 1.0))
    from kil.config import load_dataclass

    with pytest.raises(ConfigError, match="safety: max_speed: must be > 0"):
        load_dataclass(SafetyLimits, {"max_speed": 0}, "safety:")


ADVERSARY_GRAPH = """
name: adversary
topics:
  /state: {type: RobotState}
  /chunk: {type: ActionChunk}
  /target: {type: PoseCommand}
  /gripper: {type: GripperCommand}
  /command: {type: PoseCommand}
  /gripper_command: {type: GripperCommand}
nodes:
  interpolator: {stage: interpolator, params: {max_speed: 3.0, max_angular_speed: 10.0},
                 subscribe: {chunk: /chunk, state: /state, commanded: /command}, publish: {target: /target, gripper: /gripper}}
  safety: {stage: safety, params: {rig: sim, chunk_max_age_s: 0}, subscribe: {target: /target, gripper: /gripper, state: /state, chunk: /chunk},
           publish: {command: /command, gripper: /gripper_command}}
  sink: {stage: toy_stages.sink, subscribe: {command: /command, gripper: /gripper_command}}
"""
far = st.floats(-5.0, 5.0, allow_nan=False)
chunks = st.lists(
    st.tuples(
        st.integers(-3000, 500),  # stamp relative to now, ms: stale, reversed, or in the future
        st.sampled_from([0.001, 0.01, 0.1, 1.0]),  # dt
        st.lists(st.tuples(far, far, far), min_size=2, max_size=6),  # jumps across and out of the workspace
        st.floats(0.0, 0.3),  # gripper beyond its range
        st.floats(0.0, 3.2),  # yaw
    ),
    min_size=1, max_size=6,
)


@settings(max_examples=25, deadline=None)
@given(sequence=chunks)
def test_adversarial_chunks_through_interpolator_and_safety_stay_within_the_rig_limits(tmp_path_factory, sequence):
    """Chunks with stale or reversed stamps, huge jumps and targets outside the workspace go
    through the interpolator (with caps far above the rig's) and the safety node: every command
    the robot gets is inside the sim rig's box and within its caps."""
    from kil.graph import load_graph
    from kil.msgs import ActionChunk, RobotState
    from kil.rigs import load_rig
    from kil.runtimes.local import LocalRuntime

    limits = load_rig("sim").safety
    path = tmp_path_factory.mktemp("adversary") / "g.yaml"
    path.write_text(ADVERSARY_GRAPH)
    runtime = LocalRuntime(load_graph(path), clock="stepped")
    start = np.array([0.5, 0.0, 0.2])
    for t in np.arange(0.0, 0.05 + 0.15 * len(sequence) + 0.5, 0.01):  # the robot's state streams (it stays put)
        runtime.at(float(t), lambda: runtime.inject("/state", RobotState(runtime.clock.now_ns(), "base_link", start, DOWN, 0.04)))
    for k, (offset_ms, dt, points, grip, yaw) in enumerate(sequence):
        def send(offset_ms=offset_ms, dt=dt, points=points, grip=grip, yaw=yaw):
            stamp = max(0, runtime.clock.now_ns() + offset_ms * 1_000_000)
            q = (Rotation.from_euler("z", yaw) * Rotation.from_quat(DOWN)).as_quat()
            runtime.inject("/chunk", ActionChunk(stamp, "base_link", dt, np.array(points), np.tile(q, (len(points), 1)), np.full(len(points), grip)))
        runtime.at(0.05 + 0.15 * k, send)
    runtime.run(0.05 + 0.15 * len(sequence) + 0.5)
    commands = runtime.stages["sink"].of("command")
    if any(offset_ms <= 50 for offset_ms, *_ in sequence):  # chunks stamped > 50 ms ahead are ignored
        assert len(commands) >= 50  # commands flow (at 100 Hz) whatever the chunks were
    if not commands:
        return
    p = np.array([c.position for c in commands])
    lo, hi = np.array(limits.workspace_min), np.array(limits.workspace_max)
    assert (p >= lo - EPS).all() and (p <= hi + EPS).all()
    dt = 1.0 / limits.rate_hz
    v = np.diff(np.vstack([start, p]), axis=0) / dt
    assert np.linalg.norm(v, axis=1).max() <= limits.max_speed + 1e-7
    assert np.linalg.norm(np.diff(np.vstack([np.zeros(3), v]), axis=0), axis=1).max() / dt <= limits.max_acceleration + 1e-6
    omega = [(Rotation.from_quat(b.orientation) * Rotation.from_quat(a.orientation).inv()).magnitude() / dt for a, b in zip(commands, commands[1:])]
    assert max(omega, default=0.0) <= limits.max_angular_speed + 1e-6
    grippers = [g.position for g in runtime.stages["sink"].of("gripper")]
    assert all(limits.gripper_min <= g <= limits.gripper_max for g in grippers)


def test_an_arm_pushed_away_is_followed_back_within_the_caps():
    """The arm is pushed 20 cm away (by hand, or it moved while its state was lost): the
    command stops following its target, goes back toward the arm within the caps, and
    follows the target again once it is close."""
    f = SafetyFilter(LIMITS, np.array([0.5, 0.0, 0.2]), DOWN)
    arm = (np.array([0.5, 0.2, 0.2]), Rotation.from_quat(DOWN))
    poses, reasons = [(f.position.copy(), f.rotation)], set()
    for _ in range(300):
        position, orientation, why = f.step(DT, np.array([0.7, -0.2, 0.2]), DOWN, arm)
        poses.append((position, Rotation.from_quat(orientation)))
        reasons |= why
    check_caps(poses)
    assert "arm away from the command beyond max_tracking_error: moving back to it" in reasons
    distances = [np.linalg.norm(p - arm[0]) for p, _ in poses]
    assert (np.diff(distances[:100]) <= 1e-12).all() and min(distances) < 0.5 * LIMITS.max_tracking_error.position
    assert distances[-1] <= LIMITS.max_tracking_error.position + LIMITS.max_step  # then follows the target, within the bound
