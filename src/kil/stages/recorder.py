"""Recorder node: writes every connected topic into one rosbag2 episode (local runtime).

On a robot, ``ros2 bag record -s mcap`` does this job; here the same ROS topics and types
are written through the topics' wire formats, stamped with the runtime clock like the
receive times ros2 bag records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from kil.config import require
from kil.data.bag import EpisodeWriter
from kil.data.episode import EpisodeMetadata
from kil.stage import Stage, subscribe_any


@dataclass(frozen=True)
class RecorderConfig:
    path: str  # episode directory to create (must not exist)
    task: str = "unspecified"
    rig: str = "sim"
    variation: str = "in"
    seed: int | None = None
    distro: Literal["humble", "jazzy"] = "jazzy"
    flush_interval_s: float = 0.5
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        require(bool(self.path), "path", "an episode directory is required")
        require(self.flush_interval_s > 0, "flush_interval_s", f"must be > 0, got {self.flush_interval_s}")


class Recorder(Stage):
    Config = RecorderConfig

    def __init__(self, config: RecorderConfig, io: Any) -> None:
        super().__init__(config, io)
        metadata = EpisodeMetadata(
            task=config.task,
            rig=config.rig,
            variation=config.variation,
            seed=config.seed,
            extra=dict(config.extra),
            distro=config.distro,
        )
        self.writer = EpisodeWriter(config.path, metadata, config.flush_interval_s)

    def start(self) -> None:
        self.writer.open()

    @subscribe_any()
    def on_message(self, port: str, msg: Any) -> None:
        self.writer.write(self.io.topic(port), msg, self.io.now_ns())

    def stop(self) -> None:
        self.writer.close()


STAGE = Recorder
