"""Faults in the live graph, run in the local runtime on the stepped clock: the camera stops,
the e-stop is pressed, the policy returns NaN. In each case the robot must hold (the commanded
pose stops changing soon after the watchdog limit) and move again once the fault is gone,
without ever exceeding a cap."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from kil.graph import load_graph
from kil.msgs import EStop
from kil.rigs import load_rig
from kil.runtimes.local import LocalRuntime

KEYPOINT_LIMIT_S = 0.5
HOLD_WITHIN_S = 0.2
LIMITS = load_rig("sim").safety

SIM_GRAPH = """
name: faults
topics:
  /camera: {type: RGBD}
  /robot_state: {type: RobotState}
  /sim/keypoints: {type: Keypoints}
  /kil/chunk: {type: ActionChunk}
  /kil/interpolated_target: {type: PoseCommand}
  /kil/interpolated_gripper: {type: GripperCommand}
  /kil/pose_target: {type: PoseCommand}
  /kil/gripper_command: {type: GripperCommand}
  /kil/estop: {type: EStop}
nodes:
  rig:
    stage: sim_rig
    params: {robot: panda, task: pick_place, seed: 3, camera_rate_hz: 10, camera: {width: 160, height: 120}}
    subscribe: {target: /kil/pose_target, gripper: /kil/gripper_command}
    publish: {rgbd: /camera, state: /robot_state, ground_truth: /sim/keypoints}
  expert:
    stage: sim_expert
    params: {task: pick_place, seed: 3}
    subscribe: {state: /robot_state}
    publish: {chunk: /kil/chunk}
  interpolator:
    stage: interpolator
    params: {max_speed: 0.6, max_angular_speed: 2.0}
    subscribe: {chunk: /kil/chunk, state: /robot_state, commanded: /kil/pose_target}
    publish: {target: /kil/interpolated_target, gripper: /kil/interpolated_gripper}
  safety:
    stage: safety
    params: {rig: sim, keypoint_max_age_s: %(limit)s}
    subscribe: {target: /kil/interpolated_target, gripper: /kil/interpolated_gripper, state: /robot_state,
                keypoints: /sim/keypoints, chunk: /kil/chunk, estop: /kil/estop}
    publish: {command: /kil/pose_target, gripper: /kil/gripper_command}
  sink:
    stage: toy_stages.sink
    subscribe: {command: /kil/pose_target}
"""


@pytest.fixture
def sim_runtime(tmp_path):
    path = tmp_path / "faults.yaml"
    path.write_text(SIM_GRAPH % {"limit": KEYPOINT_LIMIT_S})
    return LocalRuntime(load_graph(path), clock="stepped")


def commands(runtime) -> tuple[np.ndarray, np.ndarray]:
    """(times in s from the start, positions) of every command sent to the robot."""
    sent = runtime.stages["sink"].of("command")
    t = (np.array([c.stamp_ns for c in sent]) - runtime.stats.start_ns) / 1e9
    return t, np.array([c.position for c in sent])


def assert_within_caps(positions: np.ndarray) -> None:
    dt = 1.0 / LIMITS.rate_hz
    velocity = np.diff(positions, axis=0) / dt
    assert np.linalg.norm(velocity, axis=1).max() <= LIMITS.max_speed + 1e-9
    assert np.linalg.norm(np.diff(velocity, axis=0), axis=1).max() / dt <= LIMITS.max_acceleration + 1e-6


def moved(t, p, start, end) -> float:
    """Largest displacement between commands in [start, end] seconds."""
    window = p[(t >= start) & (t <= end)]
    return float(np.linalg.norm(window - window[0], axis=1).max())


def test_camera_stop_holds_within_the_watchdog_limit_and_resumes(sim_runtime, caplog):
    stop, restart = 1.0, 3.0
    sim_runtime.at(stop, lambda: sim_runtime.call_service("rig", "stop_camera"))
    sim_runtime.at(restart, lambda: sim_runtime.call_service("rig", "start_camera"))
    with caplog.at_level(logging.WARNING, logger="kil.safety"):
        sim_runtime.run(4.5)
    t, p = commands(sim_runtime)
    assert moved(t, p, 0.5, stop) > 0.02  # the expert was moving when the camera stopped
    last_frame = stop - 0.1  # the newest keypoints before the outage
    assert moved(t, p, last_frame + KEYPOINT_LIMIT_S + HOLD_WITHIN_S, restart - 0.005) == 0.0  # resumes from the first new frame on
    assert moved(t, p, restart, restart + 1.0) > 0.02  # and resumed
    assert_within_caps(p)
    stale = [r for r in caplog.records if "keypoints older than" in r.getMessage()]
    assert len(stale) == 1  # logged once, not once per tick
    assert sim_runtime.stages["safety"].rejections["keypoints older than 0.5 s: holding"] == 1


def test_estop_holds_until_cleared(sim_runtime):
    press, clear = 1.0, 3.0
    sim_runtime.at(press, lambda: sim_runtime.inject("/kil/estop", EStop(sim_runtime.clock.now_ns(), engaged=True)))
    # Releasing the button (false) clears nothing: only the service does.
    sim_runtime.at(2.0, lambda: sim_runtime.inject("/kil/estop", EStop(sim_runtime.clock.now_ns(), engaged=False)))
    sim_runtime.at(clear, lambda: sim_runtime.call_service("safety", "clear_estop"))
    sim_runtime.run(4.5)
    t, p = commands(sim_runtime)
    assert moved(t, p, 0.5, press) > 0.02
    assert moved(t, p, press + HOLD_WITHIN_S, clear - 0.005) == 0.0
    assert moved(t, p, clear, clear + 1.0) > 0.02
    assert_within_caps(p)


NAN_GRAPH = """
name: nan_policy
topics:
  /keypoints: {type: Keypoints}
  /state: {type: RobotState}
  /chunk: {type: ActionChunk}
  /target: {type: PoseCommand}
  /gripper: {type: GripperCommand}
  /command: {type: PoseCommand}
  /gripper_command: {type: GripperCommand}
