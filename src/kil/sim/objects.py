"""Object catalogue of the simulated tasks (`config/sim/objects.yaml`) and their MuJoCo models.

A category (block, mug, ...) names its keypoints once; every instance is built by a shape
(box, cylinder, mug, tray, coaster) that knows where those named points, its grasp and its
resting height lie on that instance. Object frames are the centre of the bounding box,
z up; all lengths are metres.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from kil.config import load_dataclass, load_yaml, require
from kil.errors import ConfigError
from kil.paths import share_dir


@dataclass(frozen=True)
class ObjectInstance:
    """One object: `size` is the shape's (x, y, z) extent of its body without handles."""

    id: str
    shape: str
    size: tuple[float, float, float]
    rgba: tuple[float, float, float, float]
    density: float = 400.0  # kg/m^3; light enough for both grippers

    def __post_init__(self) -> None:
        require(all(s > 0 for s in self.size), "size", f"all extents must be > 0, got {self.size}")
        require(all(0 <= c <= 1 for c in self.rgba), "rgba", f"components must be in [0, 1], got {self.rgba}")
        require(self.shape in SHAPES, "shape", f"unknown shape {self.shape!r} (known: {', '.join(SHAPES)})")


@dataclass(frozen=True)
class Category:
    prompt: str  # text prompt for open-vocabulary segmentation (issue 4)
    keypoints: tuple[str, ...]
    demo: tuple[ObjectInstance, ...]  # used for demonstrations and the in/scene/rot variations
    held_out: tuple[ObjectInstance, ...] = ()  # only for the obj variation

    def __post_init__(self) -> None:
        require(len(self.demo) > 0, "demo", "a category needs at least one demonstration instance")
        ids = [o.id for o in self.demo + self.held_out]
        require(len(set(ids)) == len(ids), "demo", f"instance ids must be unique, got {ids}")
        for inst in self.demo + self.held_out:
            missing = set(self.keypoints) - set(SHAPES[inst.shape].keypoints(inst))
            require(not missing, "keypoints", f"shape {inst.shape!r} of {inst.id} has no point {sorted(missing)}")


@dataclass(frozen=True)
class _CatalogueFile:
    categories: dict[str, Category]


@dataclass(frozen=True)
class Catalogue:
    categories: dict[str, Category]
    source: str = ""

    def category(self, name: str) -> Category:
        if name not in self.categories:
            raise ConfigError(f"{self.source}: categories: unknown category {name!r} (known: {', '.join(self.categories)})")
        return self.categories[name]

    def instance(self, instance_id: str) -> ObjectInstance:
        return self._find(instance_id)[1]

    def category_of(self, instance_id: str) -> str:
        """The name of the category an instance belongs to."""
        return self._find(instance_id)[0]

    def _find(self, instance_id: str) -> tuple[str, ObjectInstance]:
        for name, cat in self.categories.items():
            for inst in cat.demo + cat.held_out:
                if inst.id == instance_id:
                    return name, inst
        raise ConfigError(f"{self.source}: no object instance {instance_id!r}")


def load_catalogue(path: str | Path | None = None) -> Catalogue:
    path = Path(path) if path is not None else share_dir() / "config" / "sim" / "objects.yaml"
    if not path.exists():
        raise ConfigError(f"{path}: object catalogue not found (reinstall kil or pass a catalogue path)")
    categories = load_dataclass(_CatalogueFile, load_yaml(path), f"{path}:").categories
    held_out = {o.id for c in categories.values() for o in c.held_out}
    demo = {o.id for c in categories.values() for o in c.demo}
    if held_out & demo:
        raise ConfigError(f"{path}: instances both demo and held out: {sorted(held_out & demo)}")
    return Catalogue(categories, str(path))


# --------------------------------------------------------------------------- shapes


@dataclass(frozen=True)
class Geom:
    """One MuJoCo primitive of a composite object; `pos` relative to the object frame."""

    type: str  # box | cylinder | sphere
    size: tuple[float, ...]  # MuJoCo size parameters (half-lengths, radius, half-height)
    pos: tuple[float, float, float]
    quat: tuple[float, float, float, float] = (1.0, 0.0, 0.0, 0.0)  # w, x, y, z (MuJoCo order)


