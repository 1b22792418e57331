"""Sim expert node: the scripted teleoperator of the simulated rig.

It reads the true object poses from TF (``sim/obj<i>``, published by the sim rig like a
motion-capture system would) and the robot state, and publishes chunks of absolute EE
targets at 10 Hz, exactly like the policy node, so its motions go through the same
10 → 100 Hz path. Like an operator, it starts an episode on `episode` with its first chunk
and saves it when its plan is played out (the recorder then ends the run); with `episode`
unconnected it stops the graph itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kil.config import require
from kil.errors import TransformError
from kil.geometry import matrix_to_quat, pose_to_matrix
from kil.msgs import ActionChunk, EpisodeControl, RobotState
from kil.sim.expert import ExpertConfig, ScriptedExpert
from kil.stage import Stage, every, subscribe


@dataclass(frozen=True)
class SimExpertConfig:
    task: str = "pick_place"  # task, variation and seed must match the sim rig's
    variation: str = "in"
    seed: int = 0
    rate_hz: float = 10.0
    horizon: int = 16  # waypoints per chunk
    base_frame: str = "base_link"
    # Held still after starting the episode before moving: a recorder in another process
    # (ros2 bag record) needs a moment to subscribe, and the demonstration must not start
    # before the recording does.
    start_delay_s: float = 0.0
    motion: ExpertConfig = field(default_factory=ExpertConfig)

    def __post_init__(self) -> None:
        require(self.rate_hz > 0, "rate_hz", "must be > 0")
        require(self.start_delay_s >= 0, "start_delay_s", f"must be >= 0, got {self.start_delay_s}")
        require(self.horizon >= 2, "horizon", f"needs at least 2 waypoints, got {self.horizon}")


class SimExpert(Stage):
    Config = SimExpertConfig
    outputs = {"chunk": ActionChunk, "episode": EpisodeControl}

    def __init__(self, config: SimExpertConfig, io) -> None:
        super().__init__(config, io)
        self.state: RobotState | None = None
        self.planner: ScriptedExpert | None = None
        self.t0_ns: int | None = None
        self.last_tick_ns: int | None = None
        self.done = False

    @property
    def not_to_imitate_ns(self) -> list[tuple[int, int]]:
        """[start, end) stamps (ns, the graph's clock) of the deliberate misses played so far:
        action labels in them are the demonstrator's injected error, not the task."""
        if self.planner is None or self.t0_ns is None:
            return []
        spans = self.planner.misses_until(((self.last_tick_ns or self.t0_ns) - self.t0_ns) / 1e9)
        return [(self.t0_ns + int(round(a * 1e9)), self.t0_ns + int(round(b * 1e9))) for a, b in spans]

    @subscribe(state=RobotState)
    def on_state(self, state: RobotState) -> None:
        self.state = state

    def _make_planner(self, open_width: float) -> ScriptedExpert:
        from kil.sim.episode import episode_scene
        from kil.sim.objects import load_catalogue
        from kil.sim.tasks import make_task, task_config

        c = self.config
        table_z = float(self.io.lookup_transform(c.base_frame, "sim/table")[2, 3])
        scene = episode_scene(c.task, c.variation, c.seed)
        task = make_task(c.task, task_config(c.task), load_catalogue(), table_z)
        return ScriptedExpert(task, scene, open_width, c.motion)

    @every(hz="rate_hz")
    def tick(self) -> None:
        if self.state is None or self.done:
            return
        now = self.io.now_ns()
        try:
            if self.planner is None:
                self.planner = self._make_planner(self.state.gripper)
                self.t0_ns = now + int(round(self.config.start_delay_s * 1e9))
                self.io.publish("episode", EpisodeControl(now, "start"))
            if now < self.t0_ns:
                return
            objects = [self.io.lookup_transform(self.config.base_frame, f"sim/obj{i}") for i in range(len(self.planner.scene.objects))]
        except TransformError:
            return  # the rig has not published its first frame yet
        t = (now - self.t0_ns) / 1e9
        self.last_tick_ns = now
        ee_now = pose_to_matrix(self.state.position, self.state.orientation)
        self.planner.update(t, ee_now, objects)
        if self.planner.finished(t):
            self.done = True
            if self.io.topic("episode") is None:
                self.io.shutdown("expert finished its plan")
            else:
                self.io.publish("episode", EpisodeControl(now, "save"))
            return
        dt = 1.0 / self.config.rate_hz
        samples = [self.planner.sample(t + i * dt) for i in range(self.config.horizon)]
        self.io.publish("chunk", ActionChunk(
            stamp_ns=now,
            frame_id=self.config.base_frame,
            dt=dt,
            positions=np.array([T[:3, 3] for T, _ in samples]),
            orientations=np.array([matrix_to_quat(T[:3, :3]) for T, _ in samples]),
            gripper=np.array([g for _, g in samples], dtype=float),
        ))


STAGE = SimExpert