nodes:
  scene: {stage: toy_stages.keypoint_scene, publish: {keypoints: /keypoints, state: /state}, subscribe: {command: /command}}
  policy: {stage: policy, params: {policy: %(policy)s}, subscribe: {keypoints: /keypoints, state: /state}, publish: {chunk: /chunk}}
  interpolator: {stage: interpolator, subscribe: {chunk: /chunk, state: /state, commanded: /command}, publish: {target: /target, gripper: /gripper}}
  safety:
    stage: safety
    params: {rig: sim, chunk_max_age_s: 1.0}
    subscribe: {target: /target, gripper: /gripper, state: /state, keypoints: /keypoints, chunk: /chunk}
    publish: {command: /command, gripper: /gripper_command}
  sink: {stage: toy_stages.sink, subscribe: {command: /command}}
"""


def test_policy_returning_nan_holds(tmp_path, caplog):
    """A policy whose weights turn NaN (say, a corrupted checkpoint) predicts NaN chunks: the
    policy node publishes none, the chunk watchdog trips, the safety node holds."""
    import torch

    from kil.policy.inference import Policy
    from kil.training.policy import train
    from test_policy import _run_config, make_store

    train(_run_config(30), make_store(tmp_path / "ds", 2), tmp_path / "run")
    policy = Policy.load(tmp_path / "run")
    path = tmp_path / "poisoned"
    policy.save(path)
    poison_at = 2.0
    graph = tmp_path / "nan.yaml"
    graph.write_text(NAN_GRAPH % {"policy": path})
    runtime = LocalRuntime(load_graph(graph), clock="stepped")

    def poison() -> None:
        with torch.no_grad():
            next(runtime.stages["policy"].policy.model.parameters()).fill_(float("nan"))

    runtime.at(poison_at, poison)
    with caplog.at_level(logging.WARNING):
        runtime.run(5.0)
    t, p = commands(runtime)
    assert moved(t, p, 0.5, poison_at) > 0.005  # it followed the policy before
    chunks = runtime.stats.published["/chunk"]
    assert chunks >= 2
    # The last chunk came from before the poison; 1 s (the limit) + braking later, the robot holds.
    assert moved(t, p, poison_at + 1.0 + 0.8 + HOLD_WITHIN_S, 5.0) == 0.0
    assert_within_caps(p)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("no prediction" in m for m in messages) == 1
    assert sum("chunk older than 1 s" in m for m in messages) == 1