@dataclass(frozen=True)
class Grasp:
    """A top-down grasp in the object frame: fingertip centre, the closing direction (a
    horizontal unit vector; either sign) and the widest the hand may open around it."""

    position: np.ndarray
    closing_axis: np.ndarray
    max_opening: float = math.inf  # metres


class Shape:
    """Geometry of one kind of object, parametrised by an instance's size."""

    name: ClassVar[str]

    @staticmethod
    def half_extents(o: ObjectInstance) -> np.ndarray:
        """(3,) half-size of the bounding box around the object frame."""
        return np.asarray(o.size) / 2

    @staticmethod
    def geoms(o: ObjectInstance) -> list[Geom]:
        raise NotImplementedError

    @staticmethod
    def keypoints(o: ObjectInstance) -> dict[str, np.ndarray]:
        """Named points in the object frame."""
        return {}

    @staticmethod
    def grasp(o: ObjectInstance) -> Grasp:
        sx, sy, sz = o.size
        depth = min(0.02, sz / 2 - 0.005)  # fingertips 2 cm below the top, never below mid-height
        axis = np.array([1.0, 0, 0]) if sx <= sy else np.array([0, 1.0, 0])
        return Grasp(np.array([0.0, 0.0, sz / 2 - depth]), axis)


def _block_points(rx: float, ry: float, top: float) -> dict[str, np.ndarray]:
    c = 1 / math.sqrt(2)
    return {
        "top_center": np.array([0.0, 0.0, top]),
        "top_x": np.array([rx, 0.0, top]),
        "top_y": np.array([0.0, ry, top]),
        "top_corner": np.array([rx * c if rx == ry else rx, ry * c if rx == ry else ry, top]),
    }


class Box(Shape):
    name = "box"

    @staticmethod
    def geoms(o: ObjectInstance) -> list[Geom]:
        return [Geom("box", tuple(np.asarray(o.size) / 2), (0.0, 0.0, 0.0))]

    @staticmethod
    def keypoints(o: ObjectInstance) -> dict[str, np.ndarray]:
        return _block_points(o.size[0] / 2, o.size[1] / 2, o.size[2] / 2)


class Cylinder(Shape):
    """Upright cylinder; size (diameter, diameter, height)."""

    name = "cylinder"

    @staticmethod
    def geoms(o: ObjectInstance) -> list[Geom]:
        return [Geom("cylinder", (o.size[0] / 2, o.size[2] / 2), (0.0, 0.0, 0.0))]

    @staticmethod
    def keypoints(o: ObjectInstance) -> dict[str, np.ndarray]:
        r = o.size[0] / 2
        return _block_points(r, r, o.size[2] / 2)


class Mug(Shape):
    """Open cylinder with a floor and a handle on +x; size (outer diameter, same, height)."""

    name = "mug"
    segments = 16
    wall = 0.007
    handle_reach = 0.03  # how far the handle stands out from the wall
    handle_bar = 0.008

    @classmethod
    def half_extents(cls, o: ObjectInstance) -> np.ndarray:
        r = o.size[0] / 2
        return np.array([r + cls.handle_reach, r + cls.handle_reach, o.size[2] / 2])

    @classmethod
    def geoms(cls, o: ObjectInstance) -> list[Geom]:
        r, h = o.size[0] / 2, o.size[2] / 2
        n, w = cls.segments, cls.wall
        half_width = r * math.sin(math.pi / n) + 0.001  # segments overlap slightly: no gaps
        mid = r - w / 2
        out = []
        for i in range(n):
            a = 2 * math.pi * i / n
            out.append(Geom("box", (w / 2, half_width, h), (mid * math.cos(a), mid * math.sin(a), 0.0), (math.cos(a / 2), 0, 0, math.sin(a / 2))))
        out.append(Geom("cylinder", (r - w / 2, 0.004), (0.0, 0.0, -h + 0.004)))  # floor
        b, reach = cls.handle_bar / 2, cls.handle_reach
        arm_x = r + reach / 2 - 0.002
        for z in (h * 0.55, -h * 0.45):
            out.append(Geom("box", (reach / 2 + 0.002, b * 1.5, b), (arm_x, 0.0, z)))
        out.append(Geom("box", (b, b * 1.5, h * 0.5 + b), (r + reach - b, 0.0, 0.05 * h)))
        return out

    @classmethod
    def keypoints(cls, o: ObjectInstance) -> dict[str, np.ndarray]:
        r, h = o.size[0] / 2, o.size[2] / 2
        mid = r - cls.wall / 2
        return {
            "rim_grasp": np.array([-mid, 0.0, h]),
            "rim_handle": np.array([mid, 0.0, h]),
            "rim_side": np.array([0.0, mid, h]),
            "handle": np.array([r + cls.handle_reach - cls.handle_bar / 2, 0.0, 0.05 * h]),
        }

    @classmethod
    def grasp(cls, o: ObjectInstance) -> Grasp:
        r, h = o.size[0] / 2, o.size[2] / 2
        # the inner finger must not reach the far side of the rim
        inner_diameter = 2 * (r - cls.wall)
        return Grasp(np.array([-(r - cls.wall / 2), 0.0, h - 0.018]), np.array([1.0, 0.0, 0.0]), inner_diameter - 0.015)


