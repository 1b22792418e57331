"""What every teleoperation node shares: an absolute EE target, sent like a policy's.

A teleop node keeps a target pose and gripper opening, starting from the robot's own pose,
and moves it from its device's input. At `rate_hz` (10 Hz, the policy's rate) it publishes
the target as a two-waypoint chunk (now and now + 1/rate, both at the target), so the same
interpolator and safety node carry it to the robot at 100 Hz as they carry a policy's
chunks. Recording commands (start / save / discard an episode) go out on `episode`.

The device nodes are `quest_teleop`, `spacemouse_teleop` and `keyboard_teleop`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from kil.config import require
from kil.msgs import ActionChunk, EpisodeControl, RobotState
from kil.stage import Stage, every, subscribe


@dataclass(frozen=True)
class TeleopConfig:
    rate_hz: float = 10.0
    base_frame: str = "base_link"
    gripper_open: float = 0.08  # m: the opening commanded when open
    gripper_closed: float = 0.0  # m: ... and when closed (the fingers stop on the object)
    max_lead: float = 0.05  # m: how far velocity-driven targets may run ahead of the robot

    def __post_init__(self) -> None:
        require(self.rate_hz > 0, "rate_hz", f"must be > 0, got {self.rate_hz}")
        require(self.max_lead > 0, "max_lead", f"must be > 0, got {self.max_lead}")
        require(0 <= self.gripper_closed < self.gripper_open, "gripper_open", "must be above gripper_closed (both >= 0)")


class TeleopStage(Stage):
    """Base class of the teleop nodes: subclasses move `self.position`, `self.rotation` and
    `self.gripper` from their inputs (in `update`, once per tick, or in their callbacks)."""

    Config = TeleopConfig
    outputs = {"chunk": ActionChunk, "episode": EpisodeControl}

    def __init__(self, config: TeleopConfig, io) -> None:
        super().__init__(config, io)
        self.state: RobotState | None = None
        self.position: np.ndarray | None = None  # the target, in base_frame
        self.rotation: Rotation | None = None
        self.gripper: float = config.gripper_open
        self.recording = False  # as far as this node's own commands go

    @subscribe(state=RobotState)
    def on_state(self, state: RobotState) -> None:
        self.state = state
        if self.position is None:  # start where the robot is
            self.position, self.rotation = state.position.copy(), Rotation.from_quat(state.orientation)
            self.gripper = self.config.gripper_open if state.gripper > (self.config.gripper_open + self.config.gripper_closed) / 2 else self.config.gripper_closed

    def update(self, now_ns: int, dt: float) -> None:
        """Move the target from the device's latest input (called each tick)."""

    def nudge(self, translation: np.ndarray, rotation_vector: np.ndarray) -> None:
        """Move the target by a translation and a rotation, both in the base frame, keeping it
        on a leash of `max_lead` to the robot."""
        if self.position is None:
            return
        self.position = leash(self.position + translation, self.state.position, self.config.max_lead)
        self.rotation = Rotation.from_rotvec(rotation_vector) * self.rotation

    def toggle_gripper(self) -> None:
        c = self.config
        self.gripper = c.gripper_closed if self.gripper > (c.gripper_open + c.gripper_closed) / 2 else c.gripper_open

    def episode(self, command: str) -> None:
        """Send a recording command; the node remembers whether it started an episode."""
        self.io.publish("episode", EpisodeControl(self.io.now_ns(), command))
        self.recording = command == "start"

    def start_or_save(self) -> None:
        self.episode("save" if self.recording else "start")

    def discard(self) -> None:
        if self.recording:
            self.episode("discard")

    @every(hz="rate_hz")
    def tick(self) -> None:
        if self.position is None:
            return  # no robot state yet
        now, dt = self.io.now_ns(), 1.0 / self.config.rate_hz
        self.update(now, dt)
        q = self.rotation.as_quat()
        self.io.publish("chunk", ActionChunk(
            stamp_ns=now, frame_id=self.config.base_frame, dt=dt,
            positions=np.array([self.position, self.position]), orientations=np.array([q, q]),
            gripper=np.array([self.gripper, self.gripper]),
        ))


def leash(position: np.ndarray, anchor: np.ndarray, max_lead: float) -> np.ndarray:
    """`position` pulled back to within `max_lead` of `anchor` (the robot): a target driven
    into the safety node's workspace wall does not run away beyond it."""
    offset = position - anchor
    distance = float(np.linalg.norm(offset))
    return position if distance <= max_lead else anchor + offset * (max_lead / distance)
