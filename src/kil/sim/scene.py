"""Scene sampling: one seeded draw of what is on the table for a task and a variation.

Variations are named as in paper 001:
  in     demonstration objects, positions across the workspace, yaw within ±30° of canonical
  obj    held-out instances of the category, otherwise as `in`
  scene  as `in`, plus distractors, another table colour and other lighting
  rot    as `in`, with yaw over the full 360°
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from kil.errors import ConfigError
from kil.sim.objects import Catalogue, ObjectInstance, shape_of
from kil.sim.tasks import TaskConfig

VARIATIONS = ("in", "obj", "scene", "rot")
IN_YAW_RANGE_DEG = 30.0
DEFAULT_TABLE_RGBA = (0.78, 0.72, 0.62, 1.0)


@dataclass(frozen=True)
class Placement:
    instance: ObjectInstance
    xy: tuple[float, float]  # base frame, metres
    yaw: float  # radians about base z


@dataclass(frozen=True)
class Lighting:
    diffuse: float = 0.7  # intensity of the main light, 0..1
    ambient: float = 0.25
    direction: tuple[float, float, float] = (0.0, 0.0, -1.0)  # world frame


@dataclass(frozen=True)
class SceneSpec:
    task: str
    variation: str
    seed: int
    objects: tuple[Placement, ...]  # the task's objects, in task order (nearest `first_nearest_xy` first)
    distractors: tuple[Placement, ...] = ()
    table_rgba: tuple[float, float, float, float] = DEFAULT_TABLE_RGBA
    table_texture: bool = True
    lighting: Lighting = field(default_factory=Lighting)

    @property
    def object_ids(self) -> list[str]:
        return [p.instance.id for p in self.objects]


def check_variation(variation: str) -> str:
    if variation not in VARIATIONS:
        raise ConfigError(f"unknown variation {variation!r} (choose one of: {', '.join(VARIATIONS)})")
    return variation


def _footprint(inst: ObjectInstance) -> float:
    """Radius of the object's footprint on the table (metres)."""
    return float(np.linalg.norm(shape_of(inst).half_extents(inst)[:2]))


def _free_spot(rng: np.random.Generator, region: tuple[tuple[float, float], tuple[float, float]], radius: float,
               taken: list[tuple[np.ndarray, float]], gap: float = 0.02) -> np.ndarray:
    (x0, x1), (y0, y1) = region
    for _ in range(500):
        xy = np.array([rng.uniform(x0, x1), rng.uniform(y0, y1)])
        if all(np.linalg.norm(xy - c) > radius + r + gap for c, r in taken):
            return xy
    raise ConfigError(f"no free place for an object of radius {radius:.3f} m in region x={region[0]}, y={region[1]}")


def sample_scene(task_name: str, task: TaskConfig, catalogue: Catalogue, variation: str, seed: int) -> SceneSpec:
    """A deterministic scene for (task, variation, seed)."""
    check_variation(variation)
    rng = np.random.default_rng(seed)
    category = catalogue.category(task.category)
    pool = category.held_out if variation == "obj" else category.demo
    if not pool:
        raise ConfigError(f"category {task.category!r} has no held-out instances for the obj variation")
    fixture = catalogue.instance(task.fixture.instance)
    taken: list[tuple[np.ndarray, float]] = [(np.asarray(task.fixture.position), _footprint(fixture))]
    region = (task.region.x, task.region.y)
    canonical = math.radians(task.canonical_yaw_deg)
    objects = []
    for _ in range(task.objects):
        inst = pool[rng.integers(len(pool))]
        radius = _footprint(inst)
        xy = _free_spot(rng, region, radius, taken)
        taken.append((xy, radius))
        if variation == "rot":
            yaw = rng.uniform(-math.pi, math.pi)
        else:
            yaw = canonical + math.radians(rng.uniform(-IN_YAW_RANGE_DEG, IN_YAW_RANGE_DEG))
        objects.append(Placement(inst, (float(xy[0]), float(xy[1])), float(yaw)))
    if task.first_nearest_xy is not None:  # after every draw, so the rest of the scene stays as drawn
        objects.sort(key=lambda p: math.dist(p.xy, task.first_nearest_xy))
    if variation != "scene":
        return SceneSpec(task_name, variation, seed, tuple(objects))
    distractor_pool = catalogue.category("distractor").demo
    distractors = []
    wide = ((region[0][0] - 0.05, region[0][1] + 0.07), (region[1][0] - 0.04, region[1][1] + 0.44))
    for _ in range(int(rng.integers(2, 5))):
        inst = distractor_pool[rng.integers(len(distractor_pool))]
        radius = _footprint(inst)
        xy = _free_spot(rng, wide, radius, taken)
        taken.append((xy, radius))
        distractors.append(Placement(inst, (float(xy[0]), float(xy[1])), float(rng.uniform(-math.pi, math.pi))))
    hue = rng.uniform(0, 1, 3)
    table = tuple(float(c) for c in 0.25 + 0.6 * hue) + (1.0,)
    direction = rng.normal(size=3) * [0.5, 0.5, 0.2] + [0, 0, -1]
    lighting = Lighting(
        diffuse=float(rng.uniform(0.4, 0.95)),
        ambient=float(rng.uniform(0.1, 0.4)),
        direction=tuple(float(v) for v in direction / np.linalg.norm(direction)),
    )
    return SceneSpec(task_name, variation, seed, tuple(objects), tuple(distractors), table, bool(rng.integers(2)), lighting)
