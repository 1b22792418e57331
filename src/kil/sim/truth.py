"""Rendered frames with their true keypoints, for measuring and calibrating keypoint
extraction: where each named point is, in pixels and in the base frame, and whether the
camera sees it (projects into the image, not hidden by the arm, the gripper or clutter).

`arm` places the gripper before the frame is taken: "away" (the start pose, nothing
hidden), "occluding" (the hand on the camera's line of sight to a task object, 12-25 cm from it
and up to 2.5 cm off the line: the gripper hides some or all of its points, and stands right
next to the others, which is where a keypoint jumps to), "random" (anywhere above the
table), "holding" (the scripted expert has picked an object up and carries it: its points
are in the fingers, some hidden by them) or "placed" (the expert has put every object
down where the task wants it and raised the gripper above the last one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from kil.msgs import RGBD

ArmPlacement = Literal["away", "occluding", "random", "holding", "placed"]
LIFTED_M = 0.03  # an object this much above where it lay is in the fingers


@dataclass(frozen=True)
class TruthFrame:
    """A rendered frame with its true keypoints: names; uv (N, 2) px; xyz (N, 3) m in the
    base frame; visible (N,) bool; instance (N,) int."""

    task: str
    variation: str
    seed: int
    arm: str
    rgb: np.ndarray
    depth: np.ndarray
    K: np.ndarray
    T_base_camera: np.ndarray
    names: tuple[str, ...]
    uv: np.ndarray
    xyz: np.ndarray
    visible: np.ndarray
    instance: np.ndarray

    def rgbd(self, stamp_ns: int = 0) -> RGBD:
        return RGBD(stamp_ns=stamp_ns, frame_id="camera_optical", rgb=self.rgb, depth=self.depth, K=self.K,
                    base_frame_id="base", T_base_camera=self.T_base_camera)


def _place_arm(world, arm: ArmPlacement, rng: np.random.Generator, ticks: int = 150) -> None:
    if arm == "away":
        return
    if arm in ("holding", "placed"):
        _demonstrate_until(world, arm, rng)
        return
    rotation = world.ee_pose()[:3, :3]
    if arm == "occluding":
        index = int(rng.integers(len(world.scene.objects)))
        top = world.object_pose(index)[:3, 3] + [0, 0, world.object_half_heights()[index]]
        towards_camera = world.T_base_camera[:3, 3] - top
        towards_camera /= np.linalg.norm(towards_camera)
        # the EE target is the point between the fingertips: lower it so the hand sits on the line
        target = top + rng.uniform(0.12, 0.25) * towards_camera + [*rng.uniform(-0.025, 0.025, 2), -0.06]
        target[2] = max(target[2], top[2] + 0.01)
    else:
        target = np.array([rng.uniform(0.3, 0.65), rng.uniform(-0.3, 0.3), world.table_z + rng.uniform(0.08, 0.4)])
    for _ in range(ticks):
        world.step(target, rotation, 0.08)


def render_truth_frame(task: str, variation: str, seed: int, robot: str = "panda", arm: ArmPlacement = "away") -> TruthFrame:
    """One scene (task, variation, seed) with the arm placed by `arm`, rendered at 640x480."""
    from kil.sim.episode import make_world

    world = make_world(task, robot, variation, seed)
    try:
        _place_arm(world, arm, np.random.default_rng(seed))
        rgb, depth = world.render()
        truth = world.projected_keypoints(depth)
        return TruthFrame(task, variation, seed, arm, rgb, depth, world.K.copy(), world.T_base_camera.copy(),
                          truth.names, truth.uv, truth.xyz, truth.visible, truth.instance)
    finally:
        world.close()


def _demonstrate_until(world, arm: ArmPlacement, rng: np.random.Generator) -> None:
    """Play the expert's demonstration: to its end ("placed"), or until it has carried the
    first object it lifted for a random 0-1 s ("holding"; where it lifts none, to its end:
    the frame and its truth are as valid, only not of that kind)."""
    from kil.sim.expert import play_expert

    objects = range(len(world.scene.objects))
    rest_z = np.array([world.object_pose(i)[2, 3] for i in objects])
    carry_ticks = int(rng.integers(0, world.config.control_hz))
    for _ in play_expert(world):
        if arm == "holding" and max(world.object_pose(i)[2, 3] - rest_z[i] for i in objects) > LIFTED_M:
            if carry_ticks == 0:
                return
            carry_ticks -= 1
