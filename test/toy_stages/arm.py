"""A robot arm for safety tests: its EE follows the newest command with a first-order lag
(time constant `tau_s`), from any start pose, and reports its pose at `rate_hz` in `frame`
(which may be another frame than the base frame; `to_frame` is the base-frame pose of that
frame). After `blocked_after_s` it stops moving (an obstacle), still reporting."""

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from kil.geometry import invert, matrix_to_pose, pose_to_matrix
from kil.msgs import PoseCommand, RobotState
from kil.stage import Stage, every, subscribe


@dataclass(frozen=True)
class ArmConfig:
    start: tuple[float, float, float] = (0.5, 0.0, 0.2)
    start_quat: tuple[float, float, float, float] = (1.0, 0.0, 0.0, 0.0)
    frame: str = "base_link"
    frame_pose: tuple[float, ...] = ()  # (x, y, z, qx, qy, qz, qw) of `frame` in the base frame, if it is another one
    tau_s: float = 0.05
    blocked_after_s: float = -1.0  # < 0: never
    rate_hz: float = 100.0


class Arm(Stage):
    Config = ArmConfig
    outputs = {"state": RobotState}

    def __init__(self, config, io):
        super().__init__(config, io)
        self.position = np.asarray(config.start, float)
        self.rotation = Rotation.from_quat(config.start_quat)
        self.command: PoseCommand | None = None
        self.started_ns: int | None = None
        self.poses: list[tuple[int, np.ndarray]] = []  # (stamp, true base-frame position)

    @subscribe(command=PoseCommand)
    def on_command(self, command):
        self.command = command

    @every(hz="rate_hz")
    def step(self):
        now = self.io.now_ns()
        self.started_ns = self.started_ns if self.started_ns is not None else now
        blocked = 0 <= self.config.blocked_after_s <= (now - self.started_ns) / 1e9
        if self.command is not None and not blocked:
            share = 1.0 - np.exp(-1.0 / (self.config.rate_hz * self.config.tau_s))
            self.position = self.position + share * (self.command.position - self.position)
            turn = (Rotation.from_quat(self.command.orientation) * self.rotation.inv()).as_rotvec()
            self.rotation = Rotation.from_rotvec(share * turn) * self.rotation
        self.poses.append((now, self.position.copy()))
        position, orientation = self.position, self.rotation.as_quat()
        if self.config.frame_pose:
            frame = pose_to_matrix(self.config.frame_pose[:3], self.config.frame_pose[3:])
            position, orientation = matrix_to_pose(invert(frame) @ pose_to_matrix(position, orientation))
        self.io.publish("state", RobotState(now, self.config.frame, position, orientation, 0.04))


STAGE = Arm
