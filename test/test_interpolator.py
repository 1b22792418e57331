"""The interpolator: continuity across chunk switches, exact waypoint timing, dropping of
past waypoints, speed caps by stretching, gripper hysteresis; in the local runtime."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from kil.msgs import ActionChunk
from kil.stages.interpolator import InterpolatorConfig, plan

DOWN = Rotation.from_quat([1.0, 0.0, 0.0, 0.0])
MS = 1_000_000


def chunk(stamp_ns: int, positions, gripper=None, dt=0.1) -> ActionChunk:
    positions = np.asarray(positions, float)
    return ActionChunk(stamp_ns=stamp_ns, frame_id="base_link", dt=dt, positions=positions,
                       orientations=np.tile(DOWN.as_quat(), (len(positions), 1)),
                       gripper=np.full(len(positions), 0.08) if gripper is None else np.asarray(gripper, float))


def line(start, step, n):
    return [np.asarray(start, float) + i * np.asarray(step, float) for i in range(n)]


def test_waypoints_are_timed_from_the_observation_stamp_and_past_ones_dropped():
    c = chunk(1000 * MS, line([0.5, 0.0, 0.2], [0.01, 0, 0], 8))
    # Arrives 250 ms after its observation: waypoints 0, 1, 2 are past.
    traj = plan(c, 1250 * MS, np.array([0.5, 0.0, 0.2]), DOWN, 0.08, max_speed=10.0, max_angular_speed=10.0)
    assert traj.times_ns.tolist() == [1250 * MS] + [(1000 + 100 * i) * MS for i in range(3, 8)]
    np.testing.assert_allclose(traj.positions[1], [0.53, 0.0, 0.2])
    # Exactly on a waypoint's time, the command is that waypoint.
    for i in range(3, 8):
        position, _, _ = traj.sample((1000 + 100 * i) * MS)
        np.testing.assert_allclose(position, c.positions[i], atol=1e-12)
    # Halfway between two waypoints, halfway between them.
    position, _, _ = traj.sample(1450 * MS)
    np.testing.assert_allclose(position, (c.positions[4] + c.positions[5]) / 2, atol=1e-12)


def test_a_new_chunk_continues_from_the_last_commanded_pose():
    first = plan(chunk(0, line([0.5, 0.0, 0.2], [0.01, 0, 0], 16)), 0, np.array([0.5, 0.0, 0.2]), DOWN, 0.08, 10.0, 10.0)
    now = 430 * MS
    commanded, rotation, _ = first.sample(now)
    # The next chunk disagrees (the policy changed its mind by 3 cm): no jump at the switch.
    second = plan(chunk(400 * MS, line([0.53, 0.03, 0.2], [0.01, 0, 0], 16)), now, commanded, rotation, 0.08, 10.0, 10.0)
    np.testing.assert_allclose(second.sample(now)[0], commanded, atol=1e-12)
    step = np.linalg.norm(second.sample(now + 10 * MS)[0] - commanded)
    assert step < 0.01  # one 10 ms tick: a fraction of the way to the next waypoint, 70 ms ahead


def test_segments_beyond_the_speed_caps_are_stretched():
    c = chunk(0, [[0.5, 0.0, 0.2], [0.7, 0.0, 0.2], [0.71, 0.0, 0.2]])
    traj = plan(c, 0, np.array([0.5, 0.0, 0.2]), DOWN, 0.08, max_speed=0.25, max_angular_speed=1.0)
    # Waypoint 0 is due now (dropped: the command is already there). 0.2 m at 0.25 m/s needs
    # 0.8 s, not 0.1; the last centimetre then goes at the cap too (its planned time is past).
    assert traj.times_ns.tolist() == [0, 800 * MS, 840 * MS]
    samples = np.array([traj.sample(t * MS)[0] for t in range(0, 1100, 10)])
    assert np.linalg.norm(np.diff(samples, axis=0), axis=1).max() <= 0.25 * 0.01 + 1e-9
    turn = ActionChunk(stamp_ns=0, frame_id="base_link", dt=0.1, positions=np.tile([0.5, 0.0, 0.2], (2, 1)),
                       orientations=np.array([DOWN.as_quat(), (Rotation.from_euler("z", 1.0) * DOWN).as_quat()]), gripper=np.full(2, 0.08))
    traj = plan(turn, 0, np.array([0.5, 0.0, 0.2]), DOWN, 0.08, max_speed=0.25, max_angular_speed=0.5)
    assert traj.times_ns[-1] - traj.times_ns[-2] == 2000 * MS  # 1 rad at 0.5 rad/s


def test_interpolator_node_in_the_local_runtime(tmp_path):
    """A policy-like source of chunks at 10 Hz, the interpolator at 100 Hz: exact tick times,
    continuity across every chunk switch, gripper sent only on change."""
    from kil.graph import load_graph
    from kil.runtimes.local import LocalRuntime

    graph = tmp_path / "g.yaml"
    graph.write_text("""
