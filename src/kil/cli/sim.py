"""`kil sim`: the simulated rig from the command line.

    kil sim demos --task pick_place --robot panda --variation in --episodes 50 --seed 0 --out DIR
    kil sim render --task place_upright --robot ur5e --variation scene --seed 3 --out scene.png
    kil sim reference --task pick_place --out config/tasks/pick_place
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

VARIATIONS = ("in", "obj", "scene", "rot")  # kil.sim.scene.VARIATIONS, without importing it here


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("demos", "render", "reference"),
                        help="demos: record scripted demonstrations; render: PNG of an episode's first frame with its true "
                             "keypoints; reference: a keypoint spec (reference image + true points) written into --out")
    parser.add_argument("--task", default="pick_place", help="task under config/sim/tasks.yaml (pick_place, place_upright, pick_place_two)")
    parser.add_argument("--robot", default="panda", help="panda or ur5e")
    parser.add_argument("--variation", default="in", help=f"one of {', '.join(VARIATIONS)}")
    parser.add_argument("--episodes", type=int, default=1, help="demos: number of episodes")
    parser.add_argument("--seed", type=int, default=0, help="batch seed (episode i uses a seed derived from it)")
    parser.add_argument("--out", required=True, help="demos: directory for the episodes; render: PNG path")
    parser.add_argument("--camera-rate", type=float, default=None, metavar="HZ", help="camera rate, 10-30 Hz (default from the graph: 15)")


def main(args: argparse.Namespace) -> int:
    from kil.errors import ConfigError

    if args.episodes < 1:
        raise ConfigError(f"--episodes: must be >= 1, got {args.episodes}")
    return {"demos": _demos, "render": _render, "reference": _reference}[args.action](args)


def _demos(args: argparse.Namespace) -> int:
    from kil.cli.record import record_batch

    return record_batch(args, "expert", args.robot)


def _render(args: argparse.Namespace) -> int:
    from kil.sim.episode import make_world
    from kil.sim.render import keypoint_overlay

    world = make_world(args.task, args.robot, args.variation, args.seed)
    try:
        rgb, depth = world.render()
        names, xyz, _ = world.keypoints()
        path = keypoint_overlay(rgb, depth, world.K, world.T_base_camera, names, xyz, Path(args.out))
    finally:
        world.close()
    Console().print(f"wrote {path}")
    return 0


def _reference(args: argparse.Namespace) -> int:
    from kil.sim.reference import oracle_spec

    path, seed = oracle_spec(args.task, args.out, args.robot, args.seed)
    Console().print(f"wrote {path} (reference frame: {args.task}/{args.robot}/in seed {seed})")
    return 0
