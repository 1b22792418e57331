"""Reference keypoint specs from the simulator's ground truth (an "oracle annotation"): one
`in` frame with the true named points of the task objects and the fixture, written as a
spec like `kil annotate` writes one, optionally with views: further `in` frames (other seeds,
the arm away) in which the task objects lie elsewhere and turned, with their true visible
points. The shipped specs of the simulated tasks come from here.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from kil.errors import ConfigError
from kil.perception.spec import Category, KeypointSpec, Reference, View, parse_keypoint_name, save_spec

VIEW_SEED_BASE = 900_000  # disjoint from demonstrations, evaluation and the keypoint bench's frames


def oracle_spec(task: str, out_dir: str | Path, robot: str = "panda", seed: int = 0, tries: int = 50,
                views: int = 0) -> tuple[Path, int]:
    """Write the spec of `task` into `out_dir` from the first seed (from `seed` on) whose scene
    shows every true keypoint of the task objects unoccluded (the fixture's hidden points are
    left out), with `views` views of each task object (the fixture, which no task moves, has
    none); returns (spec path, seed used)."""
    from kil.sim.episode import make_world
    from kil.sim.truth import render_truth_frame

    for s in range(seed, seed + tries):
        world = make_world(task, robot, "in", s)
        try:
            rgb, depth = world.render()
            truth = world.projected_keypoints(depth)
            prompts = {name: world.catalogue.category(name).prompt for name in {parse_keypoint_name(n)[0] for n in truth.names}}
        finally:
            world.close()
        fixture = truth.instance == truth.instance.max()
        if truth.visible[~fixture].all() and truth.visible[fixture].any():
            break
    else:
        raise ConfigError(f"{task}: no seed in {seed}..{seed + tries - 1} shows every object keypoint unoccluded")
    image_name = f"{task}_reference.png"
    # Group points by category, then by instance (task objects first, the fixture last).
    grouped: dict[str, dict[int, dict[str, tuple[float, float]]]] = {}
    for name, uv, instance, visible in zip(truth.names, truth.uv, truth.instance, truth.visible):
        if not visible:
            continue
        category, _, point = parse_keypoint_name(name)
        grouped.setdefault(category, {}).setdefault(int(instance), {})[point] = (round(float(uv[0]), 1), round(float(uv[1]), 1))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    object_views: dict[tuple[str, int], list[View]] = {}
    for k in range(views):
        frame = render_truth_frame(task, "in", VIEW_SEED_BASE + k, robot, "away")
        view_name = f"{task}_view_{k:02d}.png"
        points: dict[tuple[str, int], dict[str, tuple[float, float]]] = {}
        fixture = frame.instance.max()
        for name, uv, instance, visible in zip(frame.names, frame.uv, frame.instance, frame.visible):
            if visible and instance != fixture:
                category, _, point = parse_keypoint_name(name)
                points.setdefault((category, int(instance)), {})[point] = (round(float(uv[0]), 1), round(float(uv[1]), 1))
        for key, shown in points.items():
            object_views.setdefault(key, []).append(View(view_name, shown))
        if points:
            Image.fromarray(frame.rgb).save(out / view_name)
    categories = [
        Category(category, prompts[category], [Reference(image_name, points, object_views.get((category, instance), []))
                                               for instance, points in sorted(by_instance.items())])
        for category, by_instance in grouped.items()
    ]
    Image.fromarray(rgb).save(out / image_name)
    return save_spec(KeypointSpec(task, categories), out), s
