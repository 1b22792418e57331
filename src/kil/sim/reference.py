"""Reference keypoint specs from the simulator's ground truth (an "oracle annotation"): one
`in` frame with the true named points of the task objects and the fixture, written as a
spec like `kil annotate` writes one. The shipped specs of the simulated tasks come from here.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from kil.errors import ConfigError
from kil.perception.spec import Category, KeypointSpec, Reference, parse_keypoint_name, save_spec


def oracle_spec(task: str, out_dir: str | Path, robot: str = "panda", seed: int = 0, tries: int = 50) -> tuple[Path, int]:
    """Write the spec of `task` into `out_dir` from the first seed (from `seed` on) whose scene
    shows every true keypoint of the task objects unoccluded (the fixture's hidden points are
    left out); returns (spec path, seed used)."""
    from kil.sim.episode import make_world

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
    categories = [
        Category(category, prompts[category], [Reference(image_name, points) for _, points in sorted(by_instance.items())])
        for category, by_instance in grouped.items()
    ]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(out / image_name)
    return save_spec(KeypointSpec(task, categories), out), s
