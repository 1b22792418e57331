"""Scripted expert: the teleoperator of the simulated rig.

From the true object poses it plans, per object, approach → grasp → lift → carry → place →
release → retreat, as segments of EE poses (base frame) with eased timing, and hands out
chunks of future waypoints like a policy does. The place motion is planned when the object
is in the hand, from the object's pose relative to the EE at that moment, so a grasp that
slipped is still placed where it should be. A pick that did not lift the object (it slipped
out, or the fingers closed beside it) is tried again, as an operator would; `miss_rate`
makes some first attempts aim beside the object on purpose, so the demonstrations show that
recovery (noise injected into the demonstrator, as in DART) and a policy learns it. Like
DART, the deliberate error itself is not to be imitated: `deliberate_misses` gives the
spans of expert time from planning such a pick until the next plan for that object (the
retry, or the place when the aimed-off pick held after all), which the recording marks so
training leaves those action labels out and keeps the recovery.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation, Slerp

from kil.config import require
from kil.sim.objects import shape_of
from kil.sim.scene import SceneSpec
from kil.sim.tasks import Task


@dataclass(frozen=True)
class ExpertConfig:
    speed: float = 0.25  # m/s along straight segments
    slow_speed: float = 0.08  # m/s for the last centimetres to a grasp or a place
    angular_speed: float = 1.2  # rad/s
    approach_height: float = 0.10  # m above grasp and place poses
    lift_height: float = 0.16  # m
    grasp_dwell_s: float = 0.6
    release_dwell_s: float = 0.4
    final_hold_s: float = 0.8
    settle_s: float = 0.3  # pause above a grasp or place: the arm's tracking lag dies out
    lift_check_m: float = 0.03  # after a pick the object must have risen this much, else it is picked again
    max_attempts: int = 3  # picks per object before going on regardless (the episode then fails)
    miss_rate: float = 0.0  # probability that an object's first pick aims miss_offset_m beside it
    miss_offset_m: float = 0.03  # horizontal, in a random direction

    def __post_init__(self) -> None:
        require(self.max_attempts >= 1, "max_attempts", f"must be >= 1, got {self.max_attempts}")
        require(0.0 <= self.miss_rate <= 1.0, "miss_rate", f"a probability in [0, 1], got {self.miss_rate}")
        require(self.miss_offset_m >= 0, "miss_offset_m", f"must be >= 0, got {self.miss_offset_m}")


@dataclass
class Segment:
    """EE motion from `start` to `end` ((4, 4) base frame) over [t0, t0 + duration], then
    `dwell` seconds at `end`; the gripper opening is `gripper` throughout."""

    start: np.ndarray
    end: np.ndarray
    gripper: float
    t0: float
    duration: float
    dwell: float = 0.0

    @property
    def t_end(self) -> float:
        return self.t0 + self.duration + self.dwell

    def sample(self, t: float) -> np.ndarray:
        s = 1.0 if self.duration <= 0 else float(np.clip((t - self.t0) / self.duration, 0.0, 1.0))
        s = s * s * (3 - 2 * s)  # eased: zero velocity at both ends
        T = np.eye(4)
        T[:3, 3] = (1 - s) * self.start[:3, 3] + s * self.end[:3, 3]
        rotations = Rotation.from_matrix(np.stack([self.start[:3, :3], self.end[:3, :3]]))
        T[:3, :3] = Slerp([0.0, 1.0], rotations)([s]).as_matrix()[0]
        return T


def rotation_angle(Ra: np.ndarray, Rb: np.ndarray) -> float:
    return float(np.linalg.norm(Rotation.from_matrix(Ra.T @ Rb).as_rotvec()))


def raised(T: np.ndarray, dz: float) -> np.ndarray:
    out = T.copy()
    out[2, 3] += dz
    return out


class ScriptedExpert:
    """Plans from object poses; `waypoints(t, ...)` gives the plan sampled ahead."""

    def __init__(self, task: Task, scene: SceneSpec, open_width: float, config: ExpertConfig = ExpertConfig()) -> None:
        self.task = task
        self.scene = scene
        self.open_width = open_width
        self.config = config
        self.segments: list[Segment] = []
        self.stage = 0  # 2 per object (pick, place), then done
        self.done_at: float | None = None
        self.attempts = 0  # picks of the current object so far
        self.picks = 0  # picks planned in the episode, retries included
        self.picked_from_z: float | None = None  # the object's height when its last pick was planned
        self._rng = np.random.default_rng([scene.seed, 1])  # the deliberate misses, reproducible per episode
        self.deliberate_misses: list[tuple[float, float]] = []  # [start, end) s of expert time, closed spans
        self._miss_from: float | None = None  # start of the open span, while an aimed-off pick plays out

    # ------------------------------------------------------------------ planning

    def _move(self, start: np.ndarray, end: np.ndarray, gripper: float, t0: float, slow: bool = False, dwell: float = 0.0) -> Segment:
        c = self.config
        distance = float(np.linalg.norm(end[:3, 3] - start[:3, 3]))
        duration = max(distance / (c.slow_speed if slow else c.speed), rotation_angle(start[:3, :3], end[:3, :3]) / c.angular_speed, 0.2)
        return Segment(start, end, gripper, t0, duration, dwell)

    def _chain(self, start: np.ndarray, t0: float, steps: list[tuple[np.ndarray, float, bool, float]]) -> list[Segment]:
        out = []
        for end, gripper, slow, dwell in steps:
            seg = self._move(start, end, gripper, t0, slow, dwell)
            out.append(seg)
            start, t0 = end, seg.t_end
        return out

    def grasp_pose(self, index: int, T_obj: np.ndarray, ee_now: np.ndarray) -> np.ndarray:
        """(4, 4) EE pose grasping object `index` at pose `T_obj`: pointing down, closing
        along the shape's closing axis, with the sign nearer the current EE heading."""
        inst = self.scene.objects[index].instance
        grasp = shape_of(inst).grasp(inst)
        closing = T_obj[:3, :3] @ grasp.closing_axis
        closing[2] = 0.0
        closing /= np.linalg.norm(closing)
        if closing @ ee_now[:3, 0] < 0:
            closing = -closing
        z = np.array([0.0, 0.0, -1.0])
        T = np.eye(4)
        T[:3, :3] = np.stack([closing, np.cross(z, closing), z], axis=1)  # EE x = closing axis
        T[:3, 3] = T_obj[:3, :3] @ grasp.position + T_obj[:3, 3]
        return T

    def place_pose(self, index: int, T_obj: np.ndarray, ee_now: np.ndarray) -> np.ndarray:
        """(4, 4) EE pose that puts the held object `index` at its place pose."""
        half = float(shape_of(self.scene.objects[index].instance).half_extents(self.scene.objects[index].instance)[2])
        position, yaw = self.task.place_pose(index, half)
        obj_yaw = math.atan2(T_obj[1, 0], T_obj[0, 0])
        turn = 0.0 if yaw is None else (yaw - obj_yaw + math.pi) % (2 * math.pi) - math.pi
        c, s = math.cos(turn), math.sin(turn)
        Rz = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
        # keep the object's pose in the hand; turn the hand about the vertical through the object
        T_place_obj = np.eye(4)
        T_place_obj[:3, :3] = Rz @ T_obj[:3, :3]
        T_place_obj[:3, 3] = position
        return T_place_obj @ np.linalg.inv(T_obj) @ ee_now  # the hand turns by the same pure yaw

    def _plan_pick(self, index: int, t: float, ee_cmd: np.ndarray, T_obj: np.ndarray) -> list[Segment]:
        c = self.config
        G = self.grasp_pose(index, T_obj, ee_cmd)
        self.attempts += 1
        self.picks += 1
        self.picked_from_z = float(T_obj[2, 3])
        if self.attempts == 1 and c.miss_rate > 0 and self._rng.random() < c.miss_rate:
            angle = self._rng.uniform(-math.pi, math.pi)
            G[:2, 3] += c.miss_offset_m * np.array([math.cos(angle), math.sin(angle)])
            self._miss_from = t
        inst = self.scene.objects[index].instance
        w, closed = min(self.open_width, shape_of(inst).grasp(inst).max_opening), 0.0
        return self._chain(ee_cmd, t, [
            (raised(G, c.approach_height), w, False, c.settle_s),
            (G, w, True, 0.15),
            (G, closed, True, c.grasp_dwell_s),
            (raised(G, c.lift_height), closed, False, 0.0),
        ])

    def _plan_place(self, index: int, t: float, ee_cmd: np.ndarray, ee_now: np.ndarray, T_obj: np.ndarray) -> list[Segment]:
        c = self.config
        P = self.place_pose(index, T_obj, ee_now)
        above = raised(P, c.approach_height)
        return self._chain(ee_cmd, t, [
            (above, 0.0, False, c.settle_s),
            (P, 0.0, True, 0.1),
            (P, self.open_width, True, c.release_dwell_s),
            (raised(P, c.approach_height), self.open_width, False, 0.0),
        ])

    # ------------------------------------------------------------------ execution

    def update(self, t: float, ee_now: np.ndarray, object_poses: list[np.ndarray]) -> None:
        """Plan the next stage once the current one has been played out (at time t, s)."""
        if self.segments and t < self.segments[-1].t_end:
            return
        ee_cmd = self.segments[-1].end if self.segments else ee_now
        n = len(self.scene.objects)
        if self.stage >= 2 * n:
            if self.done_at is None:
                self.done_at = t + self.config.final_hold_s
            return
        index, placing = divmod(self.stage, 2)
        if self._miss_from is not None:  # the aimed-off pick has played out: what follows is recovery (or the place)
            self.deliberate_misses.append((self._miss_from, t))
            self._miss_from = None
        if placing and not self.lifted(object_poses[index]) and self.attempts < self.config.max_attempts:
            self.segments = self._plan_pick(index, t, ee_cmd, object_poses[index])  # again, from where it lies now
            return
        if placing:
            plan = self._plan_place(index, t, ee_cmd, ee_now, object_poses[index])
            self.attempts = 0
        else:
            plan = self._plan_pick(index, t, ee_cmd, object_poses[index])
        self.segments = plan
        self.stage += 1

    def misses_until(self, t: float) -> list[tuple[float, float]]:
        """The deliberate misses' [start, end) spans (s of expert time), one still under way
        closed at `t` (the episode stopped during it)."""
        open_span = [(self._miss_from, max(t, self._miss_from) + 1e-9)] if self._miss_from is not None else []
        return [*self.deliberate_misses, *open_span]

    def lifted(self, T_obj: np.ndarray) -> bool:
        """Whether the last pick raised the object (pose (4, 4), base frame) off the table."""
        return self.picked_from_z is None or float(T_obj[2, 3]) - self.picked_from_z >= self.config.lift_check_m

    def finished(self, t: float) -> bool:
        return self.done_at is not None and t >= self.done_at

    def sample(self, t: float) -> tuple[np.ndarray, float]:
        """The planned EE pose (4, 4) and gripper opening at time t (holding after the plan)."""
        for seg in self.segments:
            if t <= seg.t_end:
                return seg.sample(t), seg.gripper
        last = self.segments[-1]
        return last.end, last.gripper


def play_expert(world, limit_s: float = 60.0, config: ExpertConfig = ExpertConfig()) -> Iterator[int]:
    """Drive a SimWorld through the expert's demonstration of its task, tick by tick, without
    the node graph (views and frames of objects being handled, for training and calibrating
    perception). Yields the tick count after each step until the plan is played out or
    `limit_s` of sim time has passed."""
    objects = range(len(world.scene.objects))
    expert = ScriptedExpert(world.task, world.scene, world.gripper_opening(), config)
    while not expert.finished(world.time_s) and world.time_s < limit_s:
        expert.update(world.time_s, world.ee_pose(), [world.object_pose(i) for i in objects])
        T, opening = expert.sample(world.time_s)
        world.step(T[:3, 3], T[:3, :3], opening)
        yield world.ticks
