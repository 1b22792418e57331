"""Training views for the dense descriptor net: each simulated scene rendered from several
camera poses (other distances, so scales change) with the arm moved between views, with
everything `kil.sim.correspondence` needs to relate pixels exactly. A share of scenes is
instead seen along a scripted demonstration, so objects also appear in the fingers, lifted,
and put down in the fixture: where a run's keypoints must still be found, and where a
net trained on objects resting on the table scores them below its visibility threshold.

Scenes use the demonstration instances only (variations in, scene, rot), never the `obj`
instances held out for evaluation, and seeds disjoint from the benchmarks'.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

from kil.geometry import look_at_pose
from kil.sim.correspondence import View
from kil.sim.world import CameraConfig

TRAINING_SEED_BASE = 500_000  # scene seeds for training views; benchmarks use others


@dataclass(frozen=True)
class SceneRequest:
    task: str
    robot: str
    variation: str
    seed: int
    views: int
    size: tuple[int, int]  # (height, width) pixels
    recolour: bool = False  # objects and distractors in random colours (SimWorld.recolour_objects)
    manipulated: bool = False  # views along a scripted demonstration instead of a randomly moved arm


@dataclass(frozen=True)
class SceneViews:
    request: SceneRequest
    views: list[View]


def random_camera_pose(rng: np.random.Generator, base: CameraConfig) -> np.ndarray:
    """A tripod pose near the default one: the look-at point shifted, the camera swung about
    it by up to +-25 deg, raised or lowered, and moved 0.6-1.3x as far (scale changes)."""
    look = np.asarray(base.look_at, float) + rng.uniform([-0.08, -0.08, -0.03], [0.08, 0.08, 0.03])
    offset = np.asarray(base.eye, float) - np.asarray(base.look_at, float)
    yaw = math.radians(rng.uniform(-25, 25))
    c, s = math.cos(yaw), math.sin(yaw)
    offset = np.array([c * offset[0] - s * offset[1], s * offset[0] + c * offset[1], offset[2] + rng.uniform(-0.12, 0.12)])
    return look_at_pose(look + offset * rng.uniform(0.6, 1.3), look)


def _move_arm(world, rng: np.random.Generator, ticks: int = 60) -> None:
    """Drive the EE towards a random point above the table (the arm is a negative for the
    objects' descriptors and must look different from view to view)."""
    T = world.ee_pose()
    target = np.array([rng.uniform(0.3, 0.65), rng.uniform(-0.3, 0.3), world.table_z + rng.uniform(0.12, 0.4)])
    for _ in range(ticks):
        world.step(target, T[:3, :3], None)


CANDIDATE_PERIOD_S = 0.5  # a demonstration offers a view every this many seconds of sim time
MOVED_M = 0.02  # an object this far from where it lay is in the fingers or put down


def _demonstration_views(world, rng: np.random.Generator, camera: CameraConfig, count: int) -> list:
    """`count` views along the scripted expert's demonstration of the world's task, each from
    a random camera pose: at least half (where there are enough) with an object moved from
    its place, the rest approaching or leaving it."""
    from kil.sim.expert import play_expert

    objects = range(len(world.scene.objects))
    start = np.array([world.object_pose(i)[:3, 3] for i in objects])
    every = max(1, int(round(CANDIDATE_PERIOD_S * world.config.control_hz)))
    moved, still = [], []
    for tick in play_expert(world):
        if tick % every == 0:
            world.set_camera_pose(random_camera_pose(rng, camera))
            now = np.array([world.object_pose(i)[:3, 3] for i in objects])
            (moved if np.linalg.norm(now - start, axis=1).max() > MOVED_M else still).append(world.capture_view())
    n_moved = min(len(moved), max(count // 2, count - len(still)))
    picks = [moved[i] for i in rng.choice(len(moved), n_moved, replace=False)]
    picks += [still[i] for i in rng.choice(len(still), min(len(still), count - n_moved), replace=False)]
    return picks


def render_scene(request: SceneRequest) -> SceneViews:
    """Render one scene's views (runs in a worker process)."""
    from kil.sim.episode import make_world

    height, width = request.size
    camera = CameraConfig(width=width, height=height)
    world = make_world(request.task, request.robot, request.variation, request.seed, camera)
    rng = np.random.default_rng(request.seed)
    views = []
    try:
        if request.recolour:  # its own stream: the views (arm, camera) stay those of the plain scene
            world.recolour_objects(np.random.default_rng([request.seed, 1]))
        if request.manipulated:
            views = _demonstration_views(world, rng, camera, request.views)
        for _ in range(request.views - len(views)):
            _move_arm(world, rng)
            world.set_camera_pose(random_camera_pose(rng, camera))
            views.append(world.capture_view())
    finally:
        world.close()
    return SceneViews(request, views)


def scene_requests(tasks, robots, variations, scenes: int, views: int, size: tuple[int, int], seed: int,
                   recolour_share: float = 0.0, manipulated_share: float = 0.0) -> list[SceneRequest]:
    """`scenes` requests cycling through tasks x robots x variations, seeded from `seed`;
    `recolour_share` of them (spread evenly) with objects in random colours, and a random
    `manipulated_share` (drawn apart from the cycle, so every task, robot, variation and
    colouring has some) seen along a demonstration."""
    combos = [(t, r, v) for t in tasks for r in robots for v in variations]
    manipulated = np.random.default_rng([seed, 2]).random(scenes) < manipulated_share
    return [SceneRequest(*combos[i % len(combos)], TRAINING_SEED_BASE + 1000 * seed + i, views, tuple(size),
                         int((i + 1) * recolour_share) > int(i * recolour_share), bool(manipulated[i])) for i in range(scenes)]


def render_scenes(requests: list[SceneRequest], workers: int, progress: Callable[[], None] | None = None) -> list[SceneViews]:
    """Render all requests, in `workers` processes (each builds its own MuJoCo worlds)."""
    out = []
    if workers <= 1:
        for request in requests:
            out.append(render_scene(request))
            if progress:
                progress()
        return out
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for result in pool.map(render_scene, requests):
            out.append(result)
            if progress:
                progress()
    return out
