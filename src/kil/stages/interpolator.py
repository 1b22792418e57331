"""Interpolator node: 10 Hz chunks of EE targets -> 100 Hz pose targets (and gripper commands).

The trajectory always starts at the last *commanded* pose, so a new chunk never makes the
command jump. A chunk's waypoint i is meant for its observation stamp + i*dt; waypoints
already in the past when it arrives are dropped, and the rest replace the unexecuted tail of
the previous chunk. Between knots, position is linear and rotation slerp; a segment that
would need more than the speed caps is stretched in time (a later knot keeps its planned
time when the caps allow it).
Behind a safety node, the "last commanded pose" is the one the safety node sent (its output
fed back on the optional `commanded` port).
The gripper follows the newest waypoint due, sent when it changes by more than the
hysteresis. Ticks run on the runtime's absolute deadlines (period n at start + n/rate), not
on sleep(dt), so the 100 Hz stream neither drifts nor bunches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation, Slerp

from kil.config import require
from kil.msgs import ActionChunk, GripperCommand, PoseCommand, RobotState
from kil.stage import Stage, every, subscribe


MAX_SANE_SPEED = 3.0  # m/s
MAX_SANE_ANGULAR_SPEED = 10.0  # rad/s


@dataclass(frozen=True)
class InterpolatorConfig:
    rate_hz: float = 100.0
    max_speed: float = 0.25  # m/s: segments needing more are stretched in time
    max_angular_speed: float = 1.0  # rad/s
    gripper_hysteresis: float = 0.005  # m: smaller changes of the opening are not sent
    gripper_max_effort: float = 40.0  # N

    def __post_init__(self) -> None:
        for name in ("rate_hz", "max_speed", "max_angular_speed"):
            require(getattr(self, name) > 0, name, f"must be > 0, got {getattr(self, name)}")
        # Beyond what any arm's Cartesian controller takes: a typo, not a speed.
        require(self.max_speed <= MAX_SANE_SPEED, "max_speed", f"must be <= {MAX_SANE_SPEED} m/s, got {self.max_speed}")
        require(self.max_angular_speed <= MAX_SANE_ANGULAR_SPEED, "max_angular_speed",
                f"must be <= {MAX_SANE_ANGULAR_SPEED} rad/s, got {self.max_angular_speed}")
        require(self.gripper_hysteresis >= 0, "gripper_hysteresis", f"must be >= 0, got {self.gripper_hysteresis}")


class Trajectory:
    """Timed knots (t_ns, position, rotation, gripper) sampled by time; holds the ends."""

    def __init__(self, times_ns: np.ndarray, positions: np.ndarray, rotations: Rotation, gripper: np.ndarray) -> None:
        self.times_ns = np.asarray(times_ns, np.int64)
        self.positions = np.asarray(positions, float)
        self.rotations = rotations
        self.gripper = np.asarray(gripper, float)

    @classmethod
    def hold(cls, t_ns: int, position: np.ndarray, rotation: Rotation, gripper: float) -> Trajectory:
        return cls(np.array([t_ns]), np.asarray(position, float)[None], Rotation.concatenate([rotation]), np.array([gripper]))

    def sample(self, t_ns: int) -> tuple[np.ndarray, Rotation, float]:
        """Pose at t (linear / slerp between knots) and the gripper of the newest knot due."""
        times = self.times_ns
        if len(times) == 1 or t_ns <= times[0]:
            return self.positions[0].copy(), self.rotations[0], float(self.gripper[0])
        if t_ns >= times[-1]:
            return self.positions[-1].copy(), self.rotations[-1], float(self.gripper[-1])
        i = int(np.searchsorted(times, t_ns, side="right") - 1)
        s = (t_ns - times[i]) / (times[i + 1] - times[i])
        position = (1 - s) * self.positions[i] + s * self.positions[i + 1]
        rotation = Slerp([0.0, 1.0], self.rotations[i: i + 2])([s])[0]
        return position, rotation, float(self.gripper[i])


def plan(chunk: ActionChunk, now_ns: int, position: np.ndarray, rotation: Rotation, gripper: float,
         max_speed: float, max_angular_speed: float) -> Trajectory:
    """The trajectory from the commanded pose at `now_ns` through the chunk's future waypoints,
    each segment stretched to the speed caps."""
    stamps = chunk.waypoint_stamps_ns()
    future = stamps > now_ns
    positions = np.vstack([np.asarray(position, float)[None], chunk.positions[future]])
    rotations = Rotation.concatenate([rotation, Rotation.from_quat(chunk.orientations[future])])
    # The gripper follows the newest waypoint due, including those dropped as past.
    due = np.flatnonzero(~future)
    grippers = np.concatenate([[chunk.gripper[due[-1]] if len(due) else gripper], chunk.gripper[future]])
    times = [now_ns]
    for k, t in enumerate(stamps[future]):
        step = float(np.linalg.norm(positions[k + 1] - positions[k]))
        turn = float((rotations[k + 1] * rotations[k].inv()).magnitude())
        needed_ns = int(np.ceil(max(step / max_speed, turn / max_angular_speed) * 1e9 - 1e-3))  # rounding slack
        # On its planned time unless the caps need longer from the previous knot.
        times.append(max(int(t), times[-1] + needed_ns))
    return Trajectory(np.array(times, np.int64), positions, rotations, grippers)


class Interpolator(Stage):
    Config = InterpolatorConfig
    outputs = {"target": PoseCommand, "gripper": GripperCommand}
    # Read at every chunk / tick, so a change applies from the next one (the safety node's
    # caps hold regardless).
    live_params = frozenset({"max_speed", "max_angular_speed", "gripper_hysteresis", "gripper_max_effort"})

    def __init__(self, config: InterpolatorConfig, io) -> None:
        super().__init__(config, io)
        self.trajectory: Trajectory | None = None
        self.frame_id: str | None = None
        self.commanded: tuple[np.ndarray, Rotation, float] | None = None
        self.sent_gripper: float | None = None

    @subscribe(state=RobotState)
    def on_state(self, state: RobotState) -> None:
        if self.commanded is None:  # before any command, the robot's own pose is where we are
            self.commanded = (state.position.copy(), Rotation.from_quat(state.orientation), state.gripper)
            self.frame_id = state.frame_id

    @subscribe(commanded=PoseCommand, optional=True)
    def on_commanded(self, command: PoseCommand) -> None:
        """What the safety node actually sent: a new chunk continues from there (after a
        hold, the robot is where the safety node stopped it, not where the old chunk went)."""
        if self.commanded is not None:
            self.commanded = (command.position.copy(), Rotation.from_quat(command.orientation), self.commanded[2])

    @subscribe(chunk=ActionChunk)
    def on_chunk(self, chunk: ActionChunk) -> None:
        if self.commanded is None:
            return  # no robot state yet: nothing to continue from
        now = self.io.now_ns()
        position, rotation, gripper = self.commanded
        self.trajectory = plan(chunk, now, position, rotation, gripper, self.config.max_speed, self.config.max_angular_speed)
        self.frame_id = chunk.frame_id

    @every(hz="rate_hz")
    def tick(self) -> None:
        if self.trajectory is None:
            return
        now = self.io.now_ns()
        position, rotation, gripper = self.trajectory.sample(now)
        self.commanded = (position, rotation, gripper)
        self.io.publish("target", PoseCommand(stamp_ns=now, frame_id=self.frame_id, position=position, orientation=rotation.as_quat()))
        if self.sent_gripper is None or abs(gripper - self.sent_gripper) > self.config.gripper_hysteresis:
            self.sent_gripper = gripper
            self.io.publish("gripper", GripperCommand(stamp_ns=now, position=gripper, max_effort=self.config.gripper_max_effort))


STAGE = Interpolator
