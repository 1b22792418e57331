"""Reference keypoint specs from the simulator's ground truth (an "oracle annotation"): one
`in` frame with the true named points of the task objects and the fixture, written as a
spec like `kil annotate` writes one, optionally with views: further `in` frames (other seeds,
the arm away) in which the task objects lie elsewhere and turned, with their true visible
points. A view shows its own object, the instance of the reference, as a lab photographs
its one block turned: a view of another instance (a red cube for a blue bar) would widen
what the keypoint looks like to other colours, and in closed loop the block's points went
to an orange ball beside it. The shipped specs of the simulated tasks come from here.
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
            instances = [placement.instance.id for placement in world.scene.objects]
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
    for k, (view_seed, same) in enumerate(view_seeds(task, instances, views)):
        frame = render_truth_frame(task, "in", view_seed, robot, "away")
        view_name = f"{task}_view_{k:02d}.png"
        points: dict[tuple[str, int], dict[str, tuple[float, float]]] = {}
        fixture = frame.instance.max()
        for name, uv, instance, visible in zip(frame.names, frame.uv, frame.instance, frame.visible):
            if visible and instance != fixture and int(instance) in same:
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


def view_seeds(task: str, instances: list[str], views: int, tries: int = 200) -> list[tuple[int, set[int]]]:
    """The `in` seeds (from VIEW_SEED_BASE on) of up to `views` views of each task object,
    with the objects (indices into the scene's objects) each shows: those that are the same
    instance as the reference scene's `instances` (catalogue ids, in scene order). Each
    object gets `views` views, or a ConfigError names the one that the first `tries` seeds
    do not show often enough."""
    from kil.sim.objects import load_catalogue
    from kil.sim.scene import sample_scene
    from kil.sim.tasks import task_config

    catalogue, config = load_catalogue(), task_config(task)
    counts = [0] * len(instances)
    out: list[tuple[int, set[int]]] = []
    for view_seed in range(VIEW_SEED_BASE, VIEW_SEED_BASE + tries):
        if min(counts, default=views) >= views:
            break
        scene = sample_scene(task, config, catalogue, "in", view_seed)
        same = {i for i, placement in enumerate(scene.objects)
                if i < len(instances) and placement.instance.id == instances[i] and counts[i] < views}
        if same:
            out.append((view_seed, same))
            for i in same:
                counts[i] += 1
    for i, count in enumerate(counts):
        if count < views:
            raise ConfigError(f"{task}: seeds {VIEW_SEED_BASE}..{VIEW_SEED_BASE + tries - 1} show object {i} "
                              f"({instances[i]}) only {count} times, not the {views} views asked")
    return out