name: interp
topics:
  /state: {type: RobotState}
  /chunk: {type: ActionChunk}
  /target: {type: PoseCommand}
  /gripper: {type: GripperCommand}
nodes:
  source: {stage: toy_stages.chunk_source, publish: {chunk: /chunk, state: /state}}
  interpolator: {stage: interpolator, subscribe: {chunk: /chunk, state: /state}, publish: {target: /target, gripper: /gripper}}
  sink: {stage: toy_stages.sink, subscribe: {target: /target, gripper: /gripper}}
""")
    runtime = LocalRuntime(load_graph(graph), clock="stepped")
    runtime.run(3.0)
    received = runtime.stages["sink"].received
    targets = [m for port, m in received if port == "target"]
    stamps = np.array([t.stamp_ns for t in targets])
    assert (np.diff(stamps) == 10 * MS).all()
    steps = np.linalg.norm(np.diff([t.position for t in targets], axis=0), axis=1)
    assert steps.max() <= InterpolatorConfig().max_speed * 0.01 + 1e-9
    grippers = [m.position for port, m in received if port == "gripper"]
    assert grippers == [pytest.approx(0.08), pytest.approx(0.0)]


def test_a_chunk_from_the_future_or_another_frame_is_ignored(caplog):
    """A chunk stamped an hour ahead would creep towards its first waypoint for an hour: it
    is ignored, like one in a frame TF does not know (each logged once); a chunk in a frame
    TF knows is transformed into the robot state's frame."""
    import logging

    from kil.msgs import RobotState
    from kil.runtimes.tf import TransformBuffer
    from kil.stages.interpolator import Interpolator

    class IO:
        now = 10_000 * MS
        published = []
        log = logging.getLogger("kil.interpolator")
        tf = TransformBuffer()

        def now_ns(self):
            return self.now

        def publish(self, port, msg):
            self.published.append((port, msg))

        def lookup_transform(self, parent, child, stamp_ns=None):
            return self.tf.lookup(parent, child, stamp_ns)

    io = IO()
    shifted = np.eye(4)
    shifted[:3, 3] = [0.1, 0.0, 0.0]
    io.tf.set_transform("base_link", "table", shifted, 0, static=True)
    node = Interpolator(InterpolatorConfig(), io)
    node.on_state(RobotState(io.now, "base_link", np.array([0.5, 0.0, 0.2]), DOWN.as_quat(), 0.08))
    with caplog.at_level(logging.WARNING, logger="kil.interpolator"):
        for _ in range(2):
            node.on_chunk(chunk(io.now + 3600_000 * MS, line([0.6, 0.0, 0.2], [0.01, 0, 0], 8)))
            node.on_chunk(dataclasses.replace(chunk(io.now, line([0.6, 0.0, 0.2], [0.01, 0, 0], 8)), frame_id="nowhere"))
    assert node.trajectory is None
    assert sum("in the future" in r.getMessage() for r in caplog.records) == 1
    assert sum("'nowhere'" in r.getMessage() for r in caplog.records) == 1
    node.on_chunk(dataclasses.replace(chunk(io.now, line([0.6, 0.0, 0.2], [0.0, 0, 0], 8)), frame_id="table"))
    np.testing.assert_allclose(node.trajectory.positions[-1], [0.7, 0.0, 0.2])  # 0.6 in the table frame, 0.1 ahead of the base
