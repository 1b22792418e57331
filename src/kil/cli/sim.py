"""`kil sim`: the simulated rig from the command line.

    kil sim demos --task pick_place --robot panda --variation in --episodes 50 --seed 0 --out DIR [--miss-rate 0.3]
    kil sim render --task place_upright --robot ur5e --variation scene --seed 3 --out scene.png
    kil sim reference --task pick_place --out config/tasks/pick_place
    kil sim reference --task pick_place --out my_spec --views 12
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from kil.cli.record import add_episode_arguments

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("demos", "render", "reference"),
                        help="demos: record scripted demonstrations; render: PNG of an episode's first frame with its true "
                             "keypoints; reference: a keypoint spec (reference image + true points) written into --out")
    add_episode_arguments(parser, robot="panda", out_help="demos: directory for the episodes; render: PNG path")
    parser.add_argument("--miss-rate", type=float, default=0.0, metavar="P",
                        help="demos: share of first picks the expert aims 3 cm beside the object, then picks again "
                             "(demonstrations that show recovery from a missed grasp)")
    parser.add_argument("--views", type=int, default=0, metavar="N",
                        help="reference: also N views of the task objects (other scenes, the arm away: objects elsewhere "
                             "and turned), each a further descriptor of the points it shows")

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
    from kil.errors import ConfigError
    from kil.sim.reference import oracle_spec

    if args.views < 0:
        raise ConfigError(f"--views: must be >= 0, got {args.views}")
    path, seed = oracle_spec(args.task, args.out, args.robot, args.seed, views=args.views)
    Console().print(f"wrote {path} (reference frame: {args.task}/{args.robot}/in seed {seed})")
    return 0
