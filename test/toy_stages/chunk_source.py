"""A policy-like source: the robot state at 50 Hz and, at 10 Hz, chunks of 16 waypoints
stamped with the current time, moving along x; each chunk disagrees with the previous one
by a centimetre (alternating in y) and the gripper closes after 1.5 s."""

from dataclasses import dataclass

import numpy as np

from kil.msgs import ActionChunk, RobotState
from kil.stage import Stage, every

DOWN = np.array([1.0, 0.0, 0.0, 0.0])


@dataclass(frozen=True)
class ChunkSourceConfig:
    speed: float = 0.1  # m/s along x


class ChunkSource(Stage):
    Config = ChunkSourceConfig
    outputs = {"chunk": ActionChunk, "state": RobotState}

    def __init__(self, config, io):
        super().__init__(config, io)
        self.start_ns = None
        self.count = 0

    def _t(self) -> float:
        now = self.io.now_ns()
        self.start_ns = now if self.start_ns is None else self.start_ns
        return (now - self.start_ns) / 1e9

    @every(hz=50)
    def state(self):
        self._t()
        self.io.publish("state", RobotState(stamp_ns=self.io.now_ns(), frame_id="base_link", position=[0.5, 0.0, 0.2],
                                            orientation=DOWN, gripper=0.08))

    @every(hz=10)
    def chunk(self):
        t = self._t()
        times = t + 0.1 * np.arange(16)
        y = 0.01 * (self.count % 2)
        self.count += 1
        positions = np.column_stack([0.5 + self.config.speed * times, np.full(16, y), np.full(16, 0.2)])
        self.io.publish("chunk", ActionChunk(stamp_ns=self.io.now_ns(), frame_id="base_link", dt=0.1, positions=positions,
                                             orientations=np.tile(DOWN, (16, 1)), gripper=np.where(times > 1.5, 0.0, 0.08)))


STAGE = ChunkSource
