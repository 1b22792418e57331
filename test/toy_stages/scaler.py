"""Multiplies the position of each PoseCommand by `gain`, keeping its stamp."""

from dataclasses import dataclass

from kil.msgs import PoseCommand
from kil.stage import Stage, subscribe


@dataclass(frozen=True)
class ScalerConfig:
    gain: float = 2.0


class Scaler(Stage):
    Config = ScalerConfig
    outputs = {"out": PoseCommand}

    @subscribe(inp=PoseCommand)
    def on_pose(self, msg):
        scaled = PoseCommand(msg.stamp_ns, msg.frame_id, msg.position * self.config.gain, msg.orientation)
        self.io.publish("out", scaled)


STAGE = Scaler
