"""Reference keypoint specs (`config/tasks/<task>/keypoints.yaml`).

A spec names, per object category, a text prompt and one or more reference images with named
keypoints (u, v) in pixels. Multi-instance tasks give one reference per instance: reference i
of category c yields keypoints named ``c[i]/<point>`` (``c/<point>`` when there is only one),
with instance index i. A reference may add views: other images of its object (turned,
elsewhere) with some of its points, each a further descriptor of those keypoints, so that
an object turned away from how the reference image shows it is still found (the matcher
takes each keypoint's best view). Image paths are relative to the spec file. Everything is
checked at load: images exist, names are unique, points lie inside their image, every
reference of a category has the same points, a view names only its reference's points.

    task: pick_place
    categories:
      - name: block
        prompt: a small block
        references:
          - image: block.png
            keypoints: {top_center: [312.0, 240.5], top_corner: [330.0, 228.0]}
            views:
              - image: block_turned.png
                keypoints: {top_center: [280.0, 251.0]}
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from kil.config import load_dataclass, load_yaml, require, to_plain
from kil.errors import ConfigError
from kil.paths import share_dir

SPEC_FILE = "keypoints.yaml"


def _check_points(image: str, keypoints: dict[str, tuple[float, float]], what: str) -> None:
    require(bool(image), "image", "must name an image file")
    require(len(keypoints) > 0, "keypoints", f"{what} needs at least one keypoint")
    require(all(isinstance(n, str) and n and "/" not in n for n in keypoints), "keypoints",
            f"names must be non-empty and without '/', got {list(keypoints)}")


@dataclass(frozen=True)
class View:
    """Another image of a reference's object (turned, moved) with some of its points (u, v)
    pixels: further descriptors of those keypoints."""

    image: str
    keypoints: dict[str, tuple[float, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_points(self.image, self.keypoints, "a view")


@dataclass(frozen=True)
class Reference:
    """One annotated image: its file (relative to the spec), named points (u, v) pixels, and
    optional views of the same object."""

    image: str
    keypoints: dict[str, tuple[float, float]] = field(default_factory=dict)
    views: list[View] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check_points(self.image, self.keypoints, "a reference")
        for i, view in enumerate(self.views):
            unknown = [n for n in view.keypoints if n not in self.keypoints]
            require(not unknown, f"views[{i}].keypoints", f"names points the reference does not have: {unknown}")

    def restricted(self, points: list[str]) -> Reference:
        """This reference with only `points` (views left without any are dropped)."""
        views = [(v.image, {p: v.keypoints[p] for p in points if p in v.keypoints}) for v in self.views]
        return Reference(self.image, {p: self.keypoints[p] for p in points}, [View(image, kept) for image, kept in views if kept])


@dataclass(frozen=True)
class Category:
    name: str
    prompt: str = ""
    references: list[Reference] = field(default_factory=list)

    def __post_init__(self) -> None:
        require(bool(self.name) and "/" not in self.name and "[" not in self.name, "name",
                f"must be non-empty without '/' or '[', got {self.name!r}")
        require(len(self.references) > 0, "references", f"category {self.name!r} needs at least one reference image")
        first = list(self.references[0].keypoints)
        for i, ref in enumerate(self.references[1:], 1):
            require(list(ref.keypoints) == first, f"references[{i}].keypoints",
                    f"every reference of {self.name!r} must name the same points in the same order: {first} vs {list(ref.keypoints)}")


@dataclass(frozen=True)
class KeypointSpec:
    task: str
    categories: list[Category] = field(default_factory=list)

    def __post_init__(self) -> None:
        require(len(self.categories) > 0, "categories", "a spec needs at least one category")
        names = [c.name for c in self.categories]
        require(len(set(names)) == len(names), "categories", f"category names must be unique, got {names}")

    def images(self) -> set[str]:
        """Every image the spec names (references and views), relative to its file."""
        return {image for category in self.categories for ref in category.references
                for image in (ref.image, *(view.image for view in ref.views))}


@dataclass(frozen=True)
class KeypointLayout:
    """The flat keypoint list a spec produces: names and (N,) instance index."""

    names: tuple[str, ...]
    instance: np.ndarray


def keypoint_name(category: str, point: str, instance: int | None = None) -> str:
    """``category/point``, or ``category[i]/point`` for instance i of a category with several."""
    return f"{category}/{point}" if instance is None else f"{category}[{instance}]/{point}"


def parse_keypoint_name(name: str) -> tuple[str, int | None, str]:
    """(category, instance or None, point) of a name written by `keypoint_name`."""
    head, _, point = name.partition("/")
    category, bracket, rest = head.partition("[")
    return category, (int(rest.rstrip("]")) if bracket else None), point


class LoadedSpec:
    """A validated spec with its directory (images are resolved against it)."""

    def __init__(self, spec: KeypointSpec, directory: Path) -> None:
        self.spec = spec
        self.directory = directory

    @property
    def task(self) -> str:
        return self.spec.task

    def image_path(self, reference: Reference | View) -> Path:
        return self.directory / reference.image

    def fingerprint(self) -> str:
        """A hash of the spec and its images (references and views): what keypoints extracted with it depend on."""
        digest = hashlib.sha256(yaml.safe_dump(plain_spec(self.spec), sort_keys=True).encode())
        for image in sorted(self.spec.images()):
            digest.update((self.directory / image).read_bytes())
        return digest.hexdigest()[:16]

    def image(self, reference: Reference | View) -> np.ndarray:
        """(H, W, 3) uint8 RGB of a reference's (or a view's) image."""
        with Image.open(self.image_path(reference)) as img:
            return np.asarray(img.convert("RGB"))

    def layout(self) -> KeypointLayout:
        names, instance = [], []
        for category in self.spec.categories:
            several = len(category.references) > 1
            for r, ref in enumerate(category.references):
                for point in ref.keypoints:
                    names.append(keypoint_name(category.name, point, r if several else None))
                    instance.append(r)
        return KeypointLayout(tuple(names), np.array(instance, np.int32))

    def subset(self, names: set[str] | list[str]) -> KeypointSpec:
        """The spec restricted to the keypoints whose layout names are in `names` (a point of
        a multi-instance category is kept for every instance if any instance's is named;
        categories left without points are dropped)."""
        wanted = set(names)
        categories = []
        for category in self.spec.categories:
            several = len(category.references) > 1
            keep = [point for point in category.references[0].keypoints
                    if any(f"{category.name}[{r}]/{point}" in wanted if several else f"{category.name}/{point}" in wanted
                           for r in range(len(category.references)))]
            if keep:
                references = [ref.restricted(keep) for ref in category.references]
                categories.append(Category(category.name, category.prompt, references))
        if not categories:
            raise ConfigError(f"{self.directory / SPEC_FILE}: no keypoint of the spec is selected")
        return KeypointSpec(self.spec.task, categories)

    def references(self) -> list[tuple[Reference, np.ndarray]]:
        """Each reference image with its (K, 2) keypoint pixels, in layout order."""
        out = []
        for category in self.spec.categories:
            for ref in category.references:
                out.append((ref, np.array(list(ref.keypoints.values()), np.float64).reshape(-1, 2)))
        return out

    def views(self) -> list[tuple[View, np.ndarray, np.ndarray]]:
        """Each view with its (K, 2) pixels and (K,) layout indices of the keypoints it shows."""
        out, offset = [], 0
        for ref, uv in self.references():
            points = list(ref.keypoints)
            for view in ref.views:
                index = np.array([offset + points.index(p) for p in view.keypoints], np.int64)
                out.append((view, np.array(list(view.keypoints.values()), np.float64).reshape(-1, 2), index))
            offset += len(uv)
        return out


def plain_spec(spec: KeypointSpec) -> dict:
    """The spec as YAML-able data, a reference without views written without the key."""
    data = to_plain(spec)
    for category in data["categories"]:
        for ref in category["references"]:
            if not ref["views"]:
                del ref["views"]
    return data


def spec_path(task_or_path: str | Path) -> Path:
    """A spec file: an existing path (file or directory), or a task name under config/tasks/."""
    path = Path(task_or_path)
    if path.suffix in (".yaml", ".yml"):
        return path
    if path.is_dir():
        return path / SPEC_FILE
    return share_dir() / "config" / "tasks" / str(task_or_path) / SPEC_FILE


def shipped(directory: str | Path) -> bool:
    """Whether a spec directory is one of the task specs installed with kil (config/tasks/):
    those are never written to (an install may be read-only, and it is every user's)."""
    tasks = (share_dir() / "config" / "tasks").resolve()
    return Path(directory).resolve().is_relative_to(tasks)


def _check_image(annotated: Reference | View, directory: Path, key: str) -> None:
    path = directory / annotated.image
    try:
        with Image.open(path) as img:
            width, height = img.size
    except FileNotFoundError:
        raise ConfigError(f"{key}.image: reference image {path} does not exist") from None
    except OSError as err:
        raise ConfigError(f"{key}.image: cannot read {path} as an image ({err})") from None
    for name, (u, v) in annotated.keypoints.items():
        if not (np.isfinite(u) and np.isfinite(v) and 0 <= u <= width - 1 and 0 <= v <= height - 1):
            raise ConfigError(f"{key}.keypoints.{name}: ({u}, {v}) lies outside the {width}x{height} image {path.name}")


def _check_images(spec: KeypointSpec, directory: Path, where: str) -> None:
    for c, category in enumerate(spec.categories):
        for r, ref in enumerate(category.references):
            key = f"{where} categories[{c}].references[{r}]"
            _check_image(ref, directory, key)
            for i, view in enumerate(ref.views):
                _check_image(view, directory, f"{key}.views[{i}]")


def load_spec(task_or_path: str | Path) -> LoadedSpec:
    """Load and validate a spec; every problem is a one-line ConfigError naming file and key."""
    path = spec_path(task_or_path)
    if not path.is_file():
        raise ConfigError(f"{path}: no keypoint spec (annotate one with `kil annotate`)")
    spec = load_dataclass(KeypointSpec, load_yaml(path), f"{path}:")
    _check_images(spec, path.parent, f"{path}:")
    return LoadedSpec(spec, path.parent)


def save_spec(spec: KeypointSpec, directory: str | Path) -> Path:
    """Write `spec` as `directory`/keypoints.yaml (images must already be there); returns the path.
    The spec is validated before the file is replaced, so a bad spec never overwrites a good one."""
    directory = Path(directory)
    _check_images(spec, directory, f"{directory / SPEC_FILE}:")
    path = directory / SPEC_FILE
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(yaml.safe_dump(plain_spec(spec), sort_keys=False, allow_unicode=True, default_flow_style=None), encoding="utf-8")
    tmp.replace(path)
    return path
