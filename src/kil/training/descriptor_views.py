"""Training views for the dense descriptor net: each simulated scene rendered from several
camera poses (other distances, so scales change) with the arm moved between views, with
everything `kil.sim.correspondence` needs to relate pixels exactly.

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
        for _ in range(request.views):
            _move_arm(world, rng)
            world.set_camera_pose(random_camera_pose(rng, camera))
            views.append(world.capture_view())
    finally:
        world.close()
    return SceneViews(request, views)


def scene_requests(tasks, robots, variations, scenes: int, views: int, size: tuple[int, int], seed: int,
                   recolour_share: float = 0.0) -> list[SceneRequest]:
    """`scenes` requests cycling through tasks x robots x variations, seeded from `seed`;
    `recolour_share` of them (spread evenly) with objects in random colours."""
    combos = [(t, r, v) for t in tasks for r in robots for v in variations]
    return [SceneRequest(*combos[i % len(combos)], TRAINING_SEED_BASE + 1000 * seed + i, views, tuple(size),
                         int((i + 1) * recolour_share) > int(i * recolour_share)) for i in range(scenes)]


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
