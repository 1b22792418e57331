"""Keypoint quality on held-out simulated frames with ground truth.

Per task, one reference frame (variation `in`) gives the reference keypoints: the true named
points of the task object and the fixture, where visible. Each evaluation frame (variations
in, obj, scene; seeds disjoint from training and from the reference) is matched with a
backend; a keypoint counts where the truth sees it. Reported per backend and variation: the
share of keypoints within 5 and 10 px of the truth, the median pixel error, and the median
3D error in mm after lifting with the frame's depth (a keypoint without valid depth counts
as a failure in every figure).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from kil.perception.lifting import lift
from kil.perception.matching import Matcher, sample_descriptors

EVAL_SEED_BASE = 700_000  # disjoint from training views (500_000+) and the expert benchmark
REFERENCE_SEED = 699_999


@dataclass(frozen=True)
class TruthFrame:
    """A rendered frame with its true keypoints: names; uv (N, 2) px; xyz (N, 3) m; visible (N,)."""

    task: str
    variation: str
    seed: int
    rgb: np.ndarray
    depth: np.ndarray
    K: np.ndarray
    T_base_camera: np.ndarray
    names: tuple[str, ...]
    uv: np.ndarray
    xyz: np.ndarray
    visible: np.ndarray


def render_truth_frame(task: str, variation: str, seed: int, robot: str = "panda") -> TruthFrame:
    from kil.sim.episode import make_world

    world = make_world(task, robot, variation, seed)
    try:
        rgb, depth = world.render()
        truth = world.projected_keypoints(depth)
        return TruthFrame(task, variation, seed, rgb, depth, world.K.copy(), world.T_base_camera.copy(),
                          truth.names, truth.uv, truth.xyz, truth.visible)
    finally:
        world.close()


@dataclass
class Errors:
    pixel: list[float]
    metres: list[float]

    def row(self) -> list[str]:
        px, mm = np.array(self.pixel), np.array(self.metres) * 1000
        if len(px) == 0:
            return ["0", "-", "-", "-", "-"]
        return [str(len(px)), f"{np.mean(px <= 5) * 100:.0f}%", f"{np.mean(px <= 10) * 100:.0f}%", f"{np.median(px):.1f}", f"{np.median(mm):.0f}"]


def score_backend(extractor, references: dict[str, TruthFrame], frames: list[TruthFrame]) -> dict[str, Errors]:
    """Errors per variation of one feature backend."""
    out: dict[str, Errors] = {}
    matchers = {}
    for task, ref in references.items():
        keep = np.flatnonzero(ref.visible)
        descriptors = sample_descriptors(extractor.extract(ref.rgb)[0], ref.uv[keep], ref.rgb.shape[:2])
        matchers[task] = (Matcher(descriptors), [ref.names[i] for i in keep])
    for frame in frames:
        matcher, names = matchers[frame.task]
        found = matcher.match(extractor.extract(frame.rgb), frame.rgb.shape[:2])
        xyz, has_depth = lift(found.uv[0], frame.depth, frame.K, frame.T_base_camera)
        errors = out.setdefault(frame.variation, Errors([], []))
        for k, name in enumerate(names):
            i = frame.names.index(name)
            if not frame.visible[i]:
                continue
            errors.pixel.append(float(np.linalg.norm(found.uv[0, k] - frame.uv[i])))
            errors.metres.append(float(np.linalg.norm(xyz[k] - frame.xyz[i])) if has_depth[k] else np.inf)
    return out


def run(backends: list[str], tasks: list[str], variations: list[str], frames: int, robot: str = "panda") -> int:
    from kil.perception.features.base import load_extractor

    console = Console(width=160)
    extractors = {name: load_extractor(name) for name in backends}
    with Progress(console=console) as progress:
        bar = progress.add_task("rendering held-out frames", total=len(tasks) * (1 + frames * len(variations)))
        references = {}
        truth: list[TruthFrame] = []
        for t, task in enumerate(tasks):
            references[task] = render_truth_frame(task, "in", REFERENCE_SEED - t, robot)
            progress.advance(bar)
            for v, variation in enumerate(variations):
                for i in range(frames):
                    truth.append(render_truth_frame(task, variation, EVAL_SEED_BASE + 10_000 * v + 100 * t + i, robot))
                    progress.advance(bar)
        scored = {}
        bar = progress.add_task("matching", total=len(extractors))
        for name, extractor in extractors.items():
            scored[name] = score_backend(extractor, references, truth)
            progress.advance(bar)
    table = Table("backend", "variation", "keypoints", "within 5 px", "within 10 px", "median px", "median 3D mm",
                  title=f"keypoint quality: {', '.join(tasks)} ({robot}), {frames} frames per variation, one `in` reference per task")
    for name, by_variation in scored.items():
        for variation in variations:
            table.add_row(name, variation, *by_variation.get(variation, Errors([], [])).row())
    console.print(table)
    return 0
