"""`kil eval`: closed-loop episodes of a trained policy through the live graph on the
simulated rig, per variation, with 95% Clopper-Pearson intervals for success and Wald
intervals for task completion (paper 001's protocol)."""

from __future__ import annotations

import argparse

from kil.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rig", default="sim", help="rig to evaluate on (only the simulated rig runs here; real rigs use bringup.launch.py)")
    parser.add_argument("--policy", required=True, help="run directory (kil train --out) or checkpoint")
    parser.add_argument("--task", default=None, help="task (default: the one the policy was trained on)")
    parser.add_argument("--robot", default=None, help="simulated robot (default: the rig's)")
    parser.add_argument("--variation", default="in", help="comma-separated variations: in, obj (unseen objects), scene")
    parser.add_argument("--episodes", type=int, default=20, help="episodes per variation")
    parser.add_argument("--seed", type=int, default=1000, help="batch seed (disjoint from the demonstrations')")
    parser.add_argument("--video", default=None, metavar="DIR", help="write an MP4 of every episode (camera, keypoints, commanded path) here")


def main(args: argparse.Namespace) -> int:
    from kil.rigs import load_rig
    from kil.sim.rollouts import evaluate, trained_task

    rig = load_rig(args.rig)
    if rig.camera.driver != "sim":
        raise ConfigError(f"--rig: {args.rig} is a real rig; kil eval drives the simulated one (on a robot: ros2 launch kil bringup.launch.py rig:={args.rig})")
    if args.episodes < 1:
        raise ConfigError(f"--episodes: must be >= 1, got {args.episodes}")
    variations = [v.strip() for v in args.variation.split(",") if v.strip()]
    from kil.policy.inference import Policy

    Policy.load(args.policy)  # a damaged checkpoint is a one-line error before any episode
    evaluate(args.policy, args.task or trained_task(args.policy), args.robot or rig.robot, variations, args.episodes, args.seed, args.video)
    return 0
