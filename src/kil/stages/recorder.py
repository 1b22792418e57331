"""Recorder node: writes episodes as rosbag2 (MCAP) directories with their metadata.

Two modes:

* `path`: one episode, from the graph's start to its stop (synthetic recordings);
* `out`: a recording session. Episodes ``out/episode_NNNN`` start, are saved or discarded on
  `EpisodeControl` commands (the teleop's buttons, the scripted expert) or through the
  services ``start_episode`` / ``save_episode`` / ``discard_episode``.

A simulator's verdict (`progress`, optional) decides an episode's success where there is one:
the newest completion at the save goes into the metadata, beside what the operator's save
said (`operator_verdict`).

Backends: `rosbags` writes every connected topic from inside the graph through the topics'
wire formats, stamped with the runtime clock like the receive times ros2 bag records (the
local runtime); `ros2bag` runs ``ros2 bag record -s mcap`` on the rig's topics (a robot).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kil.config import require
from kil.data.episode import EpisodeMetadata
from kil.data.episodes import ROS2_BAG_RECORD, EpisodeSession, InProcessBag, Ros2BagProcess
from kil.msgs import EpisodeControl, TaskProgress
from kil.stage import Stage, service, subscribe, subscribe_any


@dataclass(frozen=True)
class RecorderConfig:
    path: str = ""  # one episode directory to create (must not exist), recorded start to stop
    out: str = ""  # or: a session directory of episodes, each started / saved / discarded on command
    task: str = "unspecified"
    rig: str = "sim"
    variation: str = "in"
    seed: int | None = None
    operator: str = ""  # who teleoperated (metadata): quest, spacemouse, keyboard, scripted_expert
    distro: Literal["humble", "jazzy"] = "jazzy"
    backend: Literal["rosbags", "ros2bag"] = "rosbags"
    topics: tuple[str, ...] = ()  # ros2bag: the ROS topics to record (the rig file's record_topics)
    record_command: tuple[str, ...] = ROS2_BAG_RECORD  # ros2bag: the recorder, before "-o <dir> <topics>"
    flush_interval_s: float = 0.5
    stop_after_episodes: int = 0  # > 0: stop the graph once this many episodes are saved or discarded
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        require(bool(self.path) != bool(self.out), "path", "set exactly one of path (one episode) and out (a session)")
        require(self.flush_interval_s > 0, "flush_interval_s", f"must be > 0, got {self.flush_interval_s}")
        require(self.stop_after_episodes >= 0, "stop_after_episodes", f"must be >= 0, got {self.stop_after_episodes}")
        if self.backend == "ros2bag":
            require(bool(self.out), "out", "the ros2bag backend records sessions: set out")
            require(bool(self.topics) and all(t.startswith("/") for t in self.topics), "topics",
                    "the ros2bag backend needs absolute topic names to record")
            require(bool(self.record_command), "record_command", "must name the recorder")


class Recorder(Stage):
    Config = RecorderConfig

    def __init__(self, config: RecorderConfig, io: Any) -> None:
        super().__init__(config, io)
        extra = {**config.extra, **({"operator": config.operator} if config.operator else {})}
        metadata = EpisodeMetadata(task=config.task, rig=config.rig, variation=config.variation, seed=config.seed,
                                   extra=extra, distro=config.distro)
        out = Path(config.out) if config.out else Path(config.path).parent
        self.session = EpisodeSession(out, metadata, self._open_sink, io.log)
        self.progress: TaskProgress | None = None  # the simulator's newest verdict

    def _open_sink(self, path: Path, metadata: EpisodeMetadata) -> Any:
        c = self.config
        if c.backend == "ros2bag":
            return Ros2BagProcess(path, c.topics, c.record_command)
        return InProcessBag(path, metadata, c.flush_interval_s)

    def start(self) -> None:
        if self.config.path:
            self.session.start(self.io.now_ns(), Path(self.config.path))

    @subscribe(control=EpisodeControl, optional=True)
    def on_control(self, control: EpisodeControl) -> None:
        ok, text = {"start": self.start_episode, "save": self.save_episode, "discard": self.discard_episode}[control.command]()
        if not ok:
            self.io.log.warning("episode %s ignored: %s", control.command, text)

    @service("start_episode")
    def start_episode(self) -> tuple[bool, str]:
        return self.session.start(self.io.now_ns())

    @subscribe(progress=TaskProgress, optional=True)
    def on_progress(self, progress: TaskProgress) -> None:
        self.progress = progress

    @service("save_episode")
    def save_episode(self) -> tuple[bool, str]:
        if self.progress is None:
            return self._finished(self.session.save(self.io.now_ns()))
        verdict = {"completion": self.progress.completion, "operator_verdict": True}
        return self._finished(self.session.save(self.io.now_ns(), success=self.progress.success, extra=verdict))

    @service("discard_episode")
    def discard_episode(self) -> tuple[bool, str]:
        return self._finished(self.session.discard())

    def _finished(self, result: tuple[bool, str]) -> tuple[bool, str]:
        done = len(self.session.saved) + len(self.session.discarded) + len(self.session.failed)
        if self.session.current is None and 0 < self.config.stop_after_episodes <= done:
            self.io.shutdown(f"{done} episode(s) recorded")
        return result

    @subscribe_any()
    def on_message(self, port: str, msg: Any) -> None:
        if self.session.current is not None:
            self.session.current.write(self.io.topic(port), msg, self.io.now_ns())

    def stop(self) -> None:
        now = self.io.now_ns()
        if self.config.path:  # the whole run is the episode; its outcome is judged elsewhere
            self.session.save(now, success=None, reason="graph stopped")
        else:
            self.session.close(now)


STAGE = Recorder