class Tray(Shape):
    """Fixed shallow tray: a floor and four walls; size (x, y, wall height)."""

    name = "tray"
    thickness = 0.008

    @classmethod
    def geoms(cls, o: ObjectInstance) -> list[Geom]:
        sx, sy, sz = (s / 2 for s in o.size)
        t = cls.thickness / 2
        return [
            Geom("box", (sx, sy, t), (0.0, 0.0, -sz + t)),
            Geom("box", (t, sy, sz), (sx - t, 0.0, 0.0)),
            Geom("box", (t, sy, sz), (-sx + t, 0.0, 0.0)),
            Geom("box", (sx, t, sz), (0.0, sy - t, 0.0)),
            Geom("box", (sx, t, sz), (0.0, -sy + t, 0.0)),
        ]

    @classmethod
    def keypoints(cls, o: ObjectInstance) -> dict[str, np.ndarray]:
        sx, sy, sz = (s / 2 for s in o.size)
        return {"center": np.array([0.0, 0.0, -sz + cls.thickness]), "corner": np.array([sx, sy, sz]), "edge_x": np.array([sx, 0.0, sz])}


class Coaster(Cylinder):
    """Fixed flat disc marking where an object goes; size (diameter, diameter, thickness)."""

    name = "coaster"

    @staticmethod
    def keypoints(o: ObjectInstance) -> dict[str, np.ndarray]:
        r = o.size[0] / 2
        return {"center": np.array([0.0, 0.0, o.size[2] / 2]), "edge_x": np.array([r, 0.0, o.size[2] / 2])}


class Ball(Shape):
    name = "ball"

    @staticmethod
    def geoms(o: ObjectInstance) -> list[Geom]:
        return [Geom("sphere", (o.size[0] / 2,), (0.0, 0.0, 0.0))]


SHAPES: dict[str, type[Shape]] = {s.name: s for s in (Box, Cylinder, Mug, Tray, Coaster, Ball)}


def shape_of(o: ObjectInstance) -> type[Shape]:
    return SHAPES[o.shape]


def build_mujoco_object(o: ObjectInstance, name: str, fixed: bool = False):
    """A robosuite CompositeObject for `o` named `name` (free joint unless `fixed`)."""
    from robosuite.models.objects import CompositeObject

    shape = shape_of(o)
    geoms = shape.geoms(o)
    half = shape.half_extents(o)
    return CompositeObject(
        name=name,
        total_size=list(half),
        geom_types=[g.type for g in geoms],
        geom_sizes=[list(g.size) for g in geoms],
        geom_locations=[list(g.pos) for g in geoms],
        geom_quats=[list(g.quat) for g in geoms],
        geom_names=[f"g{i}" for i in range(len(geoms))],
        geom_rgbas=[list(o.rgba)] * len(geoms),
        geom_frictions=[[1.5, 0.01, 0.001]] * len(geoms),
        geom_condims=[4] * len(geoms),
        density=o.density,
        locations_relative_to_center=True,
        joints=None if fixed else "default",
        obj_types="all",
    )
