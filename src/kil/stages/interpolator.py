"""Interpolator node: 10 Hz chunks of EE targets -> 100 Hz pose targets (and gripper commands).

A new chunk is planned from the last target this node sent, so its output never jumps: a
chunk's waypoint i is meant for its observation stamp + i*dt; waypoints already in the past
when it arrives are dropped, and the rest replace the unexecuted tail of the previous chunk.
Between knots, position is linear and rotation slerp; a segment that would need more than
the speed caps is stretched in time (a later knot keeps its planned time when the caps
allow it). Whatever happens, consecutive targets differ by at most max_speed / rate_hz and
max_angular_speed / rate_hz.
Behind a safety node (its output fed back on the optional `commanded` port), the target
never runs more than `max_lead` / `max_angular_lead` ahead of what the safety node actually
commands: when it holds (a stale input, an e-stop, a wall, a blocked arm) the target waits
near the robot instead of running away, and the next chunk starts from there.
A chunk stamped more than `max_future_s` ahead of this node's clock is ignored (logged once).
Chunks and the safety node's commands in another frame than the robot state's are
transformed through TF (or ignored, logged once with the frame names).
The gripper follows the newest waypoint due, sent when it changes by more than the
hysteresis. Ticks run on the runtime's absolute deadlines (period n at start + n/rate), not
on sleep(dt), so the 100 Hz stream neither drifts nor bunches.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation, Slerp

from kil.config import require
from kil.control.frames import points_in_frame, pose_in_frame
from kil.control.safety_filter import clip_norm
from kil.errors import TransformError
from kil.msgs import ActionChunk, GripperCommand, PoseCommand, RobotState
from kil.stage import Stage, every, subscribe


MAX_SANE_SPEED = 3.0  # m/s
MAX_SANE_ANGULAR_SPEED = 10.0  # rad/s


@dataclass(frozen=True)
class InterpolatorConfig:
    rate_hz: float = 100.0
    max_speed: float = 0.25  # m/s: segments needing more are stretched in time
    max_angular_speed: float = 1.0  # rad/s
    max_lead: float = 0.02  # m: how far the target may run ahead of the safety node's command
    max_angular_lead: float = 0.2  # rad
    max_future_s: float = 0.05  # chunks stamped further ahead of this node's clock are ignored (clock skew tolerance)
    gripper_hysteresis: float = 0.005  # m: smaller changes of the opening are not sent
    gripper_max_effort: float = 40.0  # N

    def __post_init__(self) -> None:
        for name in ("rate_hz", "max_speed", "max_angular_speed", "max_lead", "max_angular_lead"):
            require(getattr(self, name) > 0, name, f"must be > 0, got {getattr(self, name)}")
        # Beyond what any arm's Cartesian controller takes: a typo, not a speed.
        require(self.max_speed <= MAX_SANE_SPEED, "max_speed", f"must be <= {MAX_SANE_SPEED} m/s, got {self.max_speed}")
        require(self.max_angular_speed <= MAX_SANE_ANGULAR_SPEED, "max_angular_speed",
                f"must be <= {MAX_SANE_ANGULAR_SPEED} rad/s, got {self.max_angular_speed}")
        require(self.max_future_s >= 0, "max_future_s", f"must be >= 0, got {self.max_future_s}")
        require(self.gripper_hysteresis >= 0, "gripper_hysteresis", f"must be >= 0, got {self.gripper_hysteresis}")


class Trajectory:
    """Timed knots (t_ns, position, rotation, gripper) sampled by time; holds the ends."""

    def __init__(self, times_ns: np.ndarray, positions: np.ndarray, rotations: Rotation, gripper: np.ndarray) -> None:
        self.times_ns = np.asarray(times_ns, np.int64)
        self.positions = np.asarray(positions, float)
        self.rotations = rotations
        self.gripper = np.asarray(gripper, float)

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
    live_params = frozenset({"max_speed", "max_angular_speed", "max_lead", "max_angular_lead", "gripper_hysteresis", "gripper_max_effort"})

    def __init__(self, config: InterpolatorConfig, io) -> None:
        super().__init__(config, io)
        self.trajectory: Trajectory | None = None
        self.frame_id: str | None = None  # the frame it works in: the robot state's
        self.output: tuple[np.ndarray, Rotation, float] | None = None  # the last target sent (at first: the robot's pose)
        self.commanded: tuple[np.ndarray, Rotation] | None = None  # the safety node's newest command, in frame_id
        self.sent_gripper: float | None = None
        self.rejected: set[str] = set()

    @subscribe(state=RobotState)
    def on_state(self, state: RobotState) -> None:
        if self.output is None:  # before any target, the robot's own pose is where we are
            self.output = (state.position.copy(), Rotation.from_quat(state.orientation), state.gripper)
            self.frame_id = state.frame_id

    @subscribe(commanded=PoseCommand, optional=True)
    def on_commanded(self, command: PoseCommand) -> None:
        """What the safety node actually sent: the target never runs further ahead of it
        than the lead (after a hold, a wall or against a blocked arm, the robot is where
        the safety node stopped it, not where the old chunk went)."""
        if self.frame_id is None:
            return
        try:
            position, orientation = pose_in_frame(self.io, self.frame_id, command.frame_id, command.stamp_ns,
                                                  command.position, command.orientation)
        except TransformError as err:
            self._reject(f"frame {command.frame_id}", f"commanded pose in frame {command.frame_id!r}: no transform to {self.frame_id!r} ({err}): ignored")
            return
        self.commanded = (position, Rotation.from_quat(orientation))

    @subscribe(chunk=ActionChunk)
    def on_chunk(self, chunk: ActionChunk) -> None:
        if self.output is None:
            return  # no robot state yet: nothing to continue from
        ahead = (chunk.stamp_ns - self.io.now_ns()) / 1e9
        if ahead > self.config.max_future_s:  # it would be executed an hour from now, or creep there
            self._reject("future chunk", f"chunk stamped {ahead:.3f} s in the future (tolerance max_future_s {self.config.max_future_s:g} s): ignored")
            return
        try:
            positions, orientations = points_in_frame(self.io, self.frame_id, chunk.frame_id, chunk.stamp_ns,
                                                      chunk.positions, chunk.orientations)
        except TransformError as err:
            self._reject(f"frame {chunk.frame_id}", f"chunk in frame {chunk.frame_id!r}: no transform to the robot state's {self.frame_id!r} ({err}): ignored")
            return
        if chunk.frame_id != self.frame_id:
            chunk = dataclasses.replace(chunk, frame_id=self.frame_id, positions=positions, orientations=orientations)
        position, rotation, gripper = self.output  # continue from what was last sent: no jump
        self.trajectory = plan(chunk, self.io.now_ns(), position, rotation, gripper, self.config.max_speed, self.config.max_angular_speed)

    @every(hz="rate_hz")
    def tick(self) -> None:
        if self.trajectory is None:
            return
        now = self.io.now_ns()
        position, rotation, gripper = self.trajectory.sample(now)
        if self.commanded is not None:  # at most the lead ahead of the safety node's command
            anchor, anchor_rotation = self.commanded
            position = anchor + clip_norm(position - anchor, self.config.max_lead)
            rotation = _turn_towards(anchor_rotation, rotation, self.config.max_angular_lead)
        # Never more than the caps from the previous target, whatever re-planning or the lead did.
        last_position, last_rotation, _ = self.output
        position = last_position + clip_norm(position - last_position, self.config.max_speed / self.config.rate_hz)
        rotation = _turn_towards(last_rotation, rotation, self.config.max_angular_speed / self.config.rate_hz)
        self.output = (position, rotation, gripper)
        self.io.publish("target", PoseCommand(stamp_ns=now, frame_id=self.frame_id, position=position, orientation=rotation.as_quat()))
        if self.sent_gripper is None or abs(gripper - self.sent_gripper) > self.config.gripper_hysteresis:
            self.sent_gripper = gripper
            self.io.publish("gripper", GripperCommand(stamp_ns=now, position=gripper, max_effort=self.config.gripper_max_effort))

    def _reject(self, kind: str, message: str) -> None:
        if kind not in self.rejected:  # once per kind, not at every chunk
            self.rejected.add(kind)
            self.io.log.warning("interpolator: %s", message)


def _turn_towards(start: Rotation, goal: Rotation, max_angle: float) -> Rotation:
    """`goal`, or the rotation `max_angle` from `start` on the way to it."""
    turn = (goal * start.inv()).as_rotvec()
    return Rotation.from_rotvec(clip_norm(turn, max_angle)) * start


STAGE = Interpolator
