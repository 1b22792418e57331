"""Chunk interpolator node (interim): 10 Hz chunks of EE targets → 100 Hz pose targets.

Waypoint i of a chunk is meant for its observation stamp + i·dt. Each tick takes the
newest chunk, interpolates position linearly and orientation by slerp at the current time
(holding the first or last waypoint outside the chunk), and sends the gripper opening on
change with hysteresis. The live control graph replaces this with the full interpolator
(continuity from the last command, speed caps) behind the safety layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation, Slerp

from kil.config import require
from kil.msgs import ActionChunk, GripperCommand, PoseCommand
from kil.stage import Stage, every, subscribe


@dataclass(frozen=True)
class ChunkInterpolatorConfig:
    rate_hz: float = 100.0
    gripper_hysteresis: float = 0.005  # m: smaller changes of the opening are not sent
    gripper_max_effort: float = 40.0  # N

    def __post_init__(self) -> None:
        require(self.rate_hz > 0, "rate_hz", "must be > 0")


def interpolate_chunk(chunk: ActionChunk, t_ns: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(position (3,), quaternion (4,) xyzw, gripper opening) of `chunk` at time `t_ns`."""
    stamps = chunk.waypoint_stamps_ns()
    i = int(np.clip(np.searchsorted(stamps, t_ns, side="right") - 1, 0, len(stamps) - 2))
    s = float(np.clip((t_ns - stamps[i]) / (stamps[i + 1] - stamps[i]), 0.0, 1.0))
    position = (1 - s) * chunk.positions[i] + s * chunk.positions[i + 1]
    quat = Slerp([0.0, 1.0], Rotation.from_quat(chunk.orientations[i : i + 2]))([s]).as_quat()[0]
    gripper = chunk.gripper[i + 1] if s >= 1.0 else chunk.gripper[i]
    return position, quat, float(gripper)


class ChunkInterpolator(Stage):
    Config = ChunkInterpolatorConfig
    outputs = {"target": PoseCommand, "gripper": GripperCommand}

    def __init__(self, config: ChunkInterpolatorConfig, io) -> None:
        super().__init__(config, io)
        self.chunk: ActionChunk | None = None
        self.sent_gripper: float | None = None

    @subscribe(chunk=ActionChunk)
    def on_chunk(self, chunk: ActionChunk) -> None:
        self.chunk = chunk

    @every(hz="rate_hz")
    def tick(self) -> None:
        if self.chunk is None:
            return
        now = self.io.now_ns()
        position, quat, gripper = interpolate_chunk(self.chunk, now)
        self.io.publish("target", PoseCommand(stamp_ns=now, frame_id=self.chunk.frame_id, position=position, orientation=quat))
        if self.sent_gripper is None or abs(gripper - self.sent_gripper) > self.config.gripper_hysteresis:
            self.sent_gripper = gripper
            self.io.publish("gripper", GripperCommand(stamp_ns=now, position=gripper, max_effort=self.config.gripper_max_effort))


STAGE = ChunkInterpolator
